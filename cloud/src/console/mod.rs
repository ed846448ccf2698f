//! The web console, server-rendered from the same binary (templates compiled in, no
//! external resources, so it works offline): sign-in with an API token, search, the
//! member card (greeting, state and reasons, 90-day usage chart, devices, orders,
//! outreach), the incoming-call screen-pop, the engagement dashboard and, when enabled,
//! the built-in webhook sink.
//!
//! Sign-in stores the token in an `HttpOnly`, `SameSite=Strict` cookie; every page checks
//! it like the API checks a bearer token, so roles apply the same way (an analyst sees
//! pseudonymous ids, never names or contact details). Pages that show a member write
//! the audit log (`view`), searches too (`search`).

pub mod chart;

use crate::api::LookupParams;
use crate::audit::{Action, Entry};
use crate::http::{with_store, with_writer, ApiError, AppState};
use crate::tokens::Principal;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const COOKIE: &str = "rollcall_session";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("search.html", include_str!("templates/search.html")),
    (
        "member_card.html",
        include_str!("templates/member_card.html"),
    ),
    ("member.html", include_str!("templates/member.html")),
    ("calls.html", include_str!("templates/calls.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("sink.html", include_str!("templates/sink.html")),
];

const CSS: &str = include_str!("templates/console.css");

/// The compiled page templates (HTML auto-escaped).
pub struct Pages {
    env: Environment<'static>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pages")
    }
}

impl Default for Pages {
    fn default() -> Self {
        Self::new()
    }
}

impl Pages {
    /// Compiles the built-in templates (a broken one is a build defect, caught by tests).
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        for (name, src) in TEMPLATES {
            env.add_template(name, src)
                .unwrap_or_else(|e| panic!("console template {name}: {e:#}"));
        }
        Self { env }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<Html<String>, ApiError> {
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .map(Html)
            .map_err(|e| ApiError::internal(format!("console template {name}: {e:#}")))
    }
}

/// The console's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(home))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/search", get(search))
        .route("/console/members/{id}", get(member))
        .route("/console/calls", get(calls))
        .route("/console/calls/latest.json", get(latest_call))
        .route("/console/dashboard", get(dashboard))
        .route("/console/export.csv", get(export_csv))
        .route("/console/sink", get(sink_page))
        .route("/console/static/console.css", get(css))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The signed-in principal, or a redirect to the sign-in page that comes back to `here`.
async fn session(s: &AppState, headers: &HeaderMap, here: &str) -> Result<Principal, Response> {
    let redirect =
        || Redirect::to(&format!("/console/login?next={}", url_encode(here))).into_response();
    let Some(token) = cookie_token(headers) else {
        return Err(redirect());
    };
    let t = token.clone();
    match with_store(s, move |conn| {
        crate::tokens::authenticate(conn, &t).map_err(ApiError::internal)
    })
    .await
    {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(redirect()),
        Err(e) => Err(e.into_response()),
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Only same-site relative paths are followed after sign-in.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/console") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/console/search"
    }
}

fn base_ctx(s: &AppState, p: Option<&Principal>, section: &str) -> minijinja::Value {
    context! {
        principal => p.map(|p| context! { name => p.name.clone(), role => p.role.as_str() }),
        section => section,
        sink => s.cfg.console.webhook_sink,
    }
}

fn merge(a: minijinja::Value, b: minijinja::Value) -> minijinja::Value {
    context! { ..b, ..a }
}

async fn home(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match session(&s, &headers, "/console/search").await {
        Ok(_) => Redirect::to("/console/search").into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn login_form(State(s): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    let next = safe_next(q.next.as_deref().unwrap_or("/console/search")).to_owned();
    s.console
        .render(
            "login.html",
            merge(base_ctx(&s, None, "login"), context! { next => next }),
        )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

async fn login(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused").into_response();
    }
    let token = f.token.trim().to_owned();
    let t = token.clone();
    let principal = with_store(&s, move |conn| {
        crate::tokens::authenticate(conn, &t).map_err(ApiError::internal)
    })
    .await;
    match principal {
        Ok(Some(p)) => {
            tracing::info!(token = %p.name, role = %p.role, "Console sign-in");
            let cookie = format!(
                "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                s.cfg.console.session_hours as u64 * 3600
            );
            (
                [(header::SET_COOKIE, cookie)],
                Redirect::to(safe_next(&f.next)),
            )
                .into_response()
        }
        Ok(None) => {
            let page = s.console.render(
                "login.html",
                merge(
                    base_ctx(&s, None, "login"),
                    context! { next => safe_next(&f.next), error => "That token is unknown or revoked." },
                ),
            );
            (StatusCode::UNAUTHORIZED, page).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site sign-out refused").into_response();
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/console/login"),
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

async fn search(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Response {
    let text = q.q.unwrap_or_default();
    let here = format!("/console/search?q={}", url_encode(&text));
    let p = match session(&s, &headers, &here).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut ctx = context! { q => text.clone(), hits => Vec::<()>::new() };
    if !text.trim().is_empty() {
        let params = LookupParams {
            q: Some(text.clone()),
            ..Default::default()
        };
        let found = match params.queries(&s.cfg.registry.default_region) {
            Ok(queries) => crate::api::search(&s, &p, queries).await,
            Err(e) => Err(e),
        };
        match found {
            Err(e) if e.status.is_server_error() => return e.into_response(),
            Err(e) => ctx = context! { q => text.clone(), error => e.message },
            Ok(hits) => {
                if hits.len() == 1 {
                    return Redirect::to(&format!("/console/members/{}", hits[0].id))
                        .into_response();
                }
                let mut hits = serde_json::to_value(hits).unwrap_or_default();
                if !p.role.sees_contact_details() {
                    crate::profile::redact_personal(&mut hits);
                }
                ctx = context! { q => text.clone(), hits => hits };
            }
        }
    }
    s.console
        .render("search.html", merge(base_ctx(&s, Some(&p), "search"), ctx))
        .into_response()
}

/// The member card's context: the record (redacted for analysts), greeting, chart.
async fn card_ctx(
    s: &AppState,
    p: &Principal,
    id: &str,
    why: Action,
    detail: String,
) -> Result<Option<minijinja::Value>, ApiError> {
    let id = rollcall_shared::MemberId::parse(id)
        .map_err(|e| ApiError::bad_request("bad_member_id", e.to_string()))?;
    let (tz, now) = (s.business_tz(), s.clock.now());
    let greeter = s.greeter.clone();
    let staff = p.role.sees_contact_details();
    let key = id.clone();
    let found = with_store(s, move |conn| {
        let Some(d) = crate::profile::detail(conn, &key, tz, now).map_err(ApiError::internal)?
        else {
            return Ok(None);
        };
        let g = if staff && !d.erased {
            greeter
                .greet(conn, key.as_str(), now)
                .map_err(ApiError::internal)?
        } else {
            None
        };
        Ok(Some((d, g)))
    })
    .await?;
    let Some((d, g)) = found else {
        return Ok(None);
    };
    s.audit
        .record(vec![Entry::by(p, now, why, Some(id.as_str()), detail)])
        .await
        .map_err(ApiError::internal)?;
    let chart = chart::usage_chart(&d.history);
    let colours: Vec<&str> = (0..d.history.kinds.len()).map(chart::kind_colour).collect();
    let mut m = serde_json::to_value(&d).map_err(ApiError::internal)?;
    if !staff {
        crate::profile::redact_personal(&mut m);
    }
    Ok(Some(context! {
        m => m,
        greeting => g,
        usage_chart => chart,
        kind_colours => colours,
    }))
}

async fn member(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let p = match session(
        &s,
        &headers,
        &format!("/console/members/{}", url_encode(&id)),
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return r,
    };
    match card_ctx(&s, &p, &id, Action::View, "console".into()).await {
        Ok(Some(ctx)) => s
            .console
            .render("member.html", merge(base_ctx(&s, Some(&p), "search"), ctx))
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            s.console.render(
                "search.html",
                merge(
                    base_ctx(&s, Some(&p), "search"),
                    context! { q => id, error => "No member with that id." },
                ),
            ),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn calls(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let p = match session(&s, &headers, "/console/calls").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !p.role.sees_contact_details() {
        return ApiError {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: "incoming calls are for support staff".into(),
        }
        .into_response();
    }
    let latest = match with_store(&s, |conn| {
        crate::telephony::recent_calls(conn, None, 1).map_err(ApiError::internal)
    })
    .await
    {
        Ok(mut c) => c.pop(),
        Err(e) => return e.into_response(),
    };
    let mut ctx = context! { call => latest.clone() };
    if let Some(c) = &latest {
        if let Some(m) = &c.member_id {
            match card_ctx(&s, &p, m, Action::Call, format!("call {}", c.call_sid)).await {
                Ok(Some(card)) => ctx = merge(ctx, card),
                Ok(None) => {}
                Err(e) => return e.into_response(),
            }
        }
    }
    s.console
        .render("calls.html", merge(base_ctx(&s, Some(&p), "calls"), ctx))
        .into_response()
}

#[derive(Debug, Serialize)]
struct Latest {
    id: i64,
}

async fn latest_call(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let p = match session(&s, &headers, "/console/calls").await {
        Ok(p) => p,
        Err(_) => return StatusCode::UNAUTHORIZED.into_response(),
    };
    if !p.role.sees_contact_details() {
        return StatusCode::FORBIDDEN.into_response();
    }
    match with_store(&s, |conn| {
        crate::telephony::recent_calls(conn, None, 1).map_err(ApiError::internal)
    })
    .await
    {
        Ok(c) => axum::Json(Latest {
            id: c.first().map_or(0, |c| c.id),
        })
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let p = match session(&s, &headers, "/console/dashboard").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let today = s.clock.now().date_naive();
    let names = p.role.sees_contact_details();
    let data = with_store(&s, move |conn| {
        let to = crate::scoring::persist::last_run_as_of(conn)
            .map_err(ApiError::internal)?
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.date_naive())
            .unwrap_or(today);
        let summary = crate::engagement::summary(conn, to - chrono::Duration::days(89), to)
            .map_err(ApiError::internal)?;
        let lapsing = crate::engagement::members(
            conn,
            Some(crate::scoring::state::State::Lapsing),
            crate::engagement::Sort::Score,
            false,
            1,
            100,
            names,
        )
        .map_err(ApiError::internal)?;
        Ok((summary, lapsing))
    })
    .await;
    let (summary, lapsing) = match data {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let what = format!("dashboard lapsing list: {} names", lapsing.members.len());
    if let Err(e) = crate::api::audit_list(&s, &p, what).await {
        return e.into_response();
    }
    let series: Vec<(String, std::collections::BTreeMap<String, u64>)> = summary
        .by_day
        .iter()
        .filter(|d| !d.counts.is_empty())
        .map(|d| (d.day.clone(), d.counts.clone()))
        .collect();
    let states: Vec<&str> = crate::scoring::state::State::ALL
        .iter()
        .map(|s| s.name())
        .collect();
    let colours: std::collections::BTreeMap<&str, &str> = states
        .iter()
        .map(|s| (*s, chart::state_colour(s)))
        .collect();
    let ctx = context! {
        summary => summary,
        lapsing => lapsing,
        states => states,
        colours => colours,
        states_chart => chart::states_chart(&series),
    };
    s.console
        .render(
            "dashboard.html",
            merge(base_ctx(&s, Some(&p), "dashboard"), ctx),
        )
        .into_response()
}

async fn export_csv(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match session(&s, &headers, "/console/dashboard").await {
        Ok(p) => crate::api::csv_response(&s, &p, None)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(r) => r,
    }
}

/// A message the webhook sink received.
#[derive(Debug, Clone, Serialize)]
pub struct SinkMessage {
    /// Its `webhook-id`.
    pub webhook_id: String,
    /// When it arrived.
    pub received_at: String,
    /// Whether its signature checked out.
    pub verified: bool,
    /// The text, or the start of the body.
    pub summary: String,
    /// The body, pretty-printed.
    pub body: String,
}

async fn sink_page(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let p = match session(&s, &headers, "/console/sink").await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !s.cfg.console.webhook_sink || !p.role.sees_contact_details() {
        return crate::http::not_found().await.into_response();
    }
    let rows = with_store(&s, |conn| {
        let mut st = conn
            .prepare_cached(
                "SELECT webhook_id, received_ms, verified, body FROM sink_messages ORDER BY id DESC LIMIT 200",
            )
            .map_err(ApiError::internal)?;
        let rows = st
            .query_map([], |r| {
                let body: String = r.get(3)?;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("");
                let summary = match text("/type") {
                    "outreach.message" => format!(
                        "{} to {}: {}",
                        text("/rule").replace('_', " "),
                        text("/member/name"),
                        text("/subject")
                    ),
                    t if t.starts_with("order.") => format!(
                        "{t}: {} × {} for {}",
                        text("/sku"),
                        v.get("qty").and_then(|q| q.as_i64()).unwrap_or(0),
                        text("/member_id")
                    ),
                    _ => body.chars().take(80).collect(),
                };
                Ok(SinkMessage {
                    webhook_id: r.get(0)?,
                    received_at: crate::registry::ms_to_rfc3339(r.get(1)?),
                    verified: r.get(2)?,
                    summary,
                    body: serde_json::to_string_pretty(&v).unwrap_or(body),
                })
            })
            .map_err(ApiError::internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ApiError::internal)
    })
    .await;
    match rows {
        Ok(messages) => s
            .console
            .render(
                "sink.html",
                merge(
                    base_ctx(&s, Some(&p), "sink"),
                    context! { messages => messages },
                ),
            )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /sink/{webhook}`: the built-in webhook sink. Checks the Standard Webhooks
/// signature against the secrets of the `[[outreach.webhooks]]` entry of that name and
/// keeps each `webhook-id` once (a receiver's idempotency), answering 200 only after the
/// commit; a bad signature is answered 401 and not kept.
pub async fn sink_receive(
    State(s): State<AppState>,
    Path(webhook): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let Some(cfg) = s.cfg.outreach.webhook(&webhook) else {
        return Err(ApiError::not_found(
            "no_such_webhook",
            format!("no [[outreach.webhooks]] entry named {webhook:?}"),
        ));
    };
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let now = s.clock.now();
    let verified = cfg.secrets.iter().any(|secret| {
        crate::delivery::webhook::WebhookSecret::parse(secret.expose())
            .ok()
            .is_some_and(|k| {
                crate::delivery::webhook::verify(&k, &id, &ts, &sig, &body, now).is_ok()
            })
    });
    if !verified {
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            code: "bad_signature",
            message: "webhook-signature does not verify".into(),
        });
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    with_writer(&s, move |conn| {
        store_sink_message(conn, &id, now, &text).map_err(ApiError::internal)
    })
    .await?;
    Ok(StatusCode::OK)
}

/// Keeps a message the built-in sink received. A message about a member who is not in the
/// registry (erased while the message was on its way: the dispatcher had already claimed
/// it) is kept without its body, so that nothing about them outlives the erasure. The
/// check and the insert are one transaction, serialised with the erasure's: either the
/// erasure came first and the body is never stored, or it comes after and deletes it.
pub fn store_sink_message(
    conn: &mut rusqlite::Connection,
    webhook_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    body: &str,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let member: Option<String> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/member/id")
                .or_else(|| v.get("member_id"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        });
    let unknown = match &member {
        Some(m) => !tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM members WHERE id = ?1)",
            [m],
            |r| r.get::<_, bool>(0),
        )?,
        None => false,
    };
    let kept = if unknown {
        serde_json::json!({"redacted": "the member is not in the registry (erased)"}).to_string()
    } else {
        body.to_owned()
    };
    tx.execute(
        "INSERT INTO sink_messages (webhook_id, received_ms, verified, body) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT(webhook_id) DO NOTHING",
        rusqlite::params![webhook_id, now.timestamp_millis(), kept],
    )?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_reaches_the_sink_after_its_members_erasure_is_kept_without_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO members (id, name, email, tz, created_ms) VALUES ('m1', 'Maria Lopez', 'maria@example.com', 'UTC', 0)",
            [],
        )
        .unwrap();
        let now = chrono::Utc::now();
        let message = |id: &str| {
            serde_json::json!({"type": "outreach.message", "id": id,
                "member": {"id": "m1", "name": "Maria Lopez", "email": "maria@example.com"},
                "body": "Hi Maria"})
            .to_string()
        };
        let bodies = |conn: &rusqlite::Connection| -> Vec<(String, String)> {
            let mut st = conn
                .prepare("SELECT webhook_id, body FROM sink_messages ORDER BY webhook_id")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        store_sink_message(&mut conn, "msg_1", now, &message("outreach:1")).unwrap();
        assert!(bodies(&conn)[0].1.contains("Maria"));
        let id = rollcall_shared::MemberId::parse("m1").unwrap();
        let erased = crate::profile::erase(&mut conn, &id, now).unwrap().unwrap();
        assert_eq!(erased.sink_messages_removed, 1);
        assert!(bodies(&conn).is_empty());
        // One that was on its way during the erasure arrives now.
        store_sink_message(&mut conn, "msg_2", now, &message("outreach:2")).unwrap();
        // A fulfilment message about the pseudonym names no one and is kept whole.
        let fulfil = serde_json::json!({"type": "order.accepted", "member_id": erased.pseudonym})
            .to_string();
        store_sink_message(&mut conn, "msg_3", now, &fulfil).unwrap();
        // Not JSON, or about no member: kept as received.
        store_sink_message(&mut conn, "msg_4", now, "plain text").unwrap();
        let b = bodies(&conn);
        assert_eq!(b.len(), 3);
        assert!(
            !b[0].1.contains("Maria") && b[0].1.contains("redacted"),
            "{b:?}"
        );
        assert_eq!(b[1].1, fulfil);
        assert_eq!(b[2].1, "plain text");
    }
}
