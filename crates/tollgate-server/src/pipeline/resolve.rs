//! Stage 3: the deployment that serves the request. A routed model name (`auto`) is
//! decided here by the route's router ([`crate::routing::decide`]), so admission
//! reserves against the chosen tier's prices; a concrete model with an
//! `x-tollgate-route` header is shadow-decided under that route and served as asked.

use super::ctx::RequestCtx;
use crate::config::{Config, Deployment, Route};
use crate::error::ApiError;
use crate::headers;
use crate::ingress::IngressRequest;
use crate::routing::{self, Routed, RoutingState};
use http::HeaderMap;
use std::sync::Arc;
use tollgate_domain::attribution::Attribution;
use tollgate_store::VirtualKey;

/// Resolve the deployment (and the routing decision) into the context.
pub fn resolve(
    routing: &RoutingState,
    ctx: &mut RequestCtx,
    key: &VirtualKey,
    req: &IngressRequest,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let (d, routed) = decide_deployment(routing, &ctx.cfg, key, &ctx.attribution, req, headers)?;
    ctx.deployment = Some(d);
    ctx.route = routed;
    Ok(())
}

fn invalid(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam {
        param: field.to_string(),
        message: e.to_string(),
    }
}

/// The deployment that serves the request. A routed model name (`auto`) is
/// decided here, so admission reserves against the chosen tier's prices; a concrete model
/// with an `x-tollgate-route` header is shadow-decided under that route and served as
/// asked.
fn decide_deployment(
    routing: &RoutingState,
    cfg: &Config,
    key: &VirtualKey,
    attr: &Attribution,
    req: &IngressRequest,
    headers: &HeaderMap,
) -> Result<(Arc<Deployment>, Option<Routed>), ApiError> {
    let model = req.model();
    let route_allowed = |route: &Route| -> Result<(), ApiError> {
        if route.allows(attr.team.as_deref(), attr.agent.as_deref()) {
            return Ok(());
        }
        let who = match (&attr.team, &attr.agent) {
            (Some(t), Some(a)) => format!("team `{t}` / agent `{a}`"),
            (Some(t), None) => format!("team `{t}`"),
            (None, Some(a)) => format!("agent `{a}`"),
            (None, None) => "callers without a team or agent".to_string(),
        };
        Err(ApiError::RouteNotAllowed {
            route: route.name.clone(),
            who,
        })
    };
    if let Some(route) = cfg.routes.get(model) {
        if !key.allows_model(model) {
            return Err(ApiError::ModelNotAllowed(model.to_string()));
        }
        if matches!(req, IngressRequest::Embeddings(_)) {
            return Err(invalid(
                "model",
                format!("`{model}` is a routed name; routes serve chat requests, not embeddings"),
            ));
        }
        route_allowed(route)?;
        let r = routing::decide(
            routing,
            route,
            req,
            attr.task.as_deref(),
            None,
            cfg.routing.record_samples,
        );
        return Ok((r.served.clone(), Some(r)));
    }
    let d = cfg
        .deployments
        .get(model)
        .cloned()
        .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))?;
    if !key.allows_model(model) {
        return Err(ApiError::ModelNotAllowed(model.to_string()));
    }
    // Routes judge chat prompts: an embeddings request is served as asked, with no
    // shadow decision (its cost on a chat tier would be a made-up saving).
    let Some(name) = headers
        .get(headers::ROUTE)
        .filter(|_| !matches!(req, IngressRequest::Embeddings(_)))
    else {
        return Ok((d, None));
    };
    let name = name
        .to_str()
        .map_err(|_| invalid(headers::ROUTE, "header is not visible ASCII"))?;
    let route = cfg.routes.get(name).ok_or_else(|| {
        invalid(
            headers::ROUTE,
            format!("no route named {name:?} (see GET /v1/models)"),
        )
    })?;
    route_allowed(route)?;
    let r = routing::decide(
        routing,
        route,
        req,
        attr.task.as_deref(),
        Some(d.clone()),
        cfg.routing.record_samples,
    );
    Ok((d, Some(r)))
}
