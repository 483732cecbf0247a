//! What clients send: the APIs tollgate serves, and their requests parsed into one
//! format-tagged type the pipeline works with.

use crate::error::ApiError;
use crate::meter::Prompt;
use serde_json::{Map, Value};
use tollgate_domain::attribution::{self, Labels};
use tollgate_domain::ledger::Endpoint;
use tollgate_providers::anthropic::MessagesRequest;
use tollgate_providers::bedrock::ConverseRequest;
use tollgate_providers::openai::{ChatRequest, EmbeddingsRequest};
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
}

impl Ingress {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Ingress::ChatCompletions => Endpoint::ChatCompletions,
            Ingress::Embeddings => Endpoint::Embeddings,
            Ingress::Messages => Endpoint::Messages,
            Ingress::Converse { .. } => Endpoint::Converse,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Ingress::ChatCompletions | Ingress::Embeddings => Format::OpenAi,
            Ingress::Messages => Format::Anthropic,
            Ingress::Converse { .. } => Format::Bedrock,
        }
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

/// Remove tollgate's own keys from the metadata map `field` of `body` (and the map
/// itself once empty) before forwarding.
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

impl IngressRequest {
    /// The client asked for a JSON answer (OpenAI `response_format` `json_object` or
    /// `json_schema`); escalation then checks that the answer parses.
    pub fn json_requested(&self) -> bool {
        match self {
            IngressRequest::Chat(r) => r
                .body
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
            IngressRequest::Embeddings(_) => None,
        }
    }

    pub fn parse(ingress: &Ingress, bytes: &[u8]) -> Result<IngressRequest, ApiError> {
        Ok(match ingress {
            Ingress::ChatCompletions => IngressRequest::Chat(ChatRequest::parse(bytes)?),
            Ingress::Embeddings => IngressRequest::Embeddings(EmbeddingsRequest::parse(bytes)?),
            Ingress::Messages => IngressRequest::Messages(MessagesRequest::parse(bytes)?),
            Ingress::Converse { model, stream } => {
                IngressRequest::Converse(ConverseRequest::parse(bytes, model, *stream)?)
            }
        })
    }

    pub fn format(&self) -> Format {
        match self {
            IngressRequest::Chat(_) | IngressRequest::Embeddings(_) => Format::OpenAi,
            IngressRequest::Messages(_) => Format::Anthropic,
            IngressRequest::Converse(_) => Format::Bedrock,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            IngressRequest::Chat(r) => &r.model,
            IngressRequest::Embeddings(r) => &r.model,
            IngressRequest::Messages(r) => &r.model,
            IngressRequest::Converse(r) => &r.model,
        }
    }

    pub fn stream(&self) -> bool {
        match self {
            IngressRequest::Chat(r) => r.stream,
            IngressRequest::Embeddings(_) => false,
            IngressRequest::Messages(r) => r.stream,
            IngressRequest::Converse(r) => r.stream,
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
        }
    }

    pub fn strip_tollgate_metadata(&mut self) {
        match self {
            IngressRequest::Chat(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Embeddings(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Messages(r) => strip_tollgate_metadata(&mut r.body, "metadata"),
            IngressRequest::Converse(r) => strip_tollgate_metadata(&mut r.body, "requestMetadata"),
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
        }
    }

    /// What the prompt was, kept to count its tokens if the upstream never reports.
    pub fn into_prompt(self) -> Prompt {
        match self {
            IngressRequest::Chat(mut r) => match r.body.remove("messages") {
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
}
