//! Stage 6: admission. The limits component decides (task guard, worst-case reservation
//! across every budget and rate limit, maybe a lower output cap); this stage writes what
//! it decided into the context (the ticket, the response headers) and the request (the
//! clamped cap, in the field its format uses).

use super::ctx::RequestCtx;
use crate::error::ApiError;
use crate::ingress::IngressRequest;
use crate::limits::{Call, Limits};
use std::sync::Arc;

pub async fn admit(
    limits: &Arc<Limits>,
    ctx: &mut RequestCtx,
    req: &mut IngressRequest,
) -> Result<(), ApiError> {
    let admitted = limits
        .admit(
            &ctx.cfg.limits,
            Call {
                request_id: &ctx.request_id,
                attribution: &ctx.attribution,
                retry: ctx.retry_of.is_some(),
                deployment: ctx.deployment.as_deref(),
                request: req,
            },
        )
        .await?;
    if let Some(n) = admitted.clamped_to {
        let model = ctx.deployment.as_ref().map_or("", |d| d.model.as_str());
        req.set_max_output_tokens(model, n);
    }
    ctx.response_headers.extend(admitted.headers);
    ctx.ticket = Some(admitted.ticket);
    Ok(())
}
