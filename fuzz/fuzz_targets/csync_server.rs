//! libFuzzer entry point for the `csync_server` target body (see `fuzz::TARGETS`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::target("csync_server").expect("registered")(data));
