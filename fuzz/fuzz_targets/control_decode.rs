//! Arbitrary bytes into the decoders of the control topics (certificate
//! renewal and claim confirmation) and into the device core's downlink
//! parsers (including `ota/down` offers). Panics, and a decoded payload
//! that does not survive re-encoding, are findings.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rampart_fuzz::control_round_trips(data);
    rampart_fuzz::device_downlinks(data);
});
