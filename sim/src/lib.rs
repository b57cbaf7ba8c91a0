//! Deterministic simulation: the same engine machines under turmoil, with
//! partitions, crashes and concurrent edits, checked for convergence with
//! nothing lost or duplicated.
//!
//! Nothing here is used in production; every run is replayable from its seed.
#![forbid(unsafe_code)]
