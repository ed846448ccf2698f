//! The support and engagement API handlers: lookup, member record, greeting, export and
//! erasure, engagement summary, member list and CSV, calls, the audit log and the
//! telephony webhook. Routes and roles are listed in [`crate::http::api_routes`] and
//! `docs/openapi.json`.
//!
//! | route | roles |
//! |---|---|
//! | `GET /lookup` | support, admin; analyst by `device` or `id` only, without names |
//! | `GET /members/{id}` | support, admin; analyst without name, phone, e-mail, texts |
//! | `GET /members/{id}/greeting` | support, admin |
//! | `GET /members/{id}/export`, `DELETE /members/{id}`, `GET /audit` | admin |
//! | `GET /engagement/*` | all (names only for support and admin) |
//! | `GET /calls` | support, admin |

use crate::audit::{Action, Entry};
use crate::http::{require_role, with_store, with_writer, ApiError, AppState};
use crate::lookup::Query as LookupQuery;
use crate::tokens::{Principal, Role};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::NaiveDate;
use rollcall_shared::MemberId;
use serde::Deserialize;

const STAFF: &[Role] = &[Role::Support, Role::Admin];

fn member_id(id: &str) -> Result<MemberId, ApiError> {
    MemberId::parse(id).map_err(|e| ApiError::bad_request("bad_member_id", e.to_string()))
}

fn no_such_member(id: &MemberId) -> ApiError {
    ApiError::not_found(
        "no_such_member",
        format!("no member with id {:?}", id.as_str()),
    )
}

async fn audit(s: &AppState, entries: Vec<Entry>) -> Result<(), ApiError> {
    s.audit.record(entries).await.map_err(ApiError::internal)
}

/// Query of `GET /api/v1/lookup`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupParams {
    /// Phone number in any common format.
    pub phone: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Member id.
    pub id: Option<String>,
    /// Part of a name, or free text (phone, e-mail, device id, member id or name).
    pub q: Option<String>,
    /// `greeting`: add each member's greeting (support and admin).
    pub include: Option<String>,
}

impl LookupParams {
    /// The parsed queries, or a 400 naming what is wrong.
    pub fn queries(&self, default_region: &str) -> Result<Vec<LookupQuery>, ApiError> {
        use crate::lookup::LookupError;
        let given = [&self.phone, &self.email, &self.device, &self.id, &self.q]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if given != 1 {
            return Err(ApiError::bad_request(
                "bad_query",
                LookupError::Terms.to_string(),
            ));
        }
        let bad =
            |code: &'static str| move |e: LookupError| ApiError::bad_request(code, e.to_string());
        if let Some(p) = &self.phone {
            let p = crate::domain::PhoneNumber::parse(p, default_region)
                .map_err(|e| ApiError::bad_request("bad_phone", e.to_string()))?;
            return Ok(vec![LookupQuery::Phone(p)]);
        }
        if let Some(e) = &self.email {
            let e = crate::domain::Email::parse(e)
                .map_err(|e| ApiError::bad_request("bad_email", e.to_string()))?;
            return Ok(vec![LookupQuery::Email(e)]);
        }
        if let Some(d) = &self.device {
            let d = rollcall_shared::DeviceId::parse(d.trim())
                .map_err(|e| ApiError::bad_request("bad_device_id", e.to_string()))?;
            return Ok(vec![LookupQuery::Device(d)]);
        }
        if let Some(i) = &self.id {
            return Ok(vec![LookupQuery::Member(member_id(i.trim())?)]);
        }
        let q = self.q.as_deref().unwrap_or_default();
        LookupQuery::parse_free_text(q, default_region).map_err(bad("bad_query"))
    }
}

/// Runs a lookup for `p`: refuses searches by personal data to roles that may not see it,
/// finds the members, and audits the search (each member found, or the empty result)
/// before returning.
pub async fn search(
    s: &AppState,
    p: &Principal,
    queries: Vec<LookupQuery>,
) -> Result<Vec<crate::lookup::Hit>, ApiError> {
    Ok(search_and_greet(s, p, queries, false)
        .await?
        .into_iter()
        .map(|(h, _)| h)
        .collect())
}

/// [`search`], and with `greet` each hit's greeting, read in one blocking call from one
/// snapshot of the store (the greeting path of a call centre: one hop, one transaction).
pub async fn search_and_greet(
    s: &AppState,
    p: &Principal,
    queries: Vec<LookupQuery>,
    greet: bool,
) -> Result<Vec<(crate::lookup::Hit, Option<crate::greeting::Greeting>)>, ApiError> {
    let mut queries = queries;
    if !p.role.sees_contact_details() && queries.iter().any(|q| !q.uses_personal_data()) {
        // Free text for a role that may not search by name: what it typed is looked up
        // as a device or member id only.
        queries.retain(|q| !q.uses_personal_data());
    }
    if queries.iter().any(LookupQuery::uses_personal_data) {
        require_role(p, STAFF)?;
    }
    let detail = queries
        .iter()
        .map(LookupQuery::describe)
        .collect::<Vec<_>>()
        .join(" ");
    let (greeter, now) = (s.greeter.clone(), s.clock.now());
    let hits = with_store(s, move |conn| {
        let tx = conn.unchecked_transaction().map_err(ApiError::internal)?;
        let hits = crate::lookup::lookup(&tx, &queries).map_err(ApiError::internal)?;
        hits.into_iter()
            .map(|h| {
                let g = if greet {
                    greeter.greet(&tx, &h.id, now).map_err(ApiError::internal)?
                } else {
                    None
                };
                Ok((h, g))
            })
            .collect::<Result<Vec<_>, ApiError>>()
    })
    .await?;
    let entries = if hits.is_empty() {
        vec![Entry::by(p, now, Action::Search, None, detail)]
    } else {
        hits.iter()
            .map(|(h, _)| Entry::by(p, now, Action::Search, Some(&h.id), detail.clone()))
            .collect()
    };
    audit(s, entries).await?;
    Ok(hits)
}

/// `GET /api/v1/lookup`: members matching a phone, e-mail, device, id or name.
pub async fn lookup(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(params): Query<LookupParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let queries = params.queries(&s.cfg.registry.default_region)?;
    let with_greeting = match params.include.as_deref() {
        None => false,
        Some("greeting") => {
            require_role(&p, STAFF)?;
            true
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_include",
                format!("include={other:?}: only include=greeting is known"),
            ))
        }
    };
    let hits = search_and_greet(&s, &p, queries, with_greeting).await?;
    let mut members = Vec::with_capacity(hits.len());
    for (h, g) in hits {
        let mut v = serde_json::to_value(h).map_err(ApiError::internal)?;
        if let Some(g) = g {
            v["greeting"] = serde_json::to_value(g).map_err(ApiError::internal)?;
        }
        if !p.role.sees_contact_details() {
            crate::profile::redact_personal(&mut v);
        }
        members.push(v);
    }
    Ok(Json(serde_json::json!({ "members": members })))
}

/// `GET /api/v1/members/{id}`: the member's whole record (redacted for analysts).
pub async fn member(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = member_id(&id)?;
    let (tz, now) = (s.business_tz(), s.clock.now());
    let key = id.clone();
    let d = with_store(&s, move |conn| {
        crate::profile::detail(conn, &key, tz, now).map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| no_such_member(&id))?;
    audit(
        &s,
        vec![Entry::by(&p, now, Action::View, Some(id.as_str()), "")],
    )
    .await?;
    let mut v = serde_json::to_value(d).map_err(ApiError::internal)?;
    if !p.role.sees_contact_details() {
        crate::profile::redact_personal(&mut v);
    }
    Ok(Json(v))
}

/// `GET /api/v1/members/{id}/greeting`.
pub async fn greeting(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<crate::greeting::Greeting>, ApiError> {
    require_role(&p, STAFF)?;
    let id = member_id(&id)?;
    let now = s.clock.now();
    let greeter = s.greeter.clone();
    let key = id.clone();
    let g = with_store(&s, move |conn| {
        greeter
            .greet(conn, key.as_str(), now)
            .map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| no_such_member(&id))?;
    audit(
        &s,
        vec![Entry::by(&p, now, Action::Greeting, Some(id.as_str()), "")],
    )
    .await?;
    Ok(Json(g))
}

/// `GET /api/v1/members/{id}/export`: everything held about the member (admin).
pub async fn export(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_role(&p, &[Role::Admin])?;
    let id = member_id(&id)?;
    let (tz, now) = (s.business_tz(), s.clock.now());
    // Audit first, so the export itself appears in the exported access log.
    audit(
        &s,
        vec![Entry::by(&p, now, Action::Export, Some(id.as_str()), "")],
    )
    .await?;
    let (key, dir) = (id.clone(), s.data_dir.clone());
    let v = with_store(&s, move |conn| {
        let audit = crate::audit::open_reader(&dir).map_err(ApiError::internal)?;
        crate::profile::export(conn, &audit, &key, tz, now).map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| no_such_member(&id))?;
    Ok((
        [(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"member-{}.json\"", id.as_str()),
        )],
        Json(v),
    )
        .into_response())
}

/// `DELETE /api/v1/members/{id}`: erases the member's personal data (admin).
pub async fn erase(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<crate::profile::Erased>, ApiError> {
    require_role(&p, &[Role::Admin])?;
    let id = member_id(&id)?;
    let now = s.clock.now();
    audit(
        &s,
        vec![Entry::by(&p, now, Action::Erase, Some(id.as_str()), "")],
    )
    .await?;
    let key = id.clone();
    let (erased, terms) = with_writer(&s, move |conn| {
        // What searches for the member looked like (`Query::describe`).
        let contact: Option<(Option<String>, Option<String>)> = conn
            .query_row(
                "SELECT phone, email FROM members WHERE id = ?1 AND erased_ms IS NULL",
                [key.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(ApiError::internal)?;
        let terms: Vec<String> = contact
            .map(|(phone, email)| {
                let phone = phone.map(|p| format!("phone={p}"));
                let email = email.map(|e| format!("email={e}"));
                phone.into_iter().chain(email).collect()
            })
            .unwrap_or_default();
        let erased = crate::profile::erase(conn, &key, now).map_err(ApiError::internal)?;
        Ok((erased, terms))
    })
    .await?;
    // The audit log keeps who looked at the member and when, but not what they searched
    // for (phone numbers, e-mails, names) or the caller's number. This also runs when the
    // member is gone already, so that a request repeated after a failed redaction
    // finishes it.
    let (key, dir) = (id.clone(), s.data_dir.clone());
    let rows = with_store(&s, move |_| {
        let log = crate::audit::open_reader(&dir).map_err(ApiError::internal)?;
        crate::audit::erasure_rows(&log, key.as_str(), &terms).map_err(ApiError::internal)
    })
    .await?;
    let redacted = s
        .audit
        .redact_member(rows)
        .await
        .map_err(ApiError::internal)?;
    let mut erased = erased.ok_or_else(|| no_such_member(&id))?;
    erased.audit_rows_redacted = redacted;
    tracing::info!(pseudonym = %erased.pseudonym, "Erased a member's personal data");
    Ok(Json(erased))
}

/// Query of `GET /api/v1/engagement/summary`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    /// First day (`YYYY-MM-DD`, UTC).
    pub from: Option<String>,
    /// Last day (`YYYY-MM-DD`, UTC; default: the latest scoring run's day).
    pub to: Option<String>,
    /// Instead of `from`: this many days up to `to` (default: 90, starting no earlier
    /// than the first recorded day).
    pub days: Option<u32>,
}

/// A `YYYY-MM-DD` query value, in the years 1970 to 9999 (chrono would also take signed
/// six-digit years, whose day arithmetic overflows).
fn date(name: &str, v: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d")
        .ok()
        .filter(|d| (1970..=9999).contains(&chrono::Datelike::year(d)))
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_date",
                format!("{name}={v:?} is not a date (YYYY-MM-DD, years 1970 to 9999)"),
            )
        })
}

/// `GET /api/v1/engagement/summary`.
pub async fn engagement_summary(
    State(s): State<AppState>,
    Query(q): Query<SummaryParams>,
) -> Result<Json<crate::engagement::Summary>, ApiError> {
    let from = q.from.as_deref().map(|v| date("from", v)).transpose()?;
    let to = q.to.as_deref().map(|v| date("to", v)).transpose()?;
    let today = s.clock.now().date_naive();
    with_store(&s, move |conn| {
        let (from, to) = summary_range(conn, from, to, q.days, today)?;
        crate::engagement::summary(conn, from, to)
            .map(Json)
            .map_err(|e| match e {
                crate::engagement::EngagementError::Range => {
                    ApiError::bad_request("bad_range", e.to_string())
                }
                e => ApiError::internal(e),
            })
    })
    .await
}

/// The default range ends on the latest scoring run's day and starts `days` (90) earlier,
/// but no earlier than the first day with recorded counts.
fn summary_range(
    conn: &rusqlite::Connection,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    days: Option<u32>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let to = match to {
        Some(t) => t,
        None => crate::scoring::persist::last_run_as_of(conn)
            .map_err(ApiError::internal)?
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.date_naive())
            .unwrap_or(today),
    };
    if let Some(f) = from {
        return Ok((f, to));
    }
    let span = days.unwrap_or(90).clamp(1, 3660) as i64;
    let mut from = to - chrono::Duration::days(span - 1);
    if days.is_none() {
        let first: Option<String> = conn
            .query_row("SELECT MIN(day) FROM engagement_daily", [], |r| r.get(0))
            .map_err(ApiError::internal)?;
        if let Some(f) = first.and_then(|f| NaiveDate::parse_from_str(&f, "%Y-%m-%d").ok()) {
            from = from.max(f.min(to));
        }
    }
    Ok((from, to))
}

/// Query of `GET /api/v1/engagement/members`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersParams {
    /// Only this state.
    pub state: Option<String>,
    /// `score`, `p_engaged`, `p_silent_14d`, `days_since_last`, `state_since`, `id`;
    /// a leading `-` sorts descending. Default `score`.
    pub sort: Option<String>,
    /// Page, from 1.
    pub page: Option<u32>,
    /// Page size, 1..=500 (default 50).
    pub per_page: Option<u32>,
}

/// The highest page number `GET /api/v1/engagement/members` takes (its offset stays far
/// from overflowing).
const MAX_PAGE: u32 = 1_000_000;

/// `GET /api/v1/engagement/members`.
pub async fn engagement_members(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<MembersParams>,
) -> Result<Json<crate::engagement::Page>, ApiError> {
    use crate::engagement::{members, parse_state, Sort};
    let state = parse_state(q.state.as_deref())
        .map_err(|e| ApiError::bad_request("bad_state", e.to_string()))?;
    let (sort, desc) = Sort::parse(q.sort.as_deref().unwrap_or("score"))
        .map_err(|e| ApiError::bad_request("bad_sort", e.to_string()))?;
    let page = q.page.unwrap_or(1);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(
            "bad_page",
            format!("page={page} is not a page number (1..={MAX_PAGE})"),
        ));
    }
    let per_page = q.per_page.unwrap_or(50);
    if !(1..=500).contains(&per_page) {
        return Err(ApiError::bad_request(
            "bad_per_page",
            format!("per_page={per_page} is not a page size (1..=500)"),
        ));
    }
    let names = p.role.sees_contact_details();
    let list = with_store(&s, move |conn| {
        members(conn, state, sort, desc, page, per_page, names).map_err(ApiError::internal)
    })
    .await?;
    let what = format!(
        "engagement members state={} page={page}: {} names",
        q.state.as_deref().unwrap_or("any"),
        list.members.len()
    );
    audit_list(&s, &p, what).await?;
    Ok(Json(list))
}

/// Audits a list with members' names or callers' numbers that `p` read (nothing for a
/// role that sees neither, whose lists hold pseudonymous ids only).
pub async fn audit_list(s: &AppState, p: &Principal, what: String) -> Result<(), ApiError> {
    if !p.role.sees_contact_details() {
        return Ok(());
    }
    audit(
        s,
        vec![Entry::by(p, s.clock.now(), Action::List, None, what)],
    )
    .await
}

/// Query of `GET /api/v1/engagement/export.csv`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Only this state.
    pub state: Option<String>,
}

/// `GET /api/v1/engagement/export.csv`.
pub async fn engagement_export(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ExportParams>,
) -> Result<Response, ApiError> {
    csv_response(&s, &p, q.state).await
}

/// The engagement CSV for `p` (names only for roles that see them).
pub async fn csv_response(
    s: &AppState,
    p: &Principal,
    state: Option<String>,
) -> Result<Response, ApiError> {
    let state = crate::engagement::parse_state(state.as_deref())
        .map_err(|e| ApiError::bad_request("bad_state", e.to_string()))?;
    let names = p.role.sees_contact_details();
    let body = with_store(s, move |conn| {
        crate::engagement::export_csv(conn, state, names).map_err(ApiError::internal)
    })
    .await?;
    let rows = body
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    let what = format!(
        "engagement export state={}: {rows} names",
        state.map_or("any", |s| s.name())
    );
    audit_list(s, p, what).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"engagement.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Query of `GET /api/v1/calls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsParams {
    /// At most this many (default 20).
    pub limit: Option<u32>,
}

/// `GET /api/v1/calls`: recent incoming calls, newest first (the screen-pop's source).
pub async fn calls(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<CallsParams>,
) -> Result<Json<Vec<crate::telephony::CallView>>, ApiError> {
    require_role(&p, STAFF)?;
    let limit = q.limit.unwrap_or(20).clamp(1, 1000);
    let calls = with_store(&s, move |conn| {
        crate::telephony::recent_calls(conn, None, limit).map_err(ApiError::internal)
    })
    .await?;
    audit_list(&s, &p, format!("calls: {} callers", calls.len())).await?;
    Ok(Json(calls))
}

/// Query of `GET /api/v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only lookups of this member.
    pub member: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit`: the lookup audit log, newest first (admin).
pub async fn audit_log(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditParams>,
) -> Result<Json<Vec<crate::audit::AuditView>>, ApiError> {
    require_role(&p, &[Role::Admin])?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let dir = s.data_dir.clone();
    tokio::task::spawn_blocking(move || {
        let conn = crate::audit::open_reader(&dir).map_err(ApiError::internal)?;
        crate::audit::list(&conn, q.member.as_deref(), limit)
            .map(Json)
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

/// `POST /api/v1/telephony/incoming`: the provider's incoming-call webhook. Answers TwiML.
pub async fn telephony_incoming(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let token = s.cfg.telephony.auth_token.clone();
    let actor = if token.is_empty() {
        let p = crate::http::bearer_principal(&s, &headers)
            .await?
            .ok_or_else(|| ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "set [telephony] auth_token, or send a support bearer token".into(),
            })?;
        require_role(&p, STAFF)?;
        Some(p)
    } else {
        let base = if s.cfg.telephony.public_url.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        } else {
            s.cfg.telephony.public_url.trim_end_matches('/').to_owned()
        };
        let url = format!(
            "{base}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let presented = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !crate::telephony::verify(token.expose(), &url, &form, presented) {
            return Err(ApiError {
                status: StatusCode::FORBIDDEN,
                code: "bad_signature",
                message: "X-Twilio-Signature does not match this request".into(),
            });
        }
        None
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let call_sid = field("CallSid")
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .ok_or_else(|| ApiError::bad_request("bad_request", "CallSid is required"))?;
    // Phone numbers (or a SIP address, or "anonymous"): anything longer is not a caller id.
    const MAX_ADDRESS: usize = 256;
    let from = field("From").unwrap_or_default();
    let to = field("To");
    if from.len() > MAX_ADDRESS || to.as_ref().is_some_and(|t| t.len() > MAX_ADDRESS) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("From and To are at most {MAX_ADDRESS} bytes"),
        ));
    }
    let number = crate::telephony::caller_number(&from, &s.cfg.registry.default_region);
    let now = s.clock.now();
    let caller = number.clone();
    let (member, first_name) = with_writer(&s, move |conn| {
        let hit = match &caller {
            Some(n) => crate::lookup::lookup(conn, &[LookupQuery::Phone(n.clone())])
                .map_err(ApiError::internal)?
                .into_iter()
                .next(),
            None => None,
        };
        let stored_from = caller.as_ref().map(|n| n.to_string()).unwrap_or(from);
        crate::telephony::record_call(
            conn,
            &call_sid,
            &stored_from,
            to.as_deref(),
            hit.as_ref().map(|h| h.id.as_str()),
            now.timestamp_millis(),
        )
        .map_err(ApiError::internal)?;
        Ok(hit.map(|h| {
            let first = h.name.split_whitespace().next().unwrap_or("").to_owned();
            (h.id, first)
        }))
    })
    .await?
    .unzip();
    if let Some(m) = &member {
        let (actor, role, token_id) = match &actor {
            Some(p) => (p.name.clone(), p.role.as_str().to_owned(), Some(p.token_id)),
            None => ("telephony".to_owned(), "telephony".to_owned(), None),
        };
        audit(
            &s,
            vec![Entry {
                at: now,
                token_id,
                actor,
                role,
                action: Action::Call,
                member_id: Some(m.clone()),
                detail: format!(
                    "from={}",
                    number.as_ref().map(|n| n.as_str()).unwrap_or("withheld")
                ),
            }],
        )
        .await?;
    }
    let body = crate::telephony::twiml(first_name.as_deref(), &s.cfg.outreach.business_name);
    Ok(([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response())
}
