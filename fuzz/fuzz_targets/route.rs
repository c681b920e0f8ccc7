#![no_main]

// See tokenauth::fuzzing::route for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenauth::fuzzing::route(data));
