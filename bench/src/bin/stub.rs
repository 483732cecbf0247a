//! `stub`: a minimal, zero-latency OpenAI-compatible upstream for load tests.
//!
//! Answers `POST …/chat/completions` with a fixed, realistic `chat.completion` (usage
//! with cached and reasoning token details), or with a fixed SSE stream (role chunk,
//! content chunks, finish chunk, usage chunk, `[DONE]`) when the request body asks for
//! `"stream": true`. Every response is precomputed: per request the stub reads the body,
//! looks for the stream flag, and clones a `Bytes`. Anything else gets a 404.
//!
//! Prints its base URL (`http://ADDR/v1`, the form tollgate's `base_url` takes) on stdout.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

#[derive(Parser, Debug)]
#[command(about = "Zero-latency OpenAI-compatible stub upstream for benchmarks")]
struct Args {
    /// Listen address; port 0 picks a free port. The base URL is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Delay before answering, in milliseconds (0: answer at once).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Runtime worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

const MODEL: &str = "gpt-4o-mini-2024-07-18";

/// A realistic non-streaming answer, shaped like OpenAI's documented example.
fn completion_json() -> String {
    serde_json::json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1_741_570_283,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The capital of France is Paris. It has been the country's political and cultural centre since the Middle Ages, and it is home to the Louvre and the Eiffel Tower.",
                "refusal": null,
                "annotations": []
            },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 12,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        },
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306"
    })
    .to_string()
}

/// A realistic stream: role chunk, content chunks, finish chunk, usage chunk, `[DONE]`.
fn stream_body() -> String {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        serde_json::json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_06737a9306",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            "usage": null
        })
    };
    let mut out = String::new();
    let mut push = |v: serde_json::Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    push(chunk(
        serde_json::json!({"role": "assistant", "content": "", "refusal": null}),
        serde_json::Value::Null,
    ));
    for word in [
        "The",
        " capital",
        " of",
        " France",
        " is",
        " Paris",
        ".",
        " It",
        " has",
        " been",
        " the",
        " country's",
        " political",
        " centre",
        " since",
        " the",
        " Middle",
        " Ages",
        ".",
    ] {
        push(chunk(
            serde_json::json!({"content": word}),
            serde_json::Value::Null,
        ));
    }
    push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    push(serde_json::json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1_741_570_283,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 19,
            "total_tokens": 1136,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}
        }
    }));
    out.push_str("data: [DONE]\n\n");
    out
}

struct Canned {
    json: Bytes,
    sse: Bytes,
    not_found: Bytes,
    latency: Duration,
}

fn wants_stream(body: &[u8]) -> bool {
    const PATTERNS: [&[u8]; 2] = [b"\"stream\":true", b"\"stream\": true"];
    PATTERNS
        .iter()
        .any(|p| body.windows(p.len()).any(|w| w == *p))
}

async fn handle(
    req: Request<Incoming>,
    canned: Arc<Canned>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_chat = req.method() == Method::POST && req.uri().path().ends_with("/chat/completions");
    // Read the whole body: the connection is kept alive, and the stream flag is in it.
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if !canned.latency.is_zero() {
        tokio::time::sleep(canned.latency).await;
    }
    let (status, content_type, bytes) = if !is_chat {
        (
            StatusCode::NOT_FOUND,
            "application/json",
            canned.not_found.clone(),
        )
    } else if wants_stream(&body) {
        (StatusCode::OK, "text/event-stream", canned.sse.clone())
    } else {
        (StatusCode::OK, "application/json", canned.json.clone())
    };
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("openai-processing-ms", HeaderValue::from_static("1"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("req_0b0f2c1fc1a84a6f9d2a5b8e3c7d4e11"),
    );
    Ok(resp)
}

async fn serve(listener: TcpListener, canned: Arc<Canned>) {
    let tasks = TaskTracker::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                eprintln!("stub: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let canned = canned.clone();
        tasks.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, canned.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("http://{addr}/v1");
        std::io::stdout().flush()?;
        let canned = Arc::new(Canned {
            json: Bytes::from(completion_json()),
            sse: Bytes::from(stream_body()),
            not_found: Bytes::from_static(
                br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}"#,
            ),
            latency: Duration::from_millis(args.latency_ms),
        });
        tokio::select! {
            _ = serve(listener, canned) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
