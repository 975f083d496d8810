#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ms_oauth::fuzzing::app(data));
