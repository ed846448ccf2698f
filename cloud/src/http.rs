//! The HTTP listener: `/healthz`, Prometheus `/metrics`, and the API:
//! `GET /api/v1/members/{id}/score`, `GET /api/v1/engagement/summary`, and the ledger:
//! `GET /api/v1/ledger/checkpoint` (the latest signed checkpoint),
//! `GET /api/v1/ledger/entries/{index}` (an entry, its device envelope and its inclusion
//! proof in the latest checkpoint's tree) and `GET /api/v1/ledger/consistency?from=N&to=M`
//! (a consistency proof) — not yet behind tokens. Errors are JSON `{"error": code, "message": ...}`. Handlers read the store on
//! their own read-only connections, off the async executor.

use crate::metrics::Metrics;
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
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/members/{id}/score", get(member_score))
        .route("/api/v1/engagement/summary", get(engagement_summary))
        .route("/api/v1/ledger/checkpoint", get(ledger_checkpoint))
        .route("/api/v1/ledger/entries/{index}", get(ledger_entry))
        .route("/api/v1/ledger/consistency", get(ledger_consistency))
        .fallback(not_found)
        .with_state(state)
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
