#![no_main]
//! See `hoard::fuzzing::manifest`: the same entry replays the corpus on stable.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hoard::fuzzing::manifest(data));
