//! `whisker serve`: a local web page (embedded HTML/CSS/JS, no build step) and its JSON API
//! under `/api/`: classify, cam, featuremap, attack, dream (with live progress over
//! server-sent events and a cancel), models, classes, layers.
//!
//! Serving rules: 127.0.0.1 unless told otherwise; request bodies up to `--max-body`; images
//! decoded up to `--max-pixels` (decompression bombs are refused before decoding); heavy jobs
//! bounded (`--workers` at a time, `--queue` waiting; beyond that 503 with Retry-After); a bad
//! upload is a 4xx with a message and the server goes on; only the models given are read;
//! Ctrl-C or SIGTERM stops it gracefully.

mod api;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{watch, Semaphore};
use whisker::model::Model;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Trained whisker runs to offer (repeatable).
    #[arg(long = "model", value_name = "RUN")]
    models: Vec<PathBuf>,
    /// Zoo backbones to offer (repeatable) [default: every backbone whose weights are cached].
    #[arg(long = "backbone", short = 'b', value_name = "BACKBONE")]
    backbones: Vec<String>,
    /// Address to listen on; another host than 127.0.0.1 exposes the page to the network.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Largest request body, in MB.
    #[arg(long, default_value_t = 25, value_parser = crate::args::whole(1, 4096))]
    max_body: usize,
    /// Heavy jobs (classify, CAM, attack, dream…) run at a time.
    #[arg(long, default_value_t = 1, value_parser = crate::args::whole(1, 64))]
    workers: usize,
    /// Heavy jobs that may wait for a worker; more are refused (503, Retry-After).
    #[arg(long, default_value_t = 8, value_parser = crate::args::whole(1, 1024))]
    queue: usize,
    /// Connections served at once; more wait in the system's queue until one closes.
    #[arg(long, default_value_t = 256, value_parser = crate::args::whole(1, 4096))]
    max_connections: usize,
    /// Seconds a client has to send a request's headers; a slower one is disconnected (a
    /// half-sent request cannot hold a connection).
    #[arg(long, default_value_t = 10, value_parser = crate::args::whole(1, 3600))]
    header_timeout: usize,
    /// Seconds a client has to send a request's body (an upload); then 408.
    #[arg(long, default_value_t = 60, value_parser = crate::args::whole(1, 3600))]
    body_timeout: usize,
    /// Announce the address and the models as one JSON line on stdout (for scripts; with
    /// `--addr 127.0.0.1:0` the system picks a free port).
    #[arg(long)]
    json: bool,
}

/// A model the server offers.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Offer {
    pub id: String,
    /// "zoo" or "run".
    pub kind: &'static str,
    pub backbone: String,
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// A dream in progress (or done).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct DreamStatus {
    pub step: usize,
    pub steps: usize,
    /// "running", "done", "cancelled", "error".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(crate) struct DreamJob {
    pub status: watch::Receiver<DreamStatus>,
    pub cancel: Arc<AtomicBool>,
}

pub(crate) struct AppState {
    pub offers: Vec<Offer>,
    /// Loaded models by id (on the autodiff CPU device: gradients for CAM, attack, dream).
    pub loaded: Mutex<HashMap<String, Arc<Model>>>,
    /// Admission (workers + queue) and the workers themselves.
    pub admit: Arc<Semaphore>,
    pub work: Arc<Semaphore>,
    pub dreams: Mutex<HashMap<u64, DreamJob>>,
    pub next_dream: std::sync::atomic::AtomicU64,
    pub max_pixels: u64,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time a request's body may take to arrive.
    pub body_timeout: std::time::Duration,
}

fn offers(a: &ServeArgs) -> Result<Vec<Offer>> {
    let mut out: Vec<Offer> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for run in &a.models {
        let file = whisker::run::model_file(run);
        if !file.is_file() {
            bail!(
                "{}: no model.safetensors there (a run directory of `whisker train`)",
                run.display()
            );
        }
        let meta = whisker::train::model_file::TrainedModel::load(&file)
            .with_context(|| format!("{}", file.display()))?
            .meta;
        let dir = file.parent().map(PathBuf::from).unwrap_or_default();
        let base = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let mut id = format!("run:{base}");
        let mut k = 1;
        while !used.insert(id.clone()) {
            k += 1;
            id = format!("run:{base}-{k}");
        }
        out.push(Offer {
            id,
            kind: "run",
            backbone: meta.backbone,
            path: Some(dir),
        });
    }
    let cache = whisker::cache::Cache::default();
    let zoo: Vec<String> = if a.backbones.is_empty() {
        whisker::models()
            .iter()
            .map(|m| m.name.to_string())
            .filter(|n| cache.require(n).is_ok())
            .collect()
    } else {
        for b in &a.backbones {
            whisker::backbones::spec(b)?;
            cache.require(b).with_context(|| {
                format!("{b}: fetch its weights first (`whisker weights fetch {b}`)")
            })?;
        }
        a.backbones.clone()
    };
    for b in zoo {
        if used.insert(b.clone()) {
            out.push(Offer {
                id: b.clone(),
                kind: "zoo",
                backbone: b,
                path: None,
            });
        }
    }
    if out.is_empty() {
        bail!("nothing to serve: give --model RUN or -b BACKBONE, or fetch weights (`whisker weights fetch efficientnet_lite0`)");
    }
    Ok(out)
}

pub(crate) fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/api/models", get(api::models))
        .route("/api/classes", get(api::classes))
        .route("/api/layers", get(api::layers))
        .route("/api/classify", post(api::classify))
        .route("/api/cam", post(api::cam))
        .route("/api/featuremap", post(api::featuremap))
        .route("/api/attack", post(api::attack))
        .route("/api/dream", post(api::dream_start))
        .route(
            "/api/dream/{id}",
            get(api::dream_status).delete(api::dream_cancel),
        )
        .route("/api/dream/{id}/events", get(api::dream_events))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Ctrl-C (SIGINT), or SIGTERM (a service manager's stop): finish the requests in flight, then
/// exit.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    eprintln!("whisker serve: stopping");
}

/// What bounds the connections.
struct Limits {
    connections: usize,
    header_timeout: std::time::Duration,
}

/// Serve connections until a stop signal: at most `limits.connections` at a time (further
/// ones wait in the system's accept queue, never refused for a slow one), each with a
/// deadline for its request headers (hyper's timer: a client that sends half a header is
/// disconnected). On the signal: running dreams are cancelled, the requests in flight
/// finish (at most 30 s), then the loop returns.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    state: &AppState,
    limits: Limits,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.connections));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // out of file descriptors or a connection reset before it was accepted:
                // wait a moment instead of spinning
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    // a dream can run for minutes: cancel them (each stops at its next step)
    for job in state
        .dreams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
    {
        job.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            eprintln!("whisker serve: requests still running after 30 s; stopping anyway");
        }
    }
}

pub fn serve(a: ServeArgs) -> Result<i32> {
    let offers = offers(&a)?;
    let state = Arc::new(AppState {
        offers,
        loaded: Mutex::new(HashMap::new()),
        admit: Arc::new(Semaphore::new(a.workers + a.queue)),
        work: Arc::new(Semaphore::new(a.workers)),
        dreams: Mutex::new(HashMap::new()),
        next_dream: std::sync::atomic::AtomicU64::new(1),
        max_pixels: whisker::data::decode::max_pixels(),
        max_body: a.max_body * 1024 * 1024,
        body_timeout: std::time::Duration::from_secs(a.body_timeout as u64),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .with_context(|| format!("cannot listen on {}", a.addr))?;
        let addr = listener.local_addr()?;
        let names: Vec<&str> = state.offers.iter().map(|o| o.id.as_str()).collect();
        if a.json {
            println!(
                "{}",
                serde_json::json!({"url": format!("http://{addr}/"), "models": names})
            );
        } else {
            println!(
                "whisker serve: http://{addr}/  ({} model(s): {})",
                names.len(),
                names.join(", ")
            );
            println!("Ctrl-C to stop.");
        }
        if !addr.ip().is_loopback() {
            eprintln!(
                "whisker: warning: listening on {addr}: the page is reachable from the network"
            );
        }
        let app = router(state.clone(), state.max_body);
        let limits = Limits {
            connections: a.max_connections,
            header_timeout: std::time::Duration::from_secs(a.header_timeout as u64),
        };
        accept_loop(listener, app, &state, limits).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}
