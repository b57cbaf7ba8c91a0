//! libFuzzer entry point for the `mupdate_server` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(
    |data: &[u8]| fuzz::target("mupdate_server").expect("registered")(data)
);
