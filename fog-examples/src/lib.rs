//! Runnable examples of fog. Start a signal server (`cargo run -p fog -- server`), then:
//!
//! - `cargo run -p fog-examples --example echo_server` registers as `1e:34:a1:44:2c:1c` and
//!   echoes every stream;
//! - `cargo run -p fog-examples --example echo_client -- 1e:34:a1:44:2c:1c` connects to it by
//!   name and prints the echo.
//!
//! The tests of this crate run both against a signal server on loopback.
