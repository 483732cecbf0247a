//! Stage 5: the request as it will be sent, before admission prices it (so budgets and
//! the guard see what goes upstream). Today: tollgate's own attribution keys are removed
//! from the body's metadata. Request shaping that saves tokens (prompt-cache breakpoints,
//! pruning of long histories) belongs here, in this order, after the cache lookup and
//! before admission.

use crate::ingress::IngressRequest;

/// Shape the request in place.
pub fn shape(req: &mut IngressRequest) {
    req.strip_tollgate_metadata();
}
