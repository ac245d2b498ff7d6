#![no_main]
//! See `hoard::fuzzing::www_authenticate`: the same entry replays the corpus on stable.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hoard::fuzzing::www_authenticate(data));
