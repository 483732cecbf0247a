//! tollgate's upstream adapters.
//!
//! # Layout
//! - [`openai`]: the OpenAI wire format (chat completions, embeddings): request parsing
//!   and rewriting, usage extraction, error bodies.
//! - [`sse`]: the streaming tee that reads usage out of an SSE stream without touching
//!   the bytes the client gets.
//! - [`tokenizer`]: local token counting for usage an upstream never reported.
//! - [`client`]: the pooled HTTP client.
//! - [`error`]: what can go wrong upstream, with stable codes.

pub mod client;
pub mod error;
pub mod openai;
pub mod sse;
pub mod tokenizer;

pub use client::{ClientConfig, UpstreamClient, UpstreamRequest};
pub use error::{Fault, ProviderError};
