#![no_main]

// See tokenauth::fuzzing::request for what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tokenauth::fuzzing::request(data);
});
