//! Test and demo support: stub upstreams and an in-process gateway.
//!
//! # Layout
//! - [`sim`]: a deterministic, OpenAI-compatible simulated provider (also the demo's
//!   upstream and the benchmark's stub).
//! - [`fixture`]: a stub that replays recorded provider payloads and counts calls.
//! - [`harness`]: a gateway on a free port with a temporary database.
//! - [`agents`]: synthetic healthy and runaway agent conversations (the guard's tests).
//! - [`webhook`]: a webhook receiver that records alerts (and can fail on purpose).

pub mod agents;
pub mod fixture;
pub mod harness;
pub mod sim;
pub mod webhook;
