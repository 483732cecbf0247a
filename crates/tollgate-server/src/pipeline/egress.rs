//! Stage 7: the upstream call. The same format forwards the body with the model id
//! replaced; another format goes through the canonical representation; Bedrock calls
//! are SigV4-signed; the request's trace context goes along as `traceparent`. From the
//! moment it is sent, the upstream may bill: the context says so.

use super::meter::Meter;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::ingress::IngressRequest;
use crate::upstream::{self, UpstreamCall};
use http::HeaderMap;
use serde_json::Value;
use tollgate_providers::UpstreamClient;
use tollgate_providers::stream::ClientStream;
use tollgate_providers::translate::{Format, responses};

/// A request on its way back: the upstream's response and how to read it.
pub struct Sent {
    pub resp: reqwest::Response,
    /// The format the upstream answers in.
    pub upstream: Format,
    /// The client's format differs: the answer is translated.
    pub translated: bool,
    pub stream: bool,
    /// OpenAI → OpenAI streams: the gateway asked for the usage chunk itself.
    pub injected_usage: bool,
    /// What the client's stream looks like (format, model name, creation time).
    pub client: ClientStream,
    /// Chat (text is counted if usage is missing) rather than embeddings.
    pub chat: bool,
    /// The request's output cap as sent (after any clamping), when asked for: an answer
    /// cut off at it is what the client asked for, not a reason to escalate.
    pub output_cap: Option<u64>,
    /// A Responses request to remember (`store` not false): the response id and the
    /// conversation so far, kept with the answer's output for `previous_response_id`.
    pub conversation: Option<(String, Vec<Value>)>,
}

/// Send `req` to the context's deployment. `want_cap`: also say what output cap was sent.
pub async fn send(
    client: &UpstreamClient,
    m: &mut Meter,
    mut req: IngressRequest,
    headers: &HeaderMap,
    want_cap: bool,
) -> Result<Sent, ApiError> {
    let Some(deployment) = m.ctx.deployment.clone() else {
        return Err(ApiError::Internal("no deployment resolved".into()));
    };
    m.ctx.output_cap = req.max_output_tokens();
    let output_cap = if want_cap { m.ctx.output_cap } else { None };
    let created = (now_ms() / 1000).max(0) as u64;
    let mut conversation = None;
    let responses = match &mut req {
        IngressRequest::Responses(r) => {
            let id = format!(
                "resp_{}",
                m.ctx
                    .request_id
                    .strip_prefix("req_")
                    .unwrap_or(&m.ctx.request_id)
            );
            if r.store {
                conversation = Some((id.clone(), std::mem::take(&mut r.items)));
            }
            Some(responses::Meta {
                id,
                model: r.chat.model.clone(),
                created_at: created,
                echo: std::mem::take(&mut r.echo),
            })
        }
        _ => None,
    };
    let mut client_stream = ClientStream {
        format: req.format(),
        model: req.model().to_string(),
        created,
        include_usage: req.client_wants_usage(),
        responses,
        json_tool: false,
    };
    let chat = !matches!(req, IngressRequest::Embeddings(_));
    let timeout = m.ctx.cfg.server.upstream_timeout;
    let call = upstream::prepare(&deployment, &mut req, headers, timeout, now_ms() / 1000)?;
    m.ctx.prompt = req.into_prompt();
    let UpstreamCall {
        mut request,
        upstream,
        translated,
        stream,
        injected_usage,
        json_tool,
    } = call;
    client_stream.json_tool = json_tool;
    if let Some(t) = &m.ctx.trace {
        t.inject(&mut request.headers);
    }
    m.ctx.upstream_called = true;
    let resp = client.post(request).await?;
    Ok(Sent {
        resp,
        upstream,
        translated,
        stream,
        injected_usage,
        client: client_stream,
        chat,
        output_cap,
        conversation,
    })
}
