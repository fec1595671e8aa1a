//! Runnable examples of fog: see `examples/`.
