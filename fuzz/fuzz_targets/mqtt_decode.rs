//! Arbitrary bytes into the MQTT decoder: before CONNECT, and after a valid
//! MQTT 5 and MQTT 3.1.1 CONNECT. Panics, a broken buffer contract or a
//! PUBLISH that does not survive re-encoding are findings.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rampart_fuzz::decode_three_ways(data);
});
