//! The handlers of `/api/`: each heavy one decodes the upload and computes on a blocking
//! worker, admitted through the job queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};
use whisker::inspect::attack::{self, AttackConfig, Method, Norm};
use whisker::inspect::cam::CamOptions;
use whisker::model::Model;

use super::{AppState, DreamJob, DreamStatus};

const PAGE: &str = include_str!("page.html");

/// An API error: a status and a message, sent as `{"error": "…"}`.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
    fn busy() -> Self {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy (every worker and queue place is taken): try again shortly".into(),
        )
    }
}

impl From<whisker::Error> for ApiError {
    fn from(e: whisker::Error) -> Self {
        use whisker::Error as E;
        let status = match &e {
            E::Invalid(_) | E::UnknownBackbone { .. } | E::NonFinite(_) => StatusCode::BAD_REQUEST,
            E::Decode { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::Cancelled => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({"error": self.1}))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        r
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

pub(crate) async fn page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
        )],
        Html(PAGE),
    )
}

pub(crate) async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no such page: the API is under /api/ (models, classes, layers, classify, cam, featuremap, attack, dream)".into(),
    )
}

/// The upload: the raw request body (any content type), or a multipart field `image`. A
/// body that announces more than the limit is refused before any of it is read.
async fn upload(state: &AppState, req: Request) -> ApiResult<Bytes> {
    // a client that sends its body slowly (or never) cannot hold a connection and a queue
    // place: the whole body has `--body-timeout` seconds to arrive
    tokio::time::timeout(state.body_timeout, upload_body(state, req))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s (--body-timeout)",
                    state.body_timeout.as_secs()
                ),
            )
        })?
}

async fn upload_body(state: &AppState, req: Request) -> ApiResult<Bytes> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.max_body as u64) {
        return Err(too_big(state));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let bytes = if multipart {
        let mut m = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError(e.status(), e.body_text()))?;
        let mut found = None;
        while let Some(field) = m
            .next_field()
            .await
            .map_err(|e| ApiError(e.status(), e.body_text()))?
        {
            if field.name() == Some("image") {
                found = Some(
                    field
                        .bytes()
                        .await
                        .map_err(|e| ApiError(e.status(), e.body_text()))?,
                );
                break;
            }
        }
        found.ok_or_else(|| ApiError::bad("a multipart upload needs a field named `image`"))?
    } else {
        Bytes::from_request(req, &()).await.map_err(|e| {
            let s = e.status();
            if s == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError(
                    s,
                    "the request body is over the server's limit (--max-body)".into(),
                )
            } else {
                ApiError(s, e.body_text())
            }
        })?
    };
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "no image: send it as the request body, or as a multipart field named `image`",
        ));
    }
    Ok(bytes)
}

fn too_big(state: &AppState) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is over the server's limit of {} MB (--max-body)",
            state.max_body >> 20
        ),
    )
}

fn decode(bytes: &[u8], max_pixels: u64) -> ApiResult<RgbImage> {
    whisker::data::decode::decode_bytes_limited(bytes, max_pixels).map_err(|f| match f {
        whisker::data::decode::DecodeFailure::TooLarge { .. } => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("upload: {f}"))
        }
        _ => ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("upload: cannot decode image: {f}"),
        ),
    })
}

/// Run `f` on a blocking worker once admitted (503 when the queue is full).
async fn job<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let admit = state
        .admit
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy())?;
    let work = state
        .work
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::busy())?;
    tokio::task::spawn_blocking(move || {
        let _held = (admit, work);
        f()
    })
    .await
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the job failed: {e}"),
        )
    })?
}

/// The model `id` (default: the first offered), loaded once.
fn model(state: &AppState, id: Option<&str>) -> ApiResult<(String, Arc<Model>)> {
    let offer = match id.filter(|s| !s.is_empty()) {
        None => &state.offers[0],
        Some(id) => state.offers.iter().find(|o| o.id == id).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown model `{id}`: see /api/models"),
            )
        })?,
    };
    if let Some(m) = state.loaded.lock().unwrap().get(&offer.id) {
        return Ok((offer.id.clone(), m.clone()));
    }
    let device = whisker::default_device().autodiff();
    let m = match &offer.path {
        Some(run) => Model::load(run, &device)?,
        None => Model::pretrained(&offer.backbone, &device)?,
    };
    let m = Arc::new(m);
    state
        .loaded
        .lock()
        .unwrap()
        .insert(offer.id.clone(), m.clone());
    Ok((offer.id.clone(), m))
}

fn query<T>(q: Q<T>) -> ApiResult<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))
}

fn class_of(m: &Model, s: Option<&str>) -> ApiResult<Option<usize>> {
    match s.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Ok(Some(m.class_index(s)?)),
    }
}

fn png_uri(img: &RgbImage) -> ApiResult<String> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(whisker::report::html::data_uri(&bytes))
}

/// A query that may name the model.
pub(crate) trait ModelChoice {
    fn model(&self) -> Option<&str>;
}

macro_rules! model_choice {
    ($($t:ty),*) => {$(
        impl ModelChoice for $t {
            fn model(&self) -> Option<&str> {
                self.model.as_deref()
            }
        }
    )*};
}
model_choice!(ClassifyQuery, CamQuery, FeatureQuery, AttackQuery);

/// A query string, or why it could not be read.
type Q<T> = std::result::Result<Query<T>, QueryRejection>;

/// What every upload endpoint does: read the image (before judging the query, so that a
/// client still sending gets its answer), parse the query, then on a worker decode the image,
/// load the model and run `f` on them; the model's id joins the answer.
async fn with_image<T: ModelChoice + Send + 'static>(
    state: Arc<AppState>,
    q: Q<T>,
    req: Request,
    f: impl FnOnce(T, RgbImage, &Model) -> ApiResult<Value> + Send + 'static,
) -> ApiResult<Json<Value>> {
    let bytes = upload(&state, req).await?;
    let q = query(q)?;
    let st = state.clone();
    job(&state, move || {
        let img = decode(&bytes, st.max_pixels)?;
        let (id, m) = model(&st, q.model())?;
        let mut v = f(q, img, &m)?;
        v["model"] = json!(id);
        Ok(Json(v))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ModelQuery {
    model: Option<String>,
}

pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let loaded = state.loaded.lock().unwrap();
    let list: Vec<Value> = state
        .offers
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap_or_default();
            v["loaded"] = json!(loaded.contains_key(&o.id));
            v
        })
        .collect();
    Json(json!({"models": list, "default": state.offers[0].id}))
}

pub(crate) async fn classes(
    State(state): State<Arc<AppState>>,
    q: Q<ModelQuery>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let st = state.clone();
    job(&state, move || {
        let (id, m) = model(&st, q.model.as_deref())?;
        Ok(Json(json!({"model": id, "classes": m.labels()})))
    })
    .await
}

pub(crate) async fn layers(
    State(state): State<Arc<AppState>>,
    q: Q<ModelQuery>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let st = state.clone();
    job(&state, move || {
        let (id, m) = model(&st, q.model.as_deref())?;
        let b = m.backbone();
        Ok(Json(json!({
            "model": id,
            "layers": b.layer_names(),
            "default": whisker::inspect::featuremap::default_layer(b),
            "cam_default": whisker::inspect::cam::default_layer(b),
        })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ClassifyQuery {
    model: Option<String>,
    top: Option<usize>,
}

pub(crate) async fn classify(
    State(state): State<Arc<AppState>>,
    q: Q<ClassifyQuery>,
    req: Request,
) -> ApiResult<Json<Value>> {
    with_image(state, q, req, |q, img, m| {
        let (_, _, probs) = attack::classify_u8(m, &img)?;
        let k = q.top.unwrap_or(5);
        if k == 0 || k > probs.len() {
            return Err(ApiError::bad(format!(
                "top must be from 1 to {} (the model's classes)",
                probs.len()
            )));
        }
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let labels = m.labels();
        let top: Vec<Value> = order[..k]
            .iter()
            .map(|&i| json!({"index": i, "label": labels[i], "prob": probs[i]}))
            .collect();
        Ok(json!({
            "backbone": m.backbone().spec.name,
            "weights_sha256": m.weights_sha256(),
            "tta": false,
            "results": [{"image": "upload", "top": top}],
        }))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct CamQuery {
    model: Option<String>,
    class: Option<String>,
    layer: Option<String>,
    method: Option<String>,
    alpha: Option<f32>,
}

pub(crate) async fn cam(
    State(state): State<Arc<AppState>>,
    q: Q<CamQuery>,
    req: Request,
) -> ApiResult<Json<Value>> {
    with_image(state, q, req, |q, img, m| {
        let method = match q.method.as_deref() {
            None | Some("") => Default::default(),
            Some(s) => s.parse()?,
        };
        let alpha = q.alpha.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&alpha) {
            return Err(ApiError::bad("alpha must be in [0, 1]"));
        }
        let opts = CamOptions {
            method,
            class: class_of(m, q.class.as_deref())?,
            layer: q.layer.filter(|l| !l.is_empty()),
        };
        let (c, o) =
            crate::inspect::cam::explain(m, &img, &opts, alpha).map_err(|e| match e
                .downcast::<whisker::Error>()
            {
                Ok(w) => ApiError::from(w),
                Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
            })?;
        let mut v = crate::inspect::cam::cam_json(m, &c, o.peak);
        v["image"] = json!("upload");
        v["overlay"] = json!(png_uri(&o.image)?);
        Ok(v)
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct FeatureQuery {
    model: Option<String>,
    layer: Option<String>,
    channels: Option<usize>,
}

pub(crate) async fn featuremap(
    State(state): State<Arc<AppState>>,
    q: Q<FeatureQuery>,
    req: Request,
) -> ApiResult<Json<Value>> {
    with_image(state, q, req, |q, img, m| {
        let b = m.backbone();
        let layer = q
            .layer
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| whisker::inspect::featuremap::default_layer(b));
        let channels = q.channels.unwrap_or(16).clamp(1, 256);
        let crop = b.preprocess().apply(&img);
        let (fig, acts, shown) = crate::inspect::featuremap::figure(b, &crop, &layer, channels)?;
        Ok(json!({
            "layer": layer,
            "channels": acts.0,
            "h": acts.1,
            "w": acts.2,
            "shown": shown,
            "image": png_uri(&fig)?,
        }))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct AttackQuery {
    model: Option<String>,
    /// Target class; absent: untargeted.
    target: Option<String>,
    eps: Option<String>,
    steps: Option<usize>,
    method: Option<String>,
    norm: Option<String>,
    alpha: Option<String>,
    seed: Option<u64>,
}

pub(crate) async fn attack(
    State(state): State<Arc<AppState>>,
    q: Q<AttackQuery>,
    req: Request,
) -> ApiResult<Json<Value>> {
    with_image(state, q, req, |q, img, m| {
        let eps = crate::args::epsilon(q.eps.as_deref().unwrap_or("4/255"))
            .map_err(|e| ApiError::bad(format!("eps: {e}")))?;
        let method: Method = q.method.as_deref().unwrap_or("pgd").parse()?;
        let norm: Option<Norm> = q.norm.as_deref().map(str::parse).transpose()?;
        let alpha = q
            .alpha
            .as_deref()
            .map(crate::args::epsilon)
            .transpose()
            .map_err(|e| ApiError::bad(format!("alpha: {e}")))?;
        let cfg = AttackConfig {
            seed: q.seed.unwrap_or(0),
            ..AttackConfig::new(
                method,
                norm,
                eps,
                alpha,
                q.steps,
                class_of(m, q.target.as_deref())?,
            )?
        };
        let r = attack::attack(m, &img, &cfg)?;
        let labels = m.labels();
        let mut v = serde_json::to_value(&r)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        v["original_label"] = json!(labels[r.original_top1]);
        v["adversarial_label"] = json!(labels[r.adversarial_top1]);
        v["settings"] = serde_json::to_value(&cfg).unwrap_or_default();
        v["adversarial"] = json!(png_uri(&r.adversarial)?);
        v["perturbation"] = json!(png_uri(&attack::diff_image(&img, &r.adversarial, 10.0))?);
        Ok(v)
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct DreamQuery {
    model: Option<String>,
    class: Option<String>,
    steps: Option<usize>,
    seed: Option<u64>,
}

/// Start a dream: 202 with its id; progress at `/api/dream/{id}/events` (server-sent
/// events), the state at `/api/dream/{id}`, `DELETE` to cancel.
pub(crate) async fn dream_start(
    State(state): State<Arc<AppState>>,
    q: Q<DreamQuery>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let steps = q.steps.unwrap_or(100);
    if steps == 0 || steps > 2000 {
        return Err(ApiError::bad("steps must be from 1 to 2000"));
    }
    let class_name = q
        .class
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::bad("give the class to dream of: ?class=…"))?;
    let admit = state
        .admit
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy())?;
    let id = state.next_dream.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = tokio::sync::watch::channel(DreamStatus {
        step: 0,
        steps,
        state: "queued",
        result: None,
        error: None,
    });
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let mut d = state.dreams.lock().unwrap();
        // keep every dream that is queued or running (at most --workers + --queue of them:
        // each holds an admission), and the 16 newest finished ones
        let finished =
            |j: &DreamJob| matches!(j.status.borrow().state, "done" | "cancelled" | "error");
        let mut done: Vec<u64> = d
            .iter()
            .filter(|(_, j)| finished(j))
            .map(|(k, _)| *k)
            .collect();
        done.sort_unstable();
        let excess = done.len().saturating_sub(15);
        for k in &done[..excess] {
            d.remove(k);
        }
        d.insert(
            id,
            DreamJob {
                status: rx,
                cancel: cancel.clone(),
            },
        );
    }
    let st = state.clone();
    tokio::spawn(async move {
        let Ok(work) = st.work.clone().acquire_owned().await else {
            return;
        };
        let st2 = st.clone();
        let tx2 = tx.clone();
        let r = tokio::task::spawn_blocking(move || {
            let _held = (admit, work);
            let (_, m) = model(&st2, q.model.as_deref())?;
            let class = m.class_index(&class_name)?;
            let cfg = whisker::inspect::dream::DreamConfig {
                class,
                steps,
                seed: q.seed.unwrap_or(0),
                ..Default::default()
            };
            let progress = |step: usize, steps: usize| {
                tx2.send_modify(|s| {
                    s.step = step;
                    s.steps = steps;
                    s.state = "running";
                });
            };
            let r =
                whisker::inspect::dream::dream_cancellable(m.as_ref(), &cfg, &progress, &cancel)?;
            let labels = m.labels();
            Ok::<Value, ApiError>(json!({
                "class": r.class,
                "label": labels[r.class],
                "probability": r.probability,
                "top1": r.top1,
                "top1_label": labels[r.top1],
                "history": r.history,
                "image": png_uri(&r.image)?,
            }))
        })
        .await;
        let end = match r {
            Ok(Ok(v)) => (Some(v), None, "done"),
            Ok(Err(ApiError(StatusCode::CONFLICT, _))) => (None, None, "cancelled"),
            Ok(Err(ApiError(_, e))) => (None, Some(e), "error"),
            Err(e) => (None, Some(e.to_string()), "error"),
        };
        tx.send_modify(|s| {
            s.result = end.0;
            s.error = end.1;
            s.state = end.2;
        });
    });
    let body = json!({
        "id": id,
        "events": format!("/api/dream/{id}/events"),
        "status": format!("/api/dream/{id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn dream_job(state: &AppState, id: u64) -> ApiResult<tokio::sync::watch::Receiver<DreamStatus>> {
    state
        .dreams
        .lock()
        .unwrap()
        .get(&id)
        .map(|j| j.status.clone())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no dream {id}")))
}

pub(crate) async fn dream_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<DreamStatus>> {
    Ok(Json(dream_job(&state, id)?.borrow().clone()))
}

pub(crate) async fn dream_cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    let d = state.dreams.lock().unwrap();
    let j = d
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no dream {id}")))?;
    j.cancel.store(true, Ordering::Relaxed);
    Ok(Json(json!({"id": id, "cancelling": true})))
}

pub(crate) async fn dream_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<u64>,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let rx = dream_job(&state, id)?;
    // one event per change of state, the current one first; the stream ends after the last
    let stream =
        futures_util::stream::unfold((rx, true, false), |(mut rx, first, ended)| async move {
            if ended {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let s = rx.borrow_and_update().clone();
            let done = matches!(s.state, "done" | "cancelled" | "error");
            let ev = Event::default()
                .event(if done { s.state } else { "progress" })
                .json_data(&s)
                .unwrap_or_default();
            Some((Ok(ev), (rx, false, done)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
