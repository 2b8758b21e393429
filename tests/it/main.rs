//! The integration tests: one binary (`cargo test --test it`), one module per
//! subject, all driving the real `voipbin-tokend` binary against the
//! stand-in API. `cargo test --test it keys::` runs one subject.

mod support;

mod base_url;
mod check;
mod commands;
mod core;
mod exec;
mod failures;
mod faults;
mod footprint;
mod health;
mod hooks;
mod hostile_files;
mod keys;
mod outputs;
mod proxy;
mod proxy_config;
mod reload;
mod schedule;
mod service;
mod sigusr1;
mod smoke;
mod state_dir;
mod times;
mod tls;
