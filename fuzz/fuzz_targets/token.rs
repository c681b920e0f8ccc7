#![no_main]

// See tokenauth::fuzzing::token for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenauth::fuzzing::token(data));
