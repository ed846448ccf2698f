//! The HTTP listener: `/healthz`, Prometheus `/metrics`, and the API under `/api/v1`:
//! `GET /api/v1/members/{id}/score`, `GET /api/v1/engagement/summary`,
//! `GET /api/v1/members/{id}/outreach`, `GET /api/v1/deliveries`, and the ledger:
//! `GET /api/v1/ledger/checkpoint` (the latest signed checkpoint),
//! `GET /api/v1/ledger/entries/{index}` (an entry, its device envelope and its inclusion
//! proof in the latest checkpoint's tree) and `GET /api/v1/ledger/consistency?from=N&to=M`
//! (a consistency proof). Every API route requires `Authorization: Bearer <token>` (see
//! [`crate::tokens`]); the caller's [`Principal`] is in the request's extensions. The
//! members' one-click `GET /api/v1/optout?token=...` is never behind tokens: the signed
//! token is the authority. Errors are JSON `{"error": code, "message": ...}`. Handlers read
//! the store on their own read-only connections, off the async executor.

use crate::metrics::Metrics;
use crate::tokens::Principal;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The data directory (the API opens read connections to the store there).
    pub data_dir: std::path::PathBuf,
    /// The key that checks opt-out tokens (`None`: the opt-out link answers 404).
    pub optout: Option<crate::outreach::optout::OptOutKey>,
    /// The clock that stamps opt-outs.
    pub clock: Arc<dyn rollcall_shared::Clock>,
}

impl AppState {
    /// State with the system clock and no opt-out key (the opt-out link answers 404).
    pub fn new(metrics: Arc<Metrics>, data_dir: std::path::PathBuf) -> Self {
        Self {
            metrics,
            data_dir,
            optout: None,
            clock: Arc::new(rollcall_shared::SystemClock),
        }
    }
}

/// An API error, rendered as JSON with its status code.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/v1/members/{id}/score", get(member_score))
        .route("/api/v1/engagement/summary", get(engagement_summary))
        .route("/api/v1/members/{id}/outreach", get(member_outreach))
        .route("/api/v1/deliveries", get(deliveries))
        .route("/api/v1/ledger/checkpoint", get(ledger_checkpoint))
        .route("/api/v1/ledger/entries/{index}", get(ledger_entry))
        .route("/api/v1/ledger/consistency", get(ledger_consistency))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .route("/api/v1/optout", get(optout))
        .fallback(not_found)
        .with_state(state)
}

/// Lets a request through only with a valid bearer token; puts its [`Principal`] in the
/// request's extensions.
async fn require_token(
    State(s): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let unauthorized = |message: &str| ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        message: message.to_owned(),
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| {
            unauthorized("send Authorization: Bearer <token> (rollcall-cloud tokens create)")
        })?;
    let principal = with_store(&s, move |conn| {
        crate::tokens::authenticate(conn, &presented).map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| unauthorized("unknown or revoked token"))?;
    req.extensions_mut().insert::<Principal>(principal);
    Ok(next.run(req).await)
}

async fn healthz(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "mqtt_connected": s.metrics.mqtt_connected.get() == 1,
    }))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

impl ApiError {
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the request could not be completed".into(),
        }
    }
    fn not_found(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message,
        }
    }
}

/// Runs `f` on a read connection to the store, off the executor.
async fn with_store<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = s.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_reader(&dir).map_err(ApiError::internal)?;
        f(&conn)
    })
    .await
    .map_err(ApiError::internal)?
}

async fn member_score(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let member = rollcall_shared::MemberId::parse(&id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_member_id",
        message: e.to_string(),
    })?;
    with_store(&s, move |conn| {
        let exists = conn
            .query_row(
                "SELECT 1 FROM members WHERE id = ?1",
                [member.as_str()],
                |_| Ok(()),
            )
            .map(|_| true)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(false),
                e => Err(ApiError::internal(e)),
            })?;
        if !exists {
            return Err(ApiError::not_found(
                "no_such_member",
                format!("no member with id {:?}", member.as_str()),
            ));
        }
        let score = crate::scoring::persist::score_view(conn, member.as_str())
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::not_found("not_scored", "the member has not been scored yet".into())
            })?;
        let transitions = crate::scoring::persist::transitions(
            conn,
            member.as_str(),
            crate::registry::RECENT_TRANSITIONS,
        )
        .map_err(ApiError::internal)?;
        let mut v = serde_json::to_value(score).map_err(ApiError::internal)?;
        v["transitions"] = serde_json::to_value(transitions).map_err(ApiError::internal)?;
        Ok(Json(v))
    })
    .await
}

/// Query of `GET /api/v1/engagement/summary`.
#[derive(Debug, serde::Deserialize)]
struct SummaryQuery {
    /// Days of history (default 90, at most 3660).
    days: Option<u32>,
}

async fn engagement_summary(
    State(s): State<AppState>,
    Query(q): Query<SummaryQuery>,
) -> Result<Json<crate::scoring::persist::EngagementSummary>, ApiError> {
    let days = q.days.unwrap_or(90).clamp(1, 3660);
    with_store(&s, move |conn| {
        crate::scoring::persist::engagement_summary(conn, days)
            .map(Json)
            .map_err(ApiError::internal)
    })
    .await
}

async fn member_outreach(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<crate::outreach::view::OutreachView>>, ApiError> {
    let member = rollcall_shared::MemberId::parse(&id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_member_id",
        message: e.to_string(),
    })?;
    with_store(&s, move |conn| {
        crate::outreach::view::list(conn, Some(member.as_str()), 500)
            .map(Json)
            .map_err(ApiError::internal)
    })
    .await
}

/// Query of `GET /api/v1/deliveries`.
#[derive(Debug, serde::Deserialize)]
struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<u32>,
}

async fn deliveries(
    State(s): State<AppState>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<crate::delivery::DeliveryView>>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(crate::delivery::DeliveryStatus::parse)
        .transpose()
        .map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_status",
            message: e.to_string(),
        })?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    with_store(&s, move |conn| {
        crate::delivery::list(conn, status, limit)
            .map(Json)
            .map_err(ApiError::internal)
    })
    .await
}

/// Query of `GET /api/v1/optout`.
#[derive(Debug, serde::Deserialize)]
struct OptOutQuery {
    token: String,
}

async fn optout(
    State(s): State<AppState>,
    Query(q): Query<OptOutQuery>,
) -> Result<axum::response::Html<String>, ApiError> {
    let Some(key) = s.optout.clone() else {
        return Err(ApiError::not_found("not_found", "no such route".into()));
    };
    let Some(o) = key.verify(&q.token) else {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_token",
            message: "this opt-out link is not valid".into(),
        });
    };
    let dir = s.data_dir.clone();
    let now = s.clock.now();
    let rec = o.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_writer(&dir).map_err(ApiError::internal)?;
        crate::outreach::optout::record(&conn, &rec, "link", now).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(member_id = %o.member_id, channel = %o.channel, category = %o.category, "Member opted out");
    let what = if o.channel == "*" {
        "any channel".to_owned()
    } else {
        format!("{} messages", o.channel)
    };
    Ok(axum::response::Html(format!(
        "<!doctype html><meta charset=utf-8><title>Unsubscribed</title>\
         <p>You will no longer receive {} messages from us by {what}. Messages about your orders still reach you.</p>",
        o.category
    )))
}

async fn ledger_checkpoint(
    State(s): State<AppState>,
) -> Result<Json<crate::ledger::CheckpointView>, ApiError> {
    with_store(&s, |conn| {
        crate::ledger::latest_checkpoint(conn)
            .map_err(ApiError::internal)?
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found("empty_ledger", "the ledger has no entries yet".into())
            })
    })
    .await
}

async fn ledger_entry(
    State(s): State<AppState>,
    Path(index): Path<String>,
) -> Result<Json<crate::ledger::EntryView>, ApiError> {
    let index: u64 = index.parse().map_err(|_| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_index",
        message: format!("{index:?} is not an entry index"),
    })?;
    with_store(&s, move |conn| {
        crate::ledger::entry_with_proof(conn, index)
            .map_err(ApiError::internal)?
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found("no_such_entry", format!("the ledger has no entry {index}"))
            })
    })
    .await
}

/// Query of `GET /api/v1/ledger/consistency`.
#[derive(Debug, serde::Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn ledger_consistency(
    State(s): State<AppState>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<crate::ledger::ConsistencyView>, ApiError> {
    with_store(&s, move |conn| {
        match crate::ledger::consistency(conn, q.from, q.to) {
            Ok(v) => Ok(Json(v)),
            Err(crate::ledger::LedgerError::Proof(e)) => Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "bad_range",
                message: e.to_string(),
            }),
            Err(e) => Err(ApiError::internal(e)),
        }
    })
    .await
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route".into(),
    }
}
