//! The web dashboard at `/dashboard`: one page, its script and styles, and the vendored
//! uPlot chart library, all embedded in the binary (works offline, no CDN).
//!
//! The page itself holds no data: it asks for the master key (kept in the browser's
//! session storage) and polls `GET /admin/dashboard` with it every few seconds, so the
//! admin API's authentication protects everything it shows.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
/// The what-if replay panel (`POST /admin/replay`), a file of its own.
const REPLAY_JS: &str = include_str!("replay.js");
const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("vendor/uPlot.LICENSE");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// `GET /dashboard`
pub async fn index() -> Response {
    let mut r = asset(INDEX, "text/html; charset=utf-8");
    // Only this gateway's own scripts, styles and API; no framing.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    r
}

/// `GET /dashboard/assets/{name}`
pub async fn assets(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "replay.js" => asset(REPLAY_JS, "text/javascript; charset=utf-8"),
        "uPlot.iife.min.js" => asset(UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => asset(UPLOT_CSS, "text/css; charset=utf-8"),
        "uPlot.LICENSE" => asset(UPLOT_LICENSE, "text/plain; charset=utf-8"),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
