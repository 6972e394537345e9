//! The admin and API server that `watch` runs: metrics, health, and the
//! recovery manual's REST routes, described by an OpenAPI document generated
//! from the handlers below.

mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::config::{read_secret, HttpConfig};
use crate::model::Cause;
use crate::report::events::{Observer, RecoveryFinished};
use crate::report::latest::{NotServed, ServedStatus};
use crate::restore::native::RecoverReport;
use crate::warden::{Warden, WardenError};

/// Environment variable holding the API's bearer token.
pub(crate) const API_TOKEN_ENV: &str = "BULLMQ_WARDEN_API_TOKEN";

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("config key http.listen: {0}")]
    Unsafe(String),
    #[error("API token from {origin} {reason}")]
    Token { origin: String, reason: String },
    #[error("cannot listen on http.listen {addr}: {reason}")]
    Bind { addr: String, reason: String },
}

/// The `Warden` once Redis has answered; until then the API routes answer 503.
pub(crate) type WardenSlot = Arc<std::sync::OnceLock<Arc<Warden>>>;

#[derive(Clone)]
struct AppState {
    warden: WardenSlot,
    observer: Observer,
    token: Option<Arc<str>>,
    status_requires_token: bool,
    apply_lock: Arc<Mutex<()>>,
}

/// A token shorter than this is taken for a placeholder on an address that
/// other hosts reach: real tokens come from a generator (`openssl rand -hex 32`).
const MIN_TOKEN_BYTES: usize = 16;

/// The API's bearer token, with where it came from so errors can name the
/// source without ever showing the value.
pub(crate) struct ApiToken {
    secret: String,
    origin: String,
}

impl ApiToken {
    /// Why the token looks like a placeholder, if it does.
    fn placeholder(&self) -> Option<&'static str> {
        if self.secret.to_ascii_uppercase().contains("CHANGE-ME") {
            Some("is a placeholder (it contains CHANGE-ME)")
        } else if self.secret.len() < MIN_TOKEN_BYTES {
            Some("is too short to be a real secret (fewer than 16 bytes)")
        } else {
            None
        }
    }

    pub(crate) fn into_secret(self) -> String {
        self.secret
    }
}

/// The bearer token for the API: the environment wins over the file.
pub(crate) fn api_token(config: &HttpConfig) -> Result<Option<ApiToken>, HttpError> {
    let secret = read_secret(
        API_TOKEN_ENV,
        "http.token_file",
        config.token_file.as_deref(),
    )
    .map_err(|e| HttpError::Token {
        origin: e.origin,
        reason: e.reason,
    })?;
    Ok(secret.map(|secret| ApiToken {
        secret: secret.value,
        origin: secret.origin,
    }))
}

/// Binds the listener. An API reachable from other hosts must have a real token.
pub(crate) async fn bind(
    config: &HttpConfig,
    token: Option<&ApiToken>,
) -> Result<tokio::net::TcpListener, HttpError> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .map_err(|_| HttpError::Unsafe(format!("{:?} is not an address", config.listen)))?;
    if !addr.ip().is_loopback() {
        let Some(token) = token else {
            return Err(HttpError::Unsafe(format!(
                "{addr} is reachable from other hosts and POST /api/bullmq/recover would need no token; \
                 set {API_TOKEN_ENV} or http.token_file"
            )));
        };
        if let Some(reason) = token.placeholder() {
            return Err(HttpError::Token {
                origin: token.origin.clone(),
                reason: format!(
                    "{reason}, and http.listen {addr} is reachable from other hosts; \
                     use a random one (e.g. `openssl rand -hex 32`)"
                ),
            });
        }
    }
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| HttpError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Serves until `shutdown`, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    config: HttpConfig,
    warden: WardenSlot,
    observer: Observer,
    token: Option<String>,
    apply_lock: Arc<Mutex<()>>,
    shutdown: CancellationToken,
) {
    let state = AppState {
        warden,
        observer: observer.clone(),
        token: token.map(Arc::from),
        status_requires_token: config.status_requires_token,
        apply_lock,
    };
    let app = Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/bullmq/openapi.json", get(openapi_json))
        .route("/api/bullmq/status", get(status))
        .route("/api/bullmq/recover", post(recover))
        .with_state(state);
    server::serve(listener, app, &config, observer, shutdown).await;
}

/// The routes under `/api/bullmq/`, their parameters and every answer they give.
#[derive(OpenApi)]
#[openapi(
    info(title = "bullmq-warden API"),
    paths(status, recover),
    modifiers(&BearerToken),
)]
struct ApiDoc;

/// The `bearer` scheme the routes name; a token is needed once one is
/// configured (`BULLMQ_WARDEN_API_TOKEN` or `http.token_file`).
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as `docs/openapi.json` holds it.
fn openapi_document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

/// Every error answer of the API.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    /// One line saying what went wrong.
    error: String,
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn landing() -> Html<&'static str> {
    Html(
        "<html><head><title>bullmq-warden</title></head><body><h1>bullmq-warden</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li>\
         <li><a href=\"/readyz\">/readyz</a></li><li><a href=\"/api/bullmq/status\">/api/bullmq/status</a></li>\
         <li><a href=\"/api/bullmq/openapi.json\">/api/bullmq/openapi.json</a></li>\
         </ul></body></html>",
    )
}

/// OpenMetrics when the scraper asks for it, the classic text format otherwise.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let m = state.observer.metrics();
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.encode_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            m.encode_prometheus(),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let health = state.observer.health();
    let body = serde_json::json!({
        "ready": health.ready(),
        "redis": health.redis_up.load(std::sync::atomic::Ordering::Relaxed),
        "source": health.source_up.load(std::sync::atomic::Ordering::Relaxed),
        "synced": health.synced.load(std::sync::atomic::Ordering::Relaxed),
        // Queues left unwritten for the BullMQ version that set them up.
        "unverifiedBullmq": health.withheld.lock().map(|w| w.clone()).unwrap_or_default(),
    });
    let code = if health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StatusParams {
    /// Only this queue.
    queue: Option<String>,
}

/// checkQueueStatus: every queue's job counts from the watcher's latest poll,
/// rows and drift from its latest comparison. No request reads the source or
/// the schedulers.
#[utoipa::path(
    get,
    path = "/api/bullmq/status",
    params(StatusParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The JSON of `status --json`, with its age", body = ServedStatus),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 401, description = "A token is configured and the request lacks it",
            body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "No row names the queue", body = ErrorBody),
        (status = 503, description = "Not connected to Redis yet, or nothing compared or polled yet",
            body = ErrorBody),
    )
)]
async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<StatusParams>, QueryRejection>,
) -> Response {
    if state.status_requires_token {
        if let Some(refusal) = refuse_without_token(&state, &headers) {
            return refusal;
        }
    }
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    if state.warden.get().is_none() {
        return not_connected();
    }
    let latest = state.observer.latest_status();
    match latest
        .served_after_poll(params.queue.as_deref(), Duration::from_secs(5))
        .await
    {
        Ok(status) => Json(status).into_response(),
        Err(reason @ NotServed::UnknownQueue(_)) => {
            error(StatusCode::NOT_FOUND, reason.to_string())
        }
        Err(reason) => error(StatusCode::SERVICE_UNAVAILABLE, reason.to_string()),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RecoverParams {
    /// Only plan, write nothing (`true`, `false`, `1`, `0`).
    #[param(value_type = Option<bool>)]
    dry_run: Option<String>,
    /// Only this queue.
    queue: Option<String>,
}

/// recoverTasks: brings Redis in line with the rows, serialised with the
/// watcher's own recoveries.
#[utoipa::path(
    post,
    path = "/api/bullmq/recover",
    params(RecoverParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The JSON of `recover --json`", body = RecoverReport),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 401, description = "A token is configured and the request lacks it",
            body = ErrorBody, headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 409, description = "Another writer kept the recovery lease for `lease_wait`; nothing was written",
            body = ErrorBody),
        (status = 503, description = "Redis or the source database cannot be reached",
            body = ErrorBody),
    )
)]
async fn recover(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<RecoverParams>, QueryRejection>,
) -> Response {
    if let Some(refusal) = refuse_without_token(&state, &headers) {
        return refusal;
    }
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    let dry_run = match params.dry_run.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return bad_request(&format!("dry_run must be true or false, not {other:?}"))
        }
    };
    let Some(warden) = state.warden.get() else {
        return not_connected();
    };
    let _serialised = state.apply_lock.lock().await;
    let started = std::time::Instant::now();
    let response = match warden.recover(params.queue.as_deref(), dry_run).await {
        Ok(report) => {
            if !dry_run && report.success && !report.changes.is_empty() {
                state.observer.emit(RecoveryFinished {
                    trigger: Cause::Manual,
                    report: &report,
                    duration: started.elapsed(),
                    rows: "database",
                });
            }
            Json(report).into_response()
        }
        // Another writer holds the lease: a conflict to retry, not an outage.
        Err(error @ WardenError::LeaseBusy(_)) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": error.to_string()})),
        )
            .into_response(),
        Err(error) => unavailable(&error),
    };
    crate::memory::release_after_comparison();
    response
}

/// 401 unless the request carries the configured token (or none is configured).
fn refuse_without_token(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let expected = state.token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(ErrorBody {
                error: "a valid bearer token is required".into(),
            }),
        )
            .into_response(),
    )
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn not_connected() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not connected to Redis yet",
    )
}

fn unavailable(failure: &WardenError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, failure.to_string())
}

/// Compares without an early exit, so response times do not reveal how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, expected) in b.iter().enumerate() {
        let given = a.get(i).copied().unwrap_or(0);
        difference |= usize::from(given ^ expected);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed copy is what the code generates, so it is never edited by hand.
    #[test]
    fn committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let generated = openapi_document();
        if std::env::var_os("BULLMQ_WARDEN_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is stale; regenerate it with \
             `BULLMQ_WARDEN_WRITE_OPENAPI=1 cargo test --lib committed_openapi_document_is_current`"
        );
    }

    #[test]
    fn tokens_compare_fully() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-longer", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
