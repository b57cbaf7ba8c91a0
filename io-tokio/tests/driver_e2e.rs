//! The driver end to end: real loopback TCP, TLS, COMPRESS, turmoil, and the
//! accept loop. One test binary (faster to link), one module per topic.

#[path = "driver_e2e/support.rs"]
mod support;

#[path = "driver_e2e/tcp.rs"]
mod tcp;

#[path = "driver_e2e/compress.rs"]
mod compress;

#[path = "driver_e2e/tls.rs"]
mod tls;

#[path = "driver_e2e/turmoil_sim.rs"]
mod turmoil_sim;

#[path = "driver_e2e/listen.rs"]
mod listen;

#[path = "driver_e2e/duplex.rs"]
mod duplex;

#[path = "driver_e2e/stdio.rs"]
mod stdio;

#[path = "driver_e2e/backpressure.rs"]
mod backpressure;
