//! tollgate's upstream adapters.
//!
//! # Layout
//! - [`openai`]: the OpenAI wire format (chat completions, embeddings): request parsing
//!   and rewriting, usage extraction, error bodies.
//! - [`anthropic`]: the Anthropic Messages wire format (requests, usage, errors).
//! - [`bedrock`]: the Bedrock Converse wire format (requests, usage, errors).
//! - [`prompt_cache`]: prompt-cache breakpoints read from and written into each format.
//! - [`prune`]: the texts pruning may rewrite, read from each format, and the edits applied.
//! - [`eventstream`]: the `application/vnd.amazon.eventstream` binary framing.
//! - [`sigv4`]: AWS Signature Version 4, to sign upstream calls and verify clients.
//! - [`translate`]: the canonical request/response/stream representation and one module
//!   per format converting to and from it.
//! - [`sse`]: the OpenAI SSE tee that reads usage without touching the bytes, and SSE
//!   framing for the other formats.
//! - [`stream`]: the tee every streamed answer goes through (native or translated).
//! - [`tokenizer`]: local token counting for usage an upstream never reported.
//! - [`client`]: the pooled HTTP client.
//! - [`error`]: what can go wrong upstream, with stable codes.

pub mod anthropic;
pub mod bedrock;
pub mod client;
pub mod error;
pub mod eventstream;
pub mod openai;
pub mod prompt_cache;
pub mod prune;
pub mod sigv4;
pub mod sse;
pub mod stream;
pub mod tokenizer;
pub mod translate;

pub use client::{ClientConfig, UpstreamClient, UpstreamRequest};
pub use error::{Fault, ProviderError};
pub use reqwest::Url;
