//! The HTTP listener: `/healthz`, Prometheus `/metrics`, the JSON API under `/api/v1`
//! (routes in [`api_routes`], documented in `docs/openapi.json`), the web console under
//! `/console` ([`crate::console`]) and, when enabled, the built-in webhook sink.
//!
//! Every API route requires `Authorization: Bearer <token>` (see [`crate::tokens`]); the
//! caller's [`Principal`] is in the request's extensions and each handler checks its role
//! (`403 forbidden` otherwise). Two routes authenticate differently: the members' one-click
//! `GET`/`POST /api/v1/optout?token=...` (the signed token is the authority) and the telephony
//! webhook (the provider's signature; see [`crate::telephony`]). Errors are JSON
//! `{"error": code, "message": ...}`. Handlers read the store off the async executor, on
//! the fixed pool of read connections in [`crate::readers`].

use crate::config::CloudConfig;
use crate::metrics::Metrics;
use crate::tokens::{Principal, Role};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
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
    /// The clock that stamps opt-outs, audit rows and calls, and dates greetings.
    pub clock: Arc<dyn rollcall_shared::Clock>,
    /// The configuration (registry region, time zones, telephony, console, webhooks).
    pub cfg: Arc<CloudConfig>,
    /// Builds greetings.
    pub greeter: Arc<crate::greeting::Greeter>,
    /// The audit log of member lookups.
    pub audit: crate::audit::AuditLog,
    /// The console's page templates.
    pub console: Arc<crate::console::Pages>,
    /// The store readers the handlers' queries run on.
    pub readers: crate::readers::ReaderPool,
    /// Bearer tokens checked in the last second.
    pub tokens: Arc<crate::tokens::TokenCache>,
}

/// Why the HTTP state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The greeting templates did not load.
    #[error(transparent)]
    Greeting(#[from] crate::greeting::GreetingError),
    /// The store, the audit log or the store readers could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl AppState {
    /// State for `cfg` with the system clock and no opt-out key (the opt-out link
    /// answers 404). Starts the audit writer (creating the store in `cfg.data_dir` if need
    /// be) and the store readers.
    pub fn new(metrics: Arc<Metrics>, cfg: CloudConfig) -> Result<Self, StateError> {
        let audit = crate::audit::AuditLog::start(
            &cfg.data_dir,
            cfg.http.audit_sync,
            metrics.audit_commit_seconds.clone(),
        )?;
        let readers = crate::readers::ReaderPool::start(
            &cfg.data_dir,
            crate::readers::ReaderPool::default_size(),
        )?;
        Ok(Self {
            metrics,
            data_dir: cfg.data_dir.clone(),
            optout: None,
            clock: Arc::new(rollcall_shared::SystemClock),
            greeter: Arc::new(crate::greeting::Greeter::new(&cfg)?),
            audit,
            console: Arc::new(crate::console::Pages::new()),
            readers,
            tokens: Arc::default(),
            cfg: Arc::new(cfg),
        })
    }

    /// The business's time zone, for members without one.
    pub fn business_tz(&self) -> chrono_tz::Tz {
        self.cfg.outreach.business_tz()
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

/// Every bearer-token API route: method, path (axum syntax) and handler. The router is
/// built from this list and a test checks it against `docs/openapi.json`.
pub fn api_routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    use crate::api;
    use axum::routing::{delete, post};
    vec![
        ("GET", "/api/v1/lookup", get(api::lookup)),
        ("GET", "/api/v1/members/{id}", get(api::member)),
        ("DELETE", "/api/v1/members/{id}", delete(api::erase)),
        ("GET", "/api/v1/members/{id}/greeting", get(api::greeting)),
        ("GET", "/api/v1/members/{id}/export", get(api::export)),
        ("GET", "/api/v1/members/{id}/score", get(member_score)),
        ("GET", "/api/v1/members/{id}/outreach", get(member_outreach)),
        (
            "GET",
            "/api/v1/engagement/summary",
            get(api::engagement_summary),
        ),
        (
            "GET",
            "/api/v1/engagement/members",
            get(api::engagement_members),
        ),
        (
            "GET",
            "/api/v1/engagement/export.csv",
            get(api::engagement_export),
        ),
        ("GET", "/api/v1/calls", get(api::calls)),
        ("GET", "/api/v1/audit", get(api::audit_log)),
        ("GET", "/api/v1/deliveries", get(deliveries)),
        ("GET", "/api/v1/ledger/checkpoint", get(ledger_checkpoint)),
        ("GET", "/api/v1/ledger/entries/{index}", get(ledger_entry)),
        ("GET", "/api/v1/ledger/consistency", get(ledger_consistency)),
        (
            "POST",
            "/api/v1/telephony/incoming",
            post(api::telephony_incoming),
        ),
        ("GET", "/api/v1/optout", get(optout_page)),
        ("POST", "/api/v1/optout", post(optout)),
    ]
}

/// Routes with their own authentication (the provider's signature; the opt-out link's
/// signed token).
pub const SELF_AUTHENTICATED: &[&str] = &["/api/v1/telephony/incoming", "/api/v1/optout"];

/// The router.
pub fn router(state: AppState) -> Router {
    let mut api = Router::new();
    let mut open = Router::new();
    for (_, path, handler) in api_routes() {
        if SELF_AUTHENTICATED.contains(&path) {
            open = open.route(path, handler);
        } else {
            api = api.route(path, handler);
        }
    }
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    ));
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(open);
    if state.cfg.console.enabled {
        app = app.merge(crate::console::router());
    }
    if state.cfg.console.webhook_sink {
        app = app.route(
            "/sink/{webhook}",
            axum::routing::post(crate::console::sink_receive),
        );
    }
    app.fallback(not_found)
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Most a framework rejection's text can be; axum's are one line.
const REJECTION_TEXT_LIMIT: usize = 4096;

/// Gives every error under `/api/` a JSON body with a reason, like [`ApiError`]'s. The
/// handlers' own errors already are; this catches what axum answers before a handler
/// runs: an unparseable query string, path or form, a wrong content type (plain text),
/// and a method the route does not serve (405, empty; its `Allow` header is kept).
/// Responses that chose a type of their own (the TwiML, HTML pages) pass unchanged.
async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let api = path.starts_with("/api/");
    let res = next.run(req).await;
    let status = res.status();
    if !api || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let plain = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("text/plain"));
    if !plain {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, REJECTION_TEXT_LIMIT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        s if s.is_server_error() => "internal",
        _ => "rejected",
    };
    let message = if !text.is_empty() {
        text
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| allowed_methods(&path).join(", "));
        format!("this route does not serve that method (it serves {allow})")
    } else {
        status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned()
    };
    let mut out = ApiError {
        status,
        code,
        message,
    }
    .into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

/// The methods the API serves on `path`, from [`api_routes`] (`{param}` segments match
/// any one segment).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let matches = |pattern: &str| {
        let p: Vec<&str> = pattern.split('/').collect();
        p.len() == segments.len()
            && p.iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}')))
    };
    let mut methods: Vec<&'static str> = api_routes()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .filter(|(_, p)| matches(p))
        .map(|(m, _)| m)
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// Refuses the request unless `principal` has one of `roles`.
pub fn require_role(principal: &Principal, roles: &[Role]) -> Result<(), ApiError> {
    if roles.contains(&principal.role) {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: format!(
                "the {} role may not do this (needs {})",
                principal.role,
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, as
/// RFC 9110 has it); `None` for another scheme or an empty token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The principal behind an `Authorization: Bearer` header, if valid.
pub async fn bearer_principal(
    s: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    if let Some(p) = s.tokens.get(&presented) {
        return Ok(Some(p));
    }
    let (principal, presented) = with_store(s, move |conn| {
        let p = crate::tokens::authenticate(conn, &presented).map_err(ApiError::internal)?;
        Ok((p, presented))
    })
    .await?;
    // The token's last use is recorded off the request path, by the first request that
    // re-checked it after its cache entry expired, at most once a minute.
    if let Some(p) = principal
        .as_ref()
        .filter(|p| s.tokens.put(&presented, (*p).clone()) && s.tokens.should_touch(p.token_id))
    {
        let (state, id, now) = (s.clone(), p.token_id, s.clock.now());
        tokio::spawn(async move {
            // A failure is logged by `ApiError::internal`; the request goes on regardless.
            let _ = with_writer(&state, move |conn| {
                crate::tokens::touch(conn, id, now).map_err(ApiError::internal)
            })
            .await;
        });
    }
    Ok(principal)
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
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .is_some();
    if !bearer {
        return Err(unauthorized(
            "send Authorization: Bearer <token> (rollcall-cloud tokens create)",
        ));
    }
    let principal = bearer_principal(&s, req.headers())
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
    /// A 500 that logs the cause and tells the caller nothing about it.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API request failed");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "the request could not be completed".into(),
        }
    }
    /// A 404 with a reason.
    pub fn not_found(code: &'static str, message: String) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code,
            message,
        }
    }
    /// A 400 with a reason.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

/// Runs `f` on one of the store readers ([`AppState::readers`]), off the executor.
pub async fn with_store<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    s.readers.run(f).await.map_err(ApiError::internal)?
}

/// Runs `f` on a write connection to the store, off the executor (for the rare API
/// writes: erasure, calls, the webhook sink).
pub async fn with_writer<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let dir = s.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = crate::store::open_writer(&dir).map_err(ApiError::internal)?;
        f(&mut conn)
    })
    .await
    .map_err(ApiError::internal)?
}

async fn member_score(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let member = rollcall_shared::MemberId::parse(&id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_member_id",
        message: e.to_string(),
    })?;
    let (json, member) = with_store(&s, move |conn| {
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
        Ok((Json(v), member))
    })
    .await?;
    audit_view(&s, &p, &member, "score").await?;
    Ok(json)
}

/// Records in the audit log that `p` read part of `member`'s record (`what`), as
/// `GET /api/v1/members/{id}` does for the whole of it.
async fn audit_view(
    s: &AppState,
    p: &Principal,
    member: &rollcall_shared::MemberId,
    what: &str,
) -> Result<(), ApiError> {
    let entry = crate::audit::Entry::by(
        p,
        s.clock.now(),
        crate::audit::Action::View,
        Some(member.as_str()),
        what,
    );
    s.audit
        .record(vec![entry])
        .await
        .map_err(ApiError::internal)
}

async fn member_outreach(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Vec<crate::outreach::view::OutreachView>>, ApiError> {
    require_role(&p, &[Role::Support, Role::Admin])?;
    let member = rollcall_shared::MemberId::parse(&id).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_member_id",
        message: e.to_string(),
    })?;
    let key = member.clone();
    let list = with_store(&s, move |conn| {
        let exists: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM members WHERE id = ?1)",
                [key.as_str()],
                |r| r.get(0),
            )
            .map_err(ApiError::internal)?;
        if exists {
            crate::outreach::view::list(conn, Some(key.as_str()), 500)
                .map(Some)
                .map_err(ApiError::internal)
        } else {
            Ok(None)
        }
    })
    .await?
    .ok_or_else(|| {
        ApiError::not_found(
            "no_such_member",
            format!("no member with id {:?}", member.as_str()),
        )
    })?;
    audit_view(&s, &p, &member, "outreach").await?;
    Ok(Json(list))
}

/// Query of `GET /api/v1/deliveries`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<u32>,
}

async fn deliveries(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<crate::delivery::DeliveryView>>, ApiError> {
    require_role(&p, &[Role::Admin])?;
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

/// Query of `GET` and `POST /api/v1/optout`.
/// Lenient on purpose: mail clients and link trackers append their own parameters to the
/// links members click.
#[derive(Debug, serde::Deserialize)]
struct OptOutQuery {
    token: String,
}

/// The opt-out a link's token names, or why the link cannot be used (404 when outreach is
/// not configured, 400 for a token the cloud did not sign).
fn verified_optout(s: &AppState, token: &str) -> Result<crate::outreach::optout::OptOut, ApiError> {
    let Some(key) = s.optout.as_ref() else {
        return Err(ApiError::not_found("not_found", "no such route".into()));
    };
    // A signed token is base64url text with one dot, so it goes into the page unescaped.
    let plain = token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '='));
    key.verify(token).filter(|_| plain).ok_or_else(|| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_token",
        message: "this opt-out link is not valid".into(),
    })
}

/// What an opt-out covers, in words: "marketing messages from us by e-mail".
fn optout_scope(o: &crate::outreach::optout::OptOut) -> String {
    let by = if o.channel == "*" {
        "any channel".to_owned()
    } else {
        format!("{} messages", o.channel)
    };
    format!("{} messages from us by {by}", o.category)
}

/// `GET /api/v1/optout?token=…`: the page a member's click opens. It asks before it
/// records anything: mail scanners and link previewers fetch links nobody clicked, so a
/// GET never opts anyone out. The button POSTs to the same URL, as a mail client's
/// one-click unsubscribe does (RFC 8058).
async fn optout_page(
    State(s): State<AppState>,
    Query(q): Query<OptOutQuery>,
) -> Result<axum::response::Html<String>, ApiError> {
    let o = verified_optout(&s, &q.token)?;
    Ok(axum::response::Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>Unsubscribe</title>\
         <main><h1>Unsubscribe</h1>\
         <p>Stop {}? Messages about your orders still reach you.</p>\
         <form method=post action=\"?token={}\">\
         <input type=hidden name=List-Unsubscribe value=One-Click>\
         <button type=submit>Unsubscribe</button></form></main></html>",
        optout_scope(&o),
        q.token
    )))
}

/// `POST /api/v1/optout?token=…`: records the opt-out the token names (idempotent) and
/// answers a confirmation page. This is the URL for `List-Unsubscribe` with
/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058); the body is not read.
async fn optout(
    State(s): State<AppState>,
    Query(q): Query<OptOutQuery>,
) -> Result<axum::response::Html<String>, ApiError> {
    let o = verified_optout(&s, &q.token)?;
    let dir = s.data_dir.clone();
    let now = s.clock.now();
    let rec = o.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_writer(&dir).map_err(ApiError::internal)?;
        // A link outlives an erasure: it must not bring back a record under the old id.
        let known: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM members WHERE id = ?1)",
                [&rec.member_id],
                |r| r.get(0),
            )
            .map_err(ApiError::internal)?;
        if !known {
            return Ok(());
        }
        crate::outreach::optout::record(&conn, &rec, "link", now).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    tracing::info!(member_id = %o.member_id, channel = %o.channel, category = %o.category, "Member opted out");
    Ok(axum::response::Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>Unsubscribed</title>\
         <main><h1>Unsubscribed</h1>\
         <p>You will no longer receive {}. Messages about your orders still reach you.</p>\
         </main></html>",
        optout_scope(&o)
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

/// An entry names a member and a device: admin only (after an erasure it still names the
/// member's old id, see `docs/console.md`). Checkpoints and consistency proofs hold only
/// hashes and sizes, for every role.
async fn ledger_entry(
    State(s): State<AppState>,
    axum::Extension(p): axum::Extension<Principal>,
    Path(index): Path<String>,
) -> Result<Json<crate::ledger::EntryView>, ApiError> {
    require_role(&p, &[Role::Admin])?;
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
#[serde(deny_unknown_fields)]
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

/// The answer for a path no route serves.
pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route".into(),
    }
}
