//! Stage 2: the body parsed into a format-tagged request, and the attribution: the key
//! owner's labels, then `x-tollgate-*` headers, then the body's own metadata (each only
//! fills what the one before left empty).

use super::ctx::RequestCtx;
use crate::clock::now_ms;
use crate::conversations::Conversations;
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use http::HeaderMap;
use tollgate_domain::attribution::{self, Labels};

/// Parse the body and complete the attribution. A Responses `previous_response_id` is
/// looked up among the answers the same key stored.
pub fn attribute(
    ctx: &mut RequestCtx,
    bytes: &[u8],
    headers: &HeaderMap,
    conversations: &Conversations,
) -> Result<IngressRequest, ApiError> {
    let key = ctx.attribution.key_id.clone().unwrap_or_default();
    let req = IngressRequest::parse_with(&ctx.ingress, bytes, |id| {
        conversations.get(&key, id, now_ms())
    })?;
    ctx.requested_model = req.model().to_string();
    ctx.stream = req.stream();
    let h = header_labels(headers)?;
    let b = req.body_labels()?;
    ctx.attribution.fill_from(h);
    ctx.attribution.fill_from(b);
    Ok(req)
}

fn invalid(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam {
        param: field.to_string(),
        message: e.to_string(),
    }
}

/// Labels from `x-tollgate-*` headers.
fn header_labels(h: &HeaderMap) -> Result<Labels, ApiError> {
    let get = |name: &'static str| -> Result<Option<String>, ApiError> {
        match h.get(name) {
            None => Ok(None),
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| invalid(name, "header is not visible ASCII"))?;
                attribution::label(name, s).map_err(|e| invalid(name, e))
            }
        }
    };
    let tags = match h.get(headers::TAGS) {
        None => Vec::new(),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| invalid(headers::TAGS, "header is not visible ASCII"))?;
            attribution::tags(headers::TAGS, s).map_err(|e| invalid(headers::TAGS, e))?
        }
    };
    Ok(Labels {
        user: get(headers::USER)?,
        team: get(headers::TEAM)?,
        agent: get(headers::AGENT)?,
        task: get(headers::TASK)?,
        tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_labels_validate() {
        let mut h = HeaderMap::new();
        h.insert(headers::AGENT, "planner".parse().unwrap());
        h.insert(headers::TAGS, "a, b".parse().unwrap());
        let l = header_labels(&h).unwrap();
        assert_eq!(l.agent.as_deref(), Some("planner"));
        assert_eq!(l.tags.len(), 2);
        h.insert(headers::TASK, "x".repeat(300).parse().unwrap());
        assert!(matches!(
            header_labels(&h),
            Err(ApiError::InvalidParam { .. })
        ));
    }
}
