//! Fuzz target bodies for every parser and server machine. The libFuzzer
//! entry points are behind the `libfuzzer` feature; `cargo test -p fuzz`
//! replays the committed corpus (`corpus/seeds`, `corpus/regressions`)
//! through the same bodies.
#![forbid(unsafe_code)]
