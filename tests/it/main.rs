//! The integration tests: one binary (one link, one build of the harness) whose modules are the
//! suites. Each runs the real server — in this process on a random port, or the binary as a
//! process of its own — on a fresh database of either backend, against fakes that speak the real
//! protocols of the outside world (`support/`).

mod agents_numbers;
mod architecture;
mod auth;
mod calls;
mod console;
mod context;
mod contract;
mod conversation;
mod embedded_faults;
mod faults;
mod isolation;
mod jobs;
mod limits;
mod migrations;
mod providers;
mod replicas;
mod resources;
mod sandbox;
mod secrets;
mod ship;
mod speech;
mod support;
mod webhooks;
