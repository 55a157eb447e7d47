//! Arbitrary bytes as a firmware bundle, a bundle head (what a device gets
//! in an offer) and persisted OTA state. Panics, and a decoded manifest or
//! state that does not re-encode to the same bytes, are findings.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rampart_fuzz::ota_bundle_checks(data);
});
