//! `load`: an HTTP/1.1 load generator for the gateway and the stub.
//!
//! Every worker owns one keep-alive connection (hyper's `client::conn::http1`, with
//! `TCP_NODELAY`), opened before the clock starts, and sends one fixed chat request
//! (`Authorization: Bearer <key>`) at a time, reading each answer whole.
//!
//! - Closed loop (`--concurrency N`): N workers send back to back. Latency is from send
//!   to the last body byte.
//! - Open loop (`--rate R`): a pacer thread schedules request *i* at `start + i/R` and
//!   hands the scheduled instants to a pool of `--concurrency` workers through an
//!   unbounded queue. Latency is measured from the **scheduled** time, so a stalled
//!   server is charged for every request it delayed (no coordinated omission); the
//!   service time (from the actual send) and the dispatch delay (schedule → send: the
//!   pacer's timer slack plus any queueing for a free connection) are reported too.
//!
//! Requests scheduled (or started) during `--warmup` are sent but not recorded; requests
//! in `[warmup, warmup + duration)` are. Errors are non-2xx statuses and transport
//! failures (a broken connection is reopened). Histograms are HDR, in microseconds.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_util::task::TaskTracker;

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/1.1 keep-alive load generator (closed loop or fixed rate)")]
struct Args {
    /// Full URL to POST to, e.g. http://127.0.0.1:4000/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Virtual key sent as `Authorization: Bearer <key>`.
    #[arg(long)]
    key: Option<String>,
    /// Closed loop: concurrent connections. Open loop: the connection pool size (the
    /// most requests in flight at once).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop at this many requests per second (omit for a closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts (not recorded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Model name in the request body.
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Ask for a streamed (SSE) answer.
    #[arg(long)]
    stream: bool,
    /// Load generator runtime threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A name for this run, echoed in the output.
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The fixed request body: a short multi-turn chat, as an agent would send.
fn request_body(model: &str, stream: bool) -> Bytes {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a travel agency. Answer in one or two sentences."},
            {"role": "user", "content": "What is the capital of France, and why is it famous?"}
        ],
        "temperature": 0.2,
        "max_tokens": 128,
    });
    if stream {
        v["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(v.to_string())
}

/// What every worker needs to build a request.
struct Target {
    addr: SocketAddr,
    path: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    body: Bytes,
}

impl Target {
    fn request(&self) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(self.path.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(a) = &self.auth {
            b = b.header(AUTHORIZATION, a.clone());
        }
        Ok(b.body(Full::new(self.body.clone()))?)
    }
}

/// 1 µs .. 100 s, 3 significant figures; longer values are clamped to the top.
fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One worker's tallies: raw samples in µs (cheap to push; a few MB at most), folded
/// into HDR histograms at the end.
#[derive(Default)]
struct Tally {
    latency: Vec<u64>,
    service: Vec<u64>,
    dispatch: Vec<u64>,
    /// Recorded (in-window) requests.
    measured: u64,
    measured_errors: u64,
    /// Every request, warm-up included (to check against the ledger).
    ok: u64,
    non_2xx: u64,
    transport: u64,
}

/// All workers' tallies folded together.
struct Totals {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    dispatch: Histogram<u64>,
    measured: u64,
    measured_errors: u64,
    ok: u64,
    non_2xx: u64,
    transport: u64,
}

impl Totals {
    fn new() -> Result<Totals> {
        Ok(Totals {
            latency: histogram()?,
            service: histogram()?,
            dispatch: histogram()?,
            measured: 0,
            measured_errors: 0,
            ok: 0,
            non_2xx: 0,
            transport: 0,
        })
    }

    fn add(&mut self, t: &Tally) {
        for (h, samples) in [
            (&mut self.latency, &t.latency),
            (&mut self.service, &t.service),
            (&mut self.dispatch, &t.dispatch),
        ] {
            for &v in samples {
                h.saturating_record(v);
            }
        }
        self.measured += t.measured;
        self.measured_errors += t.measured_errors;
        self.ok += t.ok;
        self.non_2xx += t.non_2xx;
        self.transport += t.transport;
    }
}

enum Sent {
    Ok,
    Status,
    Transport,
}

/// One keep-alive connection; reopened after a transport error.
struct Conn {
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn open(target: &Target, tasks: &TaskTracker) -> Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(target.addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tasks.spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send(&mut self, target: &Target, tasks: &TaskTracker) -> Sent {
        let sender = match &mut self.sender {
            Some(s) => s,
            None => match Conn::open(target, tasks).await {
                Ok(s) => self.sender.insert(s),
                Err(_) => return Sent::Transport,
            },
        };
        let result = async {
            sender.ready().await?;
            let req = target.request()?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, anyhow::Error>(status)
        }
        .await;
        match result {
            Ok(s) if s.is_success() => Sent::Ok,
            Ok(_) => Sent::Status,
            Err(_) => {
                self.sender = None;
                Sent::Transport
            }
        }
    }
}

fn count(t: &mut Tally, sent: &Sent, measured: bool) {
    match sent {
        Sent::Ok => t.ok += 1,
        Sent::Status => t.non_2xx += 1,
        Sent::Transport => t.transport += 1,
    }
    if measured {
        t.measured += 1;
        if !matches!(sent, Sent::Ok) {
            t.measured_errors += 1;
        }
    }
}

struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.measure_from && t < self.end
    }
}

async fn closed_worker(
    target: Arc<Target>,
    tasks: TaskTracker,
    mut conn: Conn,
    w: Arc<Window>,
) -> Tally {
    let mut t = Tally::default();
    loop {
        let s = Instant::now();
        if s >= w.end {
            break;
        }
        let sent = conn.send(&target, &tasks).await;
        let e = Instant::now();
        let measured = w.contains(s);
        if measured {
            t.latency.push(micros(e - s));
        }
        count(&mut t, &sent, measured);
    }
    t
}

async fn open_worker(
    target: Arc<Target>,
    tasks: TaskTracker,
    mut conn: Conn,
    w: Arc<Window>,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> Tally {
    let mut t = Tally::default();
    loop {
        let scheduled = {
            let mut q = queue.lock().await;
            match q.recv().await {
                Some(s) => s,
                None => break,
            }
        };
        let s = Instant::now();
        let sent = conn.send(&target, &tasks).await;
        let e = Instant::now();
        let measured = w.contains(scheduled);
        if measured {
            t.latency
                .push(micros(e.saturating_duration_since(scheduled)));
            t.service.push(micros(e - s));
            t.dispatch
                .push(micros(s.saturating_duration_since(scheduled)));
        }
        count(&mut t, &sent, measured);
    }
    t
}

/// Schedules request i at `start + i / rate` on a plain thread (its sleep is the
/// kernel's high-resolution timer, not tokio's 1 ms wheel) and never blocks on the
/// workers: a backlog stays in the queue with its scheduled time.
fn pacer(rate: f64, w: &Window, tx: mpsc::UnboundedSender<Instant>) -> std::thread::JoinHandle<()> {
    let (start, end) = (w.start, w.end);
    std::thread::spawn(move || {
        let mut i: u64 = 0;
        loop {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
            i += 1;
        }
    })
}

/// This process's user + system CPU time in µs (Linux `/proc`, USER_HZ = 100), or 0.
fn own_cpu_us() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn line(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "{name:<26} p50 {:>7}  p90 {:>7}  p99 {:>7}  p99.9 {:>7}  max {:>8}  mean {:>9.1}",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.mean()
    )
}

async fn run(args: Args) -> Result<serde_json::Value> {
    let uri: Uri = args.url.parse().context("--url")?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://HOST:PORT/PATH");
    }
    let authority = uri.authority().context("--url has no host")?.clone();
    let addr = authority
        .as_str()
        .to_socket_addrs()?
        .next()
        .context("--url host does not resolve")?;
    let path: Uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    let target = Arc::new(Target {
        addr,
        path,
        host: HeaderValue::from_str(authority.as_str())?,
        auth: args
            .key
            .as_deref()
            .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
            .transpose()?,
        body: request_body(&args.model, args.stream),
    });
    let tasks = TaskTracker::new();
    let n = args.concurrency.max(1);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn {
            sender: Some(Conn::open(&target, &tasks).await.context("connecting")?),
        });
    }
    let start = Instant::now();
    let w = Arc::new(Window {
        start,
        measure_from: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.duration),
    });
    let mut workers = tokio::task::JoinSet::new();
    let pace = match args.rate {
        Some(rate) => {
            if rate <= 0.0 {
                bail!("--rate must be positive");
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let queue = Arc::new(Mutex::new(rx));
            for conn in conns {
                workers.spawn(open_worker(
                    target.clone(),
                    tasks.clone(),
                    conn,
                    w.clone(),
                    queue.clone(),
                ));
            }
            Some(pacer(rate, &w, tx))
        }
        None => {
            for conn in conns {
                workers.spawn(closed_worker(
                    target.clone(),
                    tasks.clone(),
                    conn,
                    w.clone(),
                ));
            }
            None
        }
    };
    let mut tallies = Vec::with_capacity(n);
    while let Some(t) = workers.join_next().await {
        tallies.push(t?);
    }
    let finished = Instant::now();
    if let Some(p) = pace {
        let _ = p.join();
    }
    let mut total = Totals::new()?;
    for t in &tallies {
        total.add(t);
    }
    let all = (total.ok + total.non_2xx + total.transport).max(1);
    let client_cpu_us_per_req = (own_cpu_us() as f64 / all as f64 * 10.0).round() / 10.0;
    let rps = total.measured as f64 / args.duration;
    let mut out = serde_json::json!({
        "label": args.label,
        "url": args.url,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "concurrency": n,
        "rate": args.rate,
        "stream": args.stream,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "requests": total.measured,
        "errors": total.measured_errors,
        "rps": (rps * 10.0).round() / 10.0,
        "ok_total": total.ok,
        "non_2xx_total": total.non_2xx,
        "transport_errors_total": total.transport,
        "drain_ms": finished.saturating_duration_since(w.end).as_millis() as u64,
        "client_cpu_us_per_req": client_cpu_us_per_req,
        "latency_us": quantiles(&total.latency),
    });
    if args.rate.is_some() {
        out["service_us"] = quantiles(&total.service);
        out["dispatch_us"] = quantiles(&total.dispatch);
    }
    if !args.json {
        let mode = match args.rate {
            Some(r) => format!("open loop, {r} req/s scheduled, pool of {n} connections"),
            None => format!("closed loop, {n} connections"),
        };
        println!("{} {} ({mode})", args.label, args.url);
        println!(
            "measured {} requests in {:.1} s: {:.1} req/s, {} errors; all requests: {} ok, {} non-2xx, {} transport errors",
            total.measured,
            args.duration,
            rps,
            total.measured_errors,
            total.ok,
            total.non_2xx,
            total.transport
        );
        let name = if args.rate.is_some() {
            "latency µs (from schedule)"
        } else {
            "latency µs"
        };
        println!("{}", line(name, &total.latency));
        if args.rate.is_some() {
            println!("{}", line("service µs (from send)", &total.service));
            println!("{}", line("dispatch delay µs", &total.dispatch));
        }
    }
    Ok(out)
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
    let json = args.json;
    let out = rt.block_on(run(args))?;
    if json {
        println!("{out}");
    }
    Ok(())
}
