#![no_main]

// See tokenauth::testing::fuzzing::route for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tokenauth::testing::fuzzing::route(data));
