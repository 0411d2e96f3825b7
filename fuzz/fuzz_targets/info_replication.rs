#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| valkey_dr_fuzzing::info_replication(data));
