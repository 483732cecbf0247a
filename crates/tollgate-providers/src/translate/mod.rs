//! Translation between wire formats through one canonical representation.
//!
//! When a client's format differs from its upstream's, the request is parsed into a
//! [`Request`], written out in the upstream's format; the answer comes back as a
//! [`Response`] (JSON) or a sequence of [`Event`]s (streams) and is written in the
//! client's format. When the formats are the same none of this runs: the body is
//! forwarded with the model id replaced and the answer passes through untouched.
//!
//! Every format module has the same six functions:
//! `request_to_ir`, `request_from_ir`, `response_to_ir`, `response_from_ir`, a stream
//! `Decoder` (upstream bytes → events, with the raw frame bytes for pass-through) and a
//! stream `Encoder` (events → client bytes).
//!
//! A feature one side cannot express is refused with [`TranslateError::Unsupported`],
//! naming the feature, rather than dropped. Prompt-caching hints are the one kind of
//! field translated as far as the target allows: Anthropic `cache_control` and Bedrock
//! `cachePoint` map onto each other; OpenAI caches by itself, so they are left out there.
//!
//! # Layout
//! - this module: the canonical types.
//! - [`openai`], [`anthropic`], [`bedrock`]: one module per format.
//! - [`responses`]: the OpenAI Responses API, a client-side format only: its requests
//!   are rewritten as Chat Completions bodies (then read by [`openai`]), its answers and
//!   streams written from the canonical response and events.
//!
//! Structured output (`response_format` / `text.format` JSON) goes to OpenAI as it is
//! and to Anthropic and Bedrock as one forced tool, [`JSON_TOOL`], whose input is
//! turned back into the answer's text ([`json_tool`], [`JsonAnswer`]).

pub mod anthropic;
pub mod bedrock;
pub mod openai;
pub mod responses;

use serde_json::Value;
use tollgate_domain::usage::Usage;

/// The wire formats. Upstreams speak the first three; `Responses` (the OpenAI
/// Responses API) is only ever a client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    OpenAi,
    Anthropic,
    Bedrock,
    Responses,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAi => "OpenAI Chat Completions",
            Format::Anthropic => "Anthropic Messages",
            Format::Bedrock => "Bedrock Converse",
            Format::Responses => "OpenAI Responses",
        }
    }
}

/// A request that cannot be translated, in terms the client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The request uses something the target format cannot express.
    #[error(
        "`{feature}` cannot be translated to {target}; remove it or use a deployment on a {source_format} upstream"
    )]
    Unsupported {
        feature: String,
        target: &'static str,
        source_format: &'static str,
    },
    /// The request is not valid in its own format.
    #[error("{0}")]
    Invalid(String),
}

impl TranslateError {
    pub fn unsupported(feature: impl Into<String>, from: Format, to: Format) -> TranslateError {
        TranslateError::Unsupported {
            feature: feature.into(),
            target: to.name(),
            source_format: from.name(),
        }
    }

    /// The request field at fault, when there is one.
    pub fn param(&self) -> Option<&str> {
        match self {
            TranslateError::Unsupported { feature, .. } => Some(feature),
            TranslateError::Invalid(_) => None,
        }
    }
}

/// How long a prompt-cache entry should live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheTtl {
    FiveMinutes,
    OneHour,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// A piece of message content.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// `cache`: a cache breakpoint after this block.
    Text {
        text: String,
        cache: Option<CacheTtl>,
    },
    /// Base64 image data.
    Image {
        media_type: String,
        data: String,
        cache: Option<CacheTtl>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        cache: Option<CacheTtl>,
    },
    ToolResult {
        id: String,
        content: String,
        is_error: bool,
        cache: Option<CacheTtl>,
    },
    /// Model reasoning (Anthropic `thinking`, Bedrock `reasoningContent`).
    Thinking {
        text: String,
        signature: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SystemPart {
    pub text: String,
    pub cache: Option<CacheTtl>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the input.
    pub schema: Value,
    pub cache: Option<CacheTtl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// Must call some tool.
    Any,
    None,
    Tool(String),
}

/// A JSON answer the client asked for (OpenAI `response_format`, Responses
/// `text.format`).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching `schema`.
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: Value,
        strict: Option<bool>,
    },
}

/// The tool structured output becomes on upstreams without a JSON mode.
pub const JSON_TOOL: &str = "json_answer";

/// Structured output as a forced tool call, for an upstream (`to`) without a JSON mode:
/// the request's `response_format` is taken out and [`JSON_TOOL`] added with its schema
/// as input schema; the model is made to call it (or, when the request has tools of its
/// own, to call one of them or it). `Ok(true)` when the tool was added: the answer's
/// call to it is then the answer's text ([`JsonAnswer`]).
pub fn json_tool(req: &mut Request, from: Format, to: Format) -> Result<bool, TranslateError> {
    let Some(format) = req.response_format.take() else {
        return Ok(false);
    };
    if req.tools.iter().any(|t| t.name == JSON_TOOL) {
        return Err(TranslateError::Invalid(format!(
            "a tool may not be named `{JSON_TOOL}` together with a JSON response format (the gateway uses that name for structured output on {})",
            to.name()
        )));
    }
    if matches!(req.tool_choice, Some(ToolChoice::None)) && !req.tools.is_empty() {
        return Err(TranslateError::unsupported(
            "response_format together with tool_choice none",
            from,
            to,
        ));
    }
    let (description, schema) = match format {
        ResponseFormat::JsonObject => (
            "Give the answer as a JSON object.".to_string(),
            serde_json::json!({"type": "object"}),
        ),
        ResponseFormat::JsonSchema {
            name,
            description,
            schema,
            ..
        } => (
            description.unwrap_or_else(|| format!("Give the answer as `{name}`.")),
            schema,
        ),
    };
    req.tool_choice = match req.tool_choice.take() {
        Some(ToolChoice::Tool(n)) => Some(ToolChoice::Tool(n)),
        _ if req.tools.is_empty() => Some(ToolChoice::Tool(JSON_TOOL.into())),
        _ => Some(ToolChoice::Any),
    };
    req.tools.push(Tool {
        name: JSON_TOOL.into(),
        description: Some(description),
        schema,
        cache: None,
    });
    Ok(true)
}

/// A non-streaming answer to a [`json_tool`] request: the call to [`JSON_TOOL`] becomes
/// the answer's text (its input as a JSON string) and the stop reason the end of the
/// turn; text beside it (a preamble) is dropped.
pub fn json_answer(r: &mut Response) {
    let Some(input) = r.content.iter().find_map(|b| match b {
        Block::ToolUse { name, input, .. } if name == JSON_TOOL => Some(input.to_string()),
        _ => None,
    }) else {
        return;
    };
    r.content.retain(|b| {
        !matches!(b, Block::Text { .. })
            && !matches!(b, Block::ToolUse { name, .. } if name == JSON_TOOL)
    });
    r.content.push(Block::Text {
        text: input,
        cache: None,
    });
    if r.stop == StopReason::ToolUse
        && !r.content.iter().any(|b| matches!(b, Block::ToolUse { .. }))
    {
        r.stop = StopReason::EndTurn;
    }
}

/// The same for a stream: the [`JSON_TOOL`] block is re-announced as a text block, its
/// input fragments as text, and its stop as the end of the turn; text blocks (a
/// preamble before the forced call) are dropped.
#[derive(Debug, Default)]
pub struct JsonAnswer {
    /// Indices of the blocks that are dropped or rewritten, and whether each is the tool.
    blocks: std::collections::HashMap<usize, bool>,
    other_tool: bool,
}

impl JsonAnswer {
    /// The events to pass on for `ev`.
    pub fn map(&mut self, ev: Event) -> Option<Event> {
        match ev {
            Event::BlockStart {
                index,
                block: BlockStart::ToolUse { ref name, .. },
            } if name == JSON_TOOL => {
                self.blocks.insert(index, true);
                Some(Event::BlockStart {
                    index,
                    block: BlockStart::Text,
                })
            }
            Event::BlockStart {
                index,
                block: BlockStart::Text,
            } => {
                self.blocks.insert(index, false);
                None
            }
            Event::BlockStart {
                block: BlockStart::ToolUse { .. },
                ..
            } => {
                self.other_tool = true;
                Some(ev)
            }
            Event::Delta { index, delta } => match (self.blocks.get(&index), delta) {
                (Some(true), Delta::ToolInput(s)) => Some(Event::Delta {
                    index,
                    delta: Delta::Text(s),
                }),
                (Some(_), _) => None,
                (None, delta) => Some(Event::Delta { index, delta }),
            },
            Event::BlockStop { index } => match self.blocks.get(&index) {
                Some(false) => None,
                _ => Some(ev),
            },
            Event::Stop {
                reason: StopReason::ToolUse,
            } if !self.other_tool => Some(Event::Stop {
                reason: StopReason::EndTurn,
            }),
            other => Some(other),
        }
    }
}

/// A chat request in no particular format.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub system: Vec<SystemPart>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `false` forbids parallel tool calls.
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// An end-user id (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<String>,
    /// A JSON answer asked for.
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    ContentFilter,
}

/// A complete (non-streaming) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    pub model: String,
    pub content: Vec<Block>,
    pub stop: StopReason,
    pub usage: Usage,
}

/// What a failure was, in terms every format has a word for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    TooLarge,
    RateLimited,
    Timeout,
    Overloaded,
    Server,
}

/// The kind of block a stream opens.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockStart {
    Text,
    ToolUse { id: String, name: String },
    Thinking,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    /// A fragment of a tool call's JSON arguments.
    ToolInput(String),
    Thinking(String),
    Signature(String),
}

/// One step of a streamed answer. Block indices count from 0 in order of opening.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
    },
    BlockStart {
        index: usize,
        block: BlockStart,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    BlockStop {
        index: usize,
    },
    Stop {
        reason: StopReason,
    },
    /// Usage so far (cumulative). `final_count`: the upstream's last word on it.
    Usage {
        usage: Usage,
        final_count: bool,
    },
    Error {
        class: ErrorClass,
        message: String,
    },
    /// The upstream's end-of-stream marker.
    End,
}

/// One whole frame of an upstream stream: its raw bytes (forwarded as they are when the
/// client speaks the same format) and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub raw: bytes::Bytes,
    pub events: Vec<Event>,
}

/// The text of generated content, for counting tokens locally.
pub fn blocks_text(blocks: &[Block], out: &mut String) {
    for b in blocks {
        match b {
            Block::Text { text, .. } | Block::Thinking { text, .. } => out.push_str(text),
            Block::ToolUse { name, input, .. } => {
                out.push_str(name);
                out.push_str(&input.to_string());
            }
            Block::ToolResult { content, .. } => out.push_str(content),
            Block::Image { .. } => {}
        }
    }
}

/// A tool call's arguments as a JSON object, from the string a model streamed. A
/// string that is not JSON is kept (as a string) rather than lost.
pub fn parse_arguments(s: &str) -> Value {
    if s.trim().is_empty() {
        return Value::Object(Default::default());
    }
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Split `data:image/png;base64,xxxx` into (media type, data).
pub fn parse_data_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((media.to_string(), data.to_string()))
}

#[cfg(test)]
mod tests;
