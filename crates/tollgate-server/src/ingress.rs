//! What clients send: the APIs tollgate serves, and their requests parsed into one
//! format-tagged type the pipeline works with.

use crate::error::ApiError;
use crate::tokens::TokenCache;
use serde_json::{Map, Value};
use tollgate_domain::attribution::{self, Labels};
use tollgate_domain::ledger::Endpoint;
use tollgate_providers::anthropic::MessagesRequest;
use tollgate_providers::bedrock::ConverseRequest;
use tollgate_providers::openai::{ChatRequest, EmbeddingsRequest};
use tollgate_providers::tokenizer::Encoding;
use tollgate_providers::translate::{self, Format, TranslateError};

/// Metadata keys that carry attribution and are removed before forwarding.
pub const METADATA_KEYS: [&str; 5] = [
    "tollgate_agent",
    "tollgate_task",
    "tollgate_user",
    "tollgate_team",
    "tollgate_tags",
];

/// Which API a request came in on.
#[derive(Debug, Clone)]
pub enum Ingress {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/messages`
    Messages,
    /// `POST /model/{modelId}/converse` and `/converse-stream`
    Converse { model: String, stream: bool },
    /// `POST /v1/responses` (OpenAI Responses)
    Responses,
}

impl Ingress {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Ingress::ChatCompletions => Endpoint::ChatCompletions,
            Ingress::Embeddings => Endpoint::Embeddings,
            Ingress::Messages => Endpoint::Messages,
            Ingress::Converse { .. } => Endpoint::Converse,
            Ingress::Responses => Endpoint::Responses,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Ingress::ChatCompletions | Ingress::Embeddings => Format::OpenAi,
            Ingress::Messages => Format::Anthropic,
            Ingress::Converse { .. } => Format::Bedrock,
            Ingress::Responses => Format::Responses,
        }
    }
}

/// An OpenAI Responses request, held as the Chat Completions request it means (what
/// the pipeline meters, guards, caches, shapes and sends), with what its answer needs.
#[derive(Debug, Clone)]
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    /// The conversation so far (`previous_response_id`'s items) and this input, stored
    /// with the answer's output for the next `previous_response_id`.
    pub items: Vec<Value>,
    /// `store` (default true): keep the answer for `previous_response_id`.
    pub store: bool,
    /// The request fields the response object echoes.
    pub echo: Map<String, Value>,
}

impl ResponsesRequest {
    /// Parse a Responses body; `history` finds the items of a `previous_response_id`.
    pub fn parse(
        bytes: &[u8],
        history: impl FnOnce(&str) -> Option<std::sync::Arc<Vec<Value>>>,
    ) -> Result<ResponsesRequest, ApiError> {
        use tollgate_providers::openai::RequestError;
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(RequestError::InvalidJson(e.to_string())))?;
        let Value::Object(body) = v else {
            return Err(ApiError::BadRequest(RequestError::NotAnObject));
        };
        let mut items = Vec::new();
        match body.get("previous_response_id") {
            None | Some(Value::Null) => {}
            Some(Value::String(id)) => match history(id) {
                Some(h) => items.extend(h.iter().cloned()),
                None => {
                    return Err(ApiError::InvalidParam {
                        param: "previous_response_id".into(),
                        message: format!(
                            "Previous response with id '{id}' not found. tollgate keeps recent responses of each key in memory for a limited time (see the README); send the conversation as input items instead."
                        ),
                    });
                }
            },
            Some(_) => {
                return Err(ApiError::BadRequest(RequestError::WrongType {
                    field: "previous_response_id",
                    expected: "a string",
                }));
            }
        }
        let chat = translate::responses::request_to_chat(&body, &items, Format::OpenAi)?;
        items.extend(translate::responses::input_items(&body)?);
        let chat = ChatRequest::parse(&serde_json::to_vec(&chat).unwrap_or_default())?;
        Ok(ResponsesRequest {
            chat,
            items,
            store: body.get("store").and_then(Value::as_bool).unwrap_or(true),
            echo: translate::responses::echo(&body),
        })
    }
}

/// A parsed request, tagged with its format. Bodies are kept whole so a same-format
/// upstream gets them as the client wrote them.
#[derive(Debug, Clone)]
pub enum IngressRequest {
    Chat(ChatRequest),
    Embeddings(EmbeddingsRequest),
    Messages(MessagesRequest),
    Converse(ConverseRequest),
    Responses(Box<ResponsesRequest>),
}

fn invalid(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam {
        param: field.to_string(),
        message: e.to_string(),
    }
}

/// Labels from a body's end-user id and metadata map (`agent`/`tollgate_agent`, ...).
pub fn body_labels(
    user: Option<&str>,
    metadata: Option<&Map<String, Value>>,
) -> Result<Labels, ApiError> {
    let meta = |k: &str| -> Result<Option<String>, ApiError> {
        let Some(m) = metadata else { return Ok(None) };
        let v = m
            .get(&format!("tollgate_{k}"))
            .or_else(|| m.get(k))
            .and_then(Value::as_str);
        match v {
            Some(s) => attribution::label(&format!("metadata.{k}"), s)
                .map_err(|e| invalid(&format!("metadata.{k}"), e)),
            None => Ok(None),
        }
    };
    let user = match user {
        Some(u) => attribution::label("user", u).map_err(|e| invalid("user", e))?,
        None => meta("user")?,
    };
    let tags = match metadata.and_then(|m| m.get("tollgate_tags").or_else(|| m.get("tags"))) {
        Some(Value::String(s)) => {
            attribution::tags("metadata.tags", s).map_err(|e| invalid("metadata.tags", e))?
        }
        Some(Value::Array(items)) => {
            let joined = items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",");
            attribution::tags("metadata.tags", &joined).map_err(|e| invalid("metadata.tags", e))?
        }
        _ => Vec::new(),
    };
    Ok(Labels {
        user,
        team: meta("team")?,
        agent: meta("agent")?,
        task: meta("task")?,
        tags,
    })
}

/// A request body's output cap: OpenAI `max_completion_tokens` / `max_tokens`,
/// Anthropic `max_tokens`, Bedrock `inferenceConfig.maxTokens`.
pub fn max_output_tokens(body: &Map<String, Value>) -> Option<u64> {
    body.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .or_else(|| {
            body.get("inferenceConfig")
                .and_then(|c| c.get("maxTokens"))
                .and_then(Value::as_u64)
        })
}

/// Remove tollgate's own keys from the metadata map `field` of `body` (and the map
/// itself once empty) before forwarding.
pub fn strip_tollgate_metadata(body: &mut Map<String, Value>, field: &str) {
    let empty = match body.get_mut(field) {
        Some(Value::Object(m)) => {
            for k in METADATA_KEYS {
                m.remove(k);
            }
            m.is_empty()
        }
        _ => false,
    };
    if empty {
        body.remove(field);
    }
}

/// What the request sent, kept only to count its tokens if the upstream never reports.
pub enum Prompt {
    None,
    Chat(Vec<Value>),
    Embeddings(Value),
    /// Any other request body (Anthropic, Bedrock): its text fields are counted.
    Json(Value),
}

/// The request's size, as far as the gateway can tell before forwarding it.
pub struct Estimate {
    pub prompt_tokens: u64,
    /// `max_completion_tokens` / `max_tokens` as the client sent it.
    pub max_output: Option<u64>,
    pub chat: bool,
}

pub fn estimate(cache: &TokenCache, enc: Encoding, body: &Map<String, Value>) -> Estimate {
    if let Some(Value::Array(messages)) = body.get("messages") {
        let mut prompt = cache.chat_prompt(enc, messages, body.get("tools"));
        // Anthropic and Bedrock keep the system prompt (and Bedrock the tools) apart.
        for extra in ["system", "toolConfig"] {
            if let Some(v) = body.get(extra).filter(|v| !v.is_null()) {
                prompt += cache.get_or(enc, v, || enc.count(&v.to_string()));
            }
        }
        let max_output = max_output_tokens(body);
        Estimate {
            prompt_tokens: prompt,
            max_output,
            chat: true,
        }
    } else {
        Estimate {
            prompt_tokens: body
                .get("input")
                .map(|i| enc.count_embedding_input(i))
                .unwrap_or(0),
            max_output: Some(0),
            chat: false,
        }
    }
}

/// Write a clamped `max_tokens` in the field the client used (reasoning models only take
/// `max_completion_tokens`).
pub fn set_max_tokens(body: &mut Map<String, Value>, model: &str, n: u64) {
    if let Some(Value::Object(c)) = body.get_mut("inferenceConfig") {
        c.insert("maxTokens".into(), Value::from(n));
        return;
    }
    let field = if body.contains_key("max_completion_tokens") {
        "max_completion_tokens"
    } else if body.contains_key("max_tokens") {
        "max_tokens"
    } else if model.starts_with('o') || model.starts_with("gpt-5") {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    body.insert(field.into(), Value::from(n));
}

impl IngressRequest {
    /// The request body as the client wrote it (minus what the gateway edits).
    pub fn body(&self) -> &Map<String, Value> {
        match self {
            IngressRequest::Chat(r) => &r.body,
            IngressRequest::Embeddings(r) => &r.body,
            IngressRequest::Messages(r) => &r.body,
            IngressRequest::Converse(r) => &r.body,
            IngressRequest::Responses(r) => &r.chat.body,
        }
    }

    pub fn body_mut(&mut self) -> &mut Map<String, Value> {
        match self {
            IngressRequest::Chat(r) => &mut r.body,
            IngressRequest::Embeddings(r) => &mut r.body,
            IngressRequest::Messages(r) => &mut r.body,
            IngressRequest::Converse(r) => &mut r.body,
            IngressRequest::Responses(r) => &mut r.chat.body,
        }
    }

    /// The text of the last message when it is a user turn made only of text (what the
    /// semantic cache compares), and the body without that text (what must match
    /// exactly). `None` when the last message is anything else (a tool result, an image,
    /// an assistant prefill) or for embeddings.
    pub fn semantic_split(&self) -> Option<(Map<String, Value>, String)> {
        let (body, text_key, block_is_text): (_, &str, fn(&Value) -> bool) = match self {
            IngressRequest::Responses(r) => (&r.chat.body, "text", |b| {
                b.get("type").and_then(Value::as_str) == Some("text")
            }),
            IngressRequest::Chat(r) => (&r.body, "text", |b| {
                b.get("type").and_then(Value::as_str) == Some("text")
            }),
            IngressRequest::Messages(r) => (&r.body, "text", |b| {
                b.get("type").and_then(Value::as_str) == Some("text")
                    && b.get("cache_control").is_none()
            }),
            IngressRequest::Converse(r) => (&r.body, "text", |b| {
                b.as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("text"))
            }),
            IngressRequest::Embeddings(_) => return None,
        };
        let last = body.get("messages")?.as_array()?.last()?;
        if last.get("role").and_then(Value::as_str) != Some("user") {
            return None;
        }
        let text = match last.get("content")? {
            Value::String(s) if !matches!(self, IngressRequest::Converse(_)) => s.clone(),
            Value::Array(blocks) if !blocks.is_empty() && blocks.iter().all(block_is_text) => {
                let mut t = String::new();
                for b in blocks {
                    if !t.is_empty() {
                        t.push('\n');
                    }
                    t.push_str(b.get(text_key).and_then(Value::as_str)?);
                }
                t
            }
            _ => return None,
        };
        if text.trim().is_empty() {
            return None;
        }
        let mut rest = body.clone();
        if let Some(Value::Array(ms)) = rest.get_mut("messages")
            && let Some(Value::Object(m)) = ms.last_mut()
        {
            m.insert("content".into(), Value::String(String::new()));
        }
        Some((rest, text))
    }

    /// The API the request came in on, as the ledger names it.
    pub fn api(&self) -> &'static str {
        match self {
            IngressRequest::Chat(_) => Endpoint::ChatCompletions.as_str(),
            IngressRequest::Embeddings(_) => Endpoint::Embeddings.as_str(),
            IngressRequest::Messages(_) => Endpoint::Messages.as_str(),
            IngressRequest::Converse(_) => Endpoint::Converse.as_str(),
            IngressRequest::Responses(_) => Endpoint::Responses.as_str(),
        }
    }

    /// Whether the answer is the same every time: temperature 0 or a seed (embeddings
    /// always are).
    pub fn deterministic(&self) -> bool {
        match self {
            IngressRequest::Embeddings(_) => true,
            _ => tollgate_domain::cache::key::deterministic(self.body()),
        }
    }

    /// The conversation's messages (every chat format has a `messages` array), which
    /// the task guard fingerprints.
    pub fn messages(&self) -> Option<&[Value]> {
        match self.body().get("messages") {
            Some(Value::Array(m)) => Some(m),
            _ => None,
        }
    }

    /// The OpenAI `service_tier` the client asked for, which some price tiers depend on.
    pub fn service_tier(&self) -> Option<&str> {
        self.body().get("service_tier").and_then(Value::as_str)
    }

    /// The request's size as far as the gateway can tell before forwarding it (prompt
    /// tokens counted locally with `enc`, through `cache`).
    pub fn estimate(&self, cache: &TokenCache, enc: Encoding) -> Estimate {
        estimate(cache, enc, self.body())
    }

    /// Lower the request's output cap to `n`, in the field its format uses (Bedrock's
    /// `inferenceConfig.maxTokens`; for OpenAI the field the client used, else the one
    /// `upstream_model` takes).
    pub fn set_max_output_tokens(&mut self, upstream_model: &str, n: u64) {
        set_max_tokens(self.body_mut(), upstream_model, n);
    }

    /// The client asked for a JSON answer (OpenAI `response_format` `json_object` or
    /// `json_schema`); escalation then checks that the answer parses.
    pub fn json_requested(&self) -> bool {
        match self {
            IngressRequest::Chat(_) | IngressRequest::Responses(_) => self
                .body()
                .get("response_format")
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|t| t == "json_object" || t == "json_schema"),
            _ => false,
        }
    }

    /// The output cap the request carries, as sent upstream after any clamping.
    pub fn max_output_tokens(&self) -> Option<u64> {
        match self {
            IngressRequest::Chat(r) => max_output_tokens(&r.body),
            IngressRequest::Messages(r) => max_output_tokens(&r.body),
            IngressRequest::Converse(r) => max_output_tokens(&r.body),
            IngressRequest::Responses(r) => max_output_tokens(&r.chat.body),
            IngressRequest::Embeddings(_) => None,
        }
    }

    pub fn parse(ingress: &Ingress, bytes: &[u8]) -> Result<IngressRequest, ApiError> {
        IngressRequest::parse_with(ingress, bytes, |_| None)
    }

    /// Parse a body; `history` finds the stored items of a Responses
    /// `previous_response_id`.
    pub fn parse_with(
        ingress: &Ingress,
        bytes: &[u8],
        history: impl FnOnce(&str) -> Option<std::sync::Arc<Vec<Value>>>,
    ) -> Result<IngressRequest, ApiError> {
        Ok(match ingress {
            Ingress::ChatCompletions => IngressRequest::Chat(ChatRequest::parse(bytes)?),
            Ingress::Embeddings => IngressRequest::Embeddings(EmbeddingsRequest::parse(bytes)?),
            Ingress::Messages => IngressRequest::Messages(MessagesRequest::parse(bytes)?),
            Ingress::Converse { model, stream } => {
                IngressRequest::Converse(ConverseRequest::parse(bytes, model, *stream)?)
            }
            Ingress::Responses => {
                IngressRequest::Responses(Box::new(ResponsesRequest::parse(bytes, history)?))
            }
        })
    }

    pub fn format(&self) -> Format {
        match self {
            IngressRequest::Chat(_) | IngressRequest::Embeddings(_) => Format::OpenAi,
            IngressRequest::Messages(_) => Format::Anthropic,
            IngressRequest::Converse(_) => Format::Bedrock,
            IngressRequest::Responses(_) => Format::Responses,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            IngressRequest::Chat(r) => &r.model,
            IngressRequest::Embeddings(r) => &r.model,
            IngressRequest::Messages(r) => &r.model,
            IngressRequest::Converse(r) => &r.model,
            IngressRequest::Responses(r) => &r.chat.model,
        }
    }

    pub fn stream(&self) -> bool {
        match self {
            IngressRequest::Chat(r) => r.stream,
            IngressRequest::Embeddings(_) => false,
            IngressRequest::Messages(r) => r.stream,
            IngressRequest::Converse(r) => r.stream,
            IngressRequest::Responses(r) => r.chat.stream,
        }
    }

    /// OpenAI clients that asked for the usage chunk themselves.
    pub fn client_wants_usage(&self) -> bool {
        matches!(self, IngressRequest::Chat(r) if r.client_wants_usage)
    }

    /// Attribution labels the body carries.
    pub fn body_labels(&self) -> Result<Labels, ApiError> {
        match self {
            IngressRequest::Chat(r) => body_labels(r.user(), r.metadata()),
            IngressRequest::Embeddings(r) => {
                body_labels(r.user(), r.body.get("metadata").and_then(Value::as_object))
            }
            IngressRequest::Messages(r) => body_labels(r.user(), r.metadata()),
            IngressRequest::Converse(r) => body_labels(None, r.metadata()),
            IngressRequest::Responses(r) => body_labels(r.chat.user(), r.chat.metadata()),
        }
    }

    pub fn strip_tollgate_metadata(&mut self) {
        match self {
            IngressRequest::Chat(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Embeddings(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Messages(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Converse(r) => strip_tollgate_metadata(&mut r.body, "requestMetadata"),
            IngressRequest::Responses(r) => strip_tollgate_metadata(&mut r.chat.body, "metadata"),
        }
    }

    /// The request in canonical form, for an upstream of format `to`.
    pub fn to_ir(&self, to: Format) -> Result<translate::Request, TranslateError> {
        match self {
            IngressRequest::Chat(r) => translate::openai::request_to_ir(&r.body, to),
            IngressRequest::Embeddings(_) => Err(TranslateError::unsupported(
                "embeddings",
                Format::OpenAi,
                to,
            )),
            IngressRequest::Messages(r) => translate::anthropic::request_to_ir(&r.body, to),
            IngressRequest::Converse(r) => translate::bedrock::request_to_ir(&r.body, r.stream, to),
            // The chat body it was rewritten as: from there, the chat path.
            IngressRequest::Responses(r) => translate::openai::request_to_ir(&r.chat.body, to),
        }
    }

    /// What the prompt was, kept to count its tokens if the upstream never reports.
    pub fn into_prompt(self) -> Prompt {
        match self {
            IngressRequest::Chat(mut r) => match r.body.remove("messages") {
                Some(Value::Array(m)) => Prompt::Chat(m),
                _ => Prompt::None,
            },
            IngressRequest::Responses(mut r) => match r.chat.body.remove("messages") {
                Some(Value::Array(m)) => Prompt::Chat(m),
                _ => Prompt::None,
            },
            IngressRequest::Embeddings(mut r) => match r.body.remove("input") {
                Some(input) => Prompt::Embeddings(input),
                None => Prompt::None,
            },
            IngressRequest::Messages(mut r) => {
                let mut v = Map::new();
                for k in ["system", "messages", "tools"] {
                    if let Some(x) = r.body.remove(k) {
                        v.insert(k.into(), x);
                    }
                }
                Prompt::Json(Value::Object(v))
            }
            IngressRequest::Converse(mut r) => {
                let mut v = Map::new();
                for k in ["system", "messages", "toolConfig"] {
                    if let Some(x) = r.body.remove(k) {
                        v.insert(k.into(), x);
                    }
                }
                Prompt::Json(Value::Object(v))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_labels_and_stripping() {
        let mut body: Map<String, Value> = serde_json::from_str(
            r#"{"metadata":{"tollgate_agent":"a1","task":"t9","tollgate_tags":"x,y"}}"#,
        )
        .unwrap();
        let l = body_labels(Some("u1"), body.get("metadata").and_then(Value::as_object)).unwrap();
        assert_eq!(l.agent.as_deref(), Some("a1"));
        assert_eq!(l.task.as_deref(), Some("t9"));
        assert_eq!(l.user.as_deref(), Some("u1"));
        assert_eq!(l.tags, vec!["x".to_string(), "y".to_string()]);
        strip_tollgate_metadata(&mut body, "metadata");
        assert_eq!(body["metadata"], serde_json::json!({"task": "t9"}));
        let mut only: Map<String, Value> =
            serde_json::from_str(r#"{"requestMetadata":{"tollgate_agent":"a1"}}"#).unwrap();
        strip_tollgate_metadata(&mut only, "requestMetadata");
        assert!(only.get("requestMetadata").is_none());
    }

    #[test]
    fn estimates_count_the_prompt_and_read_max_tokens() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"Hello!"}],"max_tokens":50}"#,
        )
        .unwrap();
        let cache = TokenCache::default();
        let e = estimate(&cache, Encoding::O200kBase, &body);
        assert!(e.chat && e.prompt_tokens > 3);
        // Cached per message: the same count, and the same as counting whole.
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(e.prompt_tokens, Encoding::O200kBase.count_chat_prompt(msgs));
        assert_eq!(
            estimate(&cache, Encoding::O200kBase, &body).prompt_tokens,
            e.prompt_tokens
        );
        assert_eq!(e.max_output, Some(50));
        let emb: Map<String, Value> = serde_json::from_str(r#"{"input":["a b c"]}"#).unwrap();
        let e = estimate(&cache, Encoding::Cl100kBase, &emb);
        assert_eq!((e.chat, e.max_output), (false, Some(0)));
        let mut b = Map::new();
        set_max_tokens(&mut b, "o3-mini", 9);
        assert_eq!(b["max_completion_tokens"], 9);
        let mut b = Map::new();
        set_max_tokens(&mut b, "gpt-4o", 9);
        assert_eq!(b["max_tokens"], 9);
    }
}
