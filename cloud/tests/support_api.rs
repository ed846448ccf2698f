//! The support and engagement API over real HTTP: every route and role, bad input, the
//! telephony webhook with Twilio signatures, the audit log, export and erasure, and the
//! OpenAPI document checked against the router.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rollcall_cloud::config::{CloudConfig, Secret};
use rollcall_cloud::registry::{add_device, upsert_member, NewMember};
use rollcall_cloud::tokens::{self, Role};
use rollcall_shared::{DeviceId, ManualClock};
use serde_json::Value;
use std::sync::Arc;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 15, 0, 0).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    base: String,
    support: String,
    analyst: String,
    admin: String,
    http: reqwest::Client,
}

const TWILIO_TOKEN: &str = "twilio-test-auth-token";

fn member(
    conn: &rusqlite::Connection,
    id: &str,
    name: &str,
    phone: &str,
    lang: Option<&str>,
    joined_days_ago: i64,
) {
    let joined = (now() - Duration::days(joined_days_ago)).to_rfc3339();
    let m = NewMember::parse(
        id,
        name,
        Some(phone),
        Some(&format!("{}@example.com", id)),
        Some("America/New_York"),
        Some("pods"),
        Some(&joined),
        "US",
    )
    .unwrap()
    .with_lang(lang)
    .unwrap();
    upsert_member(conn, &m, now()).unwrap();
    let key = rollcall_shared::dsse::KeyPair::generate().public();
    add_device(
        conn,
        &DeviceId::parse(&format!("dev-{id}")).unwrap(),
        &m.id,
        &key,
        now(),
    )
    .unwrap();
}

/// Uses on the given days ago, `per_day` brews each with the given drink.
fn usage(conn: &rusqlite::Connection, id: &str, days_ago: &[i64], per_day: i64, drink: &str) {
    let mut seq: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE device_id = ?1",
            [format!("dev-{id}")],
            |r| r.get(0),
        )
        .unwrap();
    for d in days_ago {
        for k in 0..per_day {
            seq += 1;
            let at = now() - Duration::days(*d) - Duration::hours(3) + Duration::minutes(k);
            conn.execute(
                "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, attrs, clock_suspect, fingerprint)
                 VALUES (?1, ?2, ?3, 'brew', 1, ?4, ?4, ?5, 0, ?2)",
                rusqlite::params![
                    format!("dev-{id}"),
                    seq,
                    id,
                    at.timestamp_millis(),
                    format!(r#"{{"drink":"{drink}","model":"Barista Pro"}}"#)
                ],
            )
            .unwrap();
        }
    }
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    // Maria: daily for two months, lattes. Lucia (Spanish): every other day, espressos.
    // Tom: used a lot, then silent for three weeks. Ned: joined, never used.
    member(
        &conn,
        "m-maria",
        "Maria Rossi",
        "+1 212 555 0142",
        None,
        400,
    );
    member(
        &conn,
        "m-lucia",
        "Lucía García",
        "+1 312 555 0177",
        Some("es"),
        300,
    );
    member(&conn, "m-tom", "Tom Baker", "+1 415 555 0190", None, 200);
    member(&conn, "m-ned", "Ned Stark", "+1 646 555 0111", None, 5);
    usage(&conn, "m-maria", &(0..60).collect::<Vec<_>>(), 2, "latte");
    usage(
        &conn,
        "m-lucia",
        &(0..60).step_by(2).collect::<Vec<_>>(),
        1,
        "espresso",
    );
    usage(
        &conn,
        "m-tom",
        &(21..120).collect::<Vec<_>>(),
        1,
        "cappuccino",
    );
    let cfg = rollcall_cloud::config::ScoringConfig::default();
    for d in (0..=30).rev() {
        let t = now() - Duration::days(d);
        rollcall_cloud::scoring::score_once(&mut conn, &cfg, t, t).unwrap();
    }
    let token = |name: &str, role| tokens::create(&conn, name, role, now()).unwrap().token;
    let (support, analyst, admin) = (
        token("desk", Role::Support),
        token("bi", Role::Analyst),
        token("ops", Role::Admin),
    );
    let mut cfg = CloudConfig {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    cfg.telephony.auth_token = Secret::new(TWILIO_TOKEN);
    cfg.outreach.business_name = "Beans & Co".into();
    let mut state =
        rollcall_cloud::http::AppState::new(Arc::new(rollcall_cloud::metrics::Metrics::new()), cfg)
            .unwrap();
    state.clock = Arc::new(ManualClock::new(now()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, rollcall_cloud::http::router(state))
            .await
            .unwrap()
    });
    Env {
        dir,
        base: format!("http://{addr}"),
        support,
        analyst,
        admin,
        http: reqwest::Client::new(),
    }
}

impl Env {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let res = r.send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn json(&self, path: &str, token: &str) -> (u16, Value) {
        let (status, body) = self.get(path, Some(token)).await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        let res = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    async fn call(&self, from: &str, sid: &str, sign_with: &str) -> (u16, String) {
        let params: Vec<(String, String)> = [
            ("CallSid", sid),
            ("From", from),
            ("To", "+18005550100"),
            ("AccountSid", "AC123"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let url = format!("{}/api/v1/telephony/incoming", self.base);
        let sig = rollcall_cloud::telephony::signature(sign_with, &url, &params);
        let res = self
            .http
            .post(&url)
            .header("X-Twilio-Signature", sig)
            .form(&params)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }
}

#[tokio::test]
async fn staff_find_a_member_by_a_phone_written_any_way_and_analysts_never_see_contact_details() {
    let e = start().await;
    let (status, v) = e
        .json("/api/v1/lookup?phone=(212)%20555-0142", &e.support)
        .await;
    assert_eq!(status, 200, "{v}");
    let m = &v["members"][0];
    assert_eq!(
        (m["id"].as_str(), m["name"].as_str()),
        (Some("m-maria"), Some("Maria Rossi"))
    );
    assert_eq!(m["phone"], "+12125550142");
    let (_, v) = e.json("/api/v1/lookup?q=212.555.0142", &e.support).await;
    assert_eq!(v["members"][0]["id"], "m-maria");
    let (_, v) = e.json("/api/v1/lookup?q=ros", &e.support).await;
    assert_eq!(v["members"][0]["id"], "m-maria");
    let (_, v) = e
        .json("/api/v1/lookup?email=M-MARIA@example.com", &e.support)
        .await;
    assert_eq!(v["members"][0]["id"], "m-maria");
    let (_, v) = e.json("/api/v1/lookup?device=dev-m-tom", &e.analyst).await;
    assert_eq!(v["members"][0]["id"], "m-tom");
    assert!(v["members"][0].get("name").is_none(), "{v}");
    assert!(v["members"][0].get("phone").is_none(), "{v}");
    // Analysts may not search by personal data, nor read a record's contact details.
    let (status, v) = e.json("/api/v1/lookup?phone=2125550142", &e.analyst).await;
    assert_eq!((status, v["error"].as_str()), (403, Some("forbidden")));
    let (status, body) = e.get("/api/v1/members/m-maria", Some(&e.analyst)).await;
    assert_eq!(status, 200);
    for secret in ["+12125550142", "Maria", "m-maria@example.com"] {
        assert!(!body.contains(secret), "analyst saw {secret}: {body}");
    }
    let (status, v) = e.json("/api/v1/members/m-maria", &e.support).await;
    assert_eq!(status, 200);
    assert_eq!(v["name"], "Maria Rossi");
    assert_eq!(v["phone"], "+12125550142");
    assert_eq!(v["email"], "m-maria@example.com");
    assert_eq!(v["state"], "active");
    assert_eq!(v["history"]["days"].as_array().unwrap().len(), 90);
    assert_eq!(v["history"]["days"][89]["total"], 2);
    assert!(v["usage_summary"]["current_streak"].as_u64().unwrap() >= 60);
    assert!(v["devices"][0]["id"] == "dev-m-maria");
}

#[tokio::test]
async fn bad_input_and_missing_tokens_get_json_reasons() {
    let e = start().await;
    let (status, body) = e.get("/api/v1/lookup?phone=2125550142", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"unauthorized\""));
    let (status, v) = e.json("/api/v1/lookup?phone=12", &e.support).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("bad_phone")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("phone number"));
    for (path, token, expected) in [
        ("/api/v1/lookup", &e.support, (400, "bad_query")),
        (
            "/api/v1/lookup?phone=1&email=a@b.c",
            &e.support,
            (400, "bad_query"),
        ),
        (
            "/api/v1/members/no%20such/greeting",
            &e.support,
            (400, "bad_member_id"),
        ),
        (
            "/api/v1/members/nobody",
            &e.support,
            (404, "no_such_member"),
        ),
        (
            "/api/v1/engagement/members?state=gone",
            &e.analyst,
            (400, "bad_state"),
        ),
        (
            "/api/v1/engagement/members?sort=name;drop",
            &e.analyst,
            (400, "bad_sort"),
        ),
        (
            "/api/v1/engagement/summary?from=yesterday",
            &e.analyst,
            (400, "bad_date"),
        ),
        (
            "/api/v1/engagement/summary?from=2026-11-20&to=2026-11-01",
            &e.analyst,
            (400, "bad_range"),
        ),
        (
            "/api/v1/engagement/summary?from=%2B262142-12-31&to=%2B262142-12-31",
            &e.analyst,
            (400, "bad_date"),
        ),
        (
            "/api/v1/engagement/members?page=0",
            &e.analyst,
            (400, "bad_page"),
        ),
        (
            "/api/v1/engagement/members?page=16777217&per_page=256",
            &e.analyst,
            (400, "bad_page"),
        ),
        (
            "/api/v1/engagement/members?per_page=100000",
            &e.analyst,
            (400, "bad_per_page"),
        ),
        (
            "/api/v1/members/nobody/outreach",
            &e.support,
            (404, "no_such_member"),
        ),
    ] {
        let (status, v) = e.json(path, token).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (expected.0, Some(expected.1)),
            "{path}: {v}"
        );
    }
    // The last page there is, and a page past it (empty, not an error).
    let (status, v) = e
        .json(
            "/api/v1/engagement/members?page=1000000&per_page=500",
            &e.analyst,
        )
        .await;
    assert_eq!(
        (status, v["members"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    // The scheme is case-insensitive (RFC 9110); another scheme is told what to send.
    let res = e
        .http
        .get(format!("{}/api/v1/lookup?id=m-maria", e.base))
        .header("authorization", format!("bearer {}", e.support))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for auth in ["Basic dXNlcjpwYXNz".to_owned(), "Bearer ".to_owned()] {
        let res = e
            .http
            .get(format!("{}/api/v1/lookup?id=m-maria", e.base))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{auth}");
        let v: Value = res.json().await.unwrap();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{auth}: {v}"
        );
    }
    // Free text from an analyst is looked up as an id only, never refused or by name.
    let (status, v) = e.json("/api/v1/lookup?q=m-maria", &e.analyst).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["members"][0]["id"], "m-maria");
    assert!(v["members"][0].get("name").is_none(), "{v}");
    let (status, v) = e.json("/api/v1/lookup?q=Maria", &e.analyst).await;
    assert_eq!(
        (status, v["members"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    let (status, _) = e.json("/api/v1/lookup?q=212-555-0142", &e.analyst).await;
    assert_eq!(status, 403, "a phone number is personal data");
    let (status, _) = e.call(&"9".repeat(300), "CA-long", TWILIO_TOKEN).await;
    assert_eq!(status, 400);
    for (path, token) in [
        ("/api/v1/members/m-maria/greeting", &e.analyst),
        ("/api/v1/members/m-maria/export", &e.support),
        ("/api/v1/audit", &e.support),
        ("/api/v1/calls", &e.analyst),
        ("/api/v1/deliveries", &e.analyst),
    ] {
        let (status, v) = e.json(path, token).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn what_the_framework_refuses_before_a_handler_runs_is_json_too() {
    let e = start().await;
    for (method, path, content_type, expected) in [
        (
            "GET",
            "/api/v1/deliveries?limit=abc",
            None,
            (400, "bad_request"),
        ),
        (
            "GET",
            "/api/v1/lookup?phone=1&bogus=2",
            None,
            (400, "bad_request"),
        ),
        ("GET", "/api/v1/members/%FF", None, (400, "bad_request")),
        (
            "POST",
            "/api/v1/telephony/incoming",
            Some("application/json"),
            (415, "unsupported_media_type"),
        ),
        ("POST", "/api/v1/lookup", None, (405, "method_not_allowed")),
        (
            "PUT",
            "/api/v1/members/m-maria",
            None,
            (405, "method_not_allowed"),
        ),
    ] {
        let mut req = e
            .http
            .request(method.parse().unwrap(), format!("{}{path}", e.base))
            .bearer_auth(&e.admin);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct).body("{}");
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let allow = res.headers().get("allow").cloned();
        let body = res.text().await.unwrap();
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {body:?}"));
        assert_eq!(
            (status, v["error"].as_str()),
            (expected.0, Some(expected.1)),
            "{method} {path}: {v}"
        );
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: {v}"
        );
        if status == 405 {
            let allow = allow.unwrap();
            let allow = allow.to_str().unwrap();
            assert!(allow.starts_with("GET,HEAD"), "{path}: {allow}");
            // The message names what the route serves, as the header does.
            let message = v["message"].as_str().unwrap();
            for m in allow.split(',').filter(|m| *m != "HEAD") {
                assert!(message.contains(m), "{path}: {message}");
            }
        }
    }
}

#[tokio::test]
async fn each_member_gets_their_own_greeting_in_their_language() {
    let e = start().await;
    let (status, maria) = e.json("/api/v1/members/m-maria/greeting", &e.support).await;
    assert_eq!(status, 200, "{maria}");
    let text = maria["greeting"].as_str().unwrap();
    assert!(
        text.starts_with("Hi Maria — I see your Barista Pro made"),
        "{text}"
    );
    assert!(text.contains("coffees this month, mostly lattes"), "{text}");
    // Her 100th coffee was 10 days ago: that is what is notable, before her streak.
    assert!(
        text.ends_with("Congratulations on your 100th coffee! How can I help?"),
        "{text}"
    );
    let facts = maria["facts"].as_array().unwrap();
    assert!(facts.iter().any(|f| f["key"] == "milestone"));
    assert!(facts
        .iter()
        .any(|f| f["key"] == "streak" && f["value"] == 60));
    let (_, lucia) = e.json("/api/v1/members/m-lucia/greeting", &e.support).await;
    let text = lucia["greeting"].as_str().unwrap();
    assert_eq!(lucia["language"], "es");
    assert!(
        text.starts_with("Hola, Lucía: veo que tu Barista Pro ha preparado"),
        "{text}"
    );
    assert!(text.contains("espresso"), "{text}");
    let (_, tom) = e.json("/api/v1/members/m-tom/greeting", &e.support).await;
    let text = tom["greeting"].as_str().unwrap();
    assert!(text.contains("quiet spell since"), "{text}");
    assert!(tom["facts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["key"] == "quiet_spell"));
    let (_, ned) = e.json("/api/v1/members/m-ned/greeting", &e.support).await;
    let text = ned["greeting"].as_str().unwrap();
    assert!(
        text == "Hi Ned — I see your machine is set up and ready to go. Welcome aboard! How can I help?",
        "{text}"
    );
    // The lookup can carry the greeting, for a caller identified by number.
    let (_, v) = e
        .json(
            "/api/v1/lookup?phone=%2B14155550190&include=greeting",
            &e.support,
        )
        .await;
    assert_eq!(v["members"][0]["greeting"]["greeting"], tom["greeting"]);
}

#[tokio::test]
async fn an_incoming_call_greets_by_first_name_only_and_pops_the_card_for_staff() {
    let e = start().await;
    // Unsigned or wrongly signed: refused.
    let (status, _) = e.call("+12125550142", "CA-forged", "not-the-token").await;
    assert_eq!(status, 403);
    let (status, twiml) = e.call("(212) 555-0142", "CA-1", TWILIO_TOKEN).await;
    assert_eq!(status, 200, "{twiml}");
    assert!(
        twiml.contains("<Response><Say>Hi Maria, thanks for calling Beans &amp; Co."),
        "{twiml}"
    );
    for detail in ["Rossi", "coffee", "latte", "streak"] {
        assert!(
            !twiml.contains(detail),
            "the caller was told {detail}: {twiml}"
        );
    }
    // The provider retries: one call.
    e.call("(212) 555-0142", "CA-1", TWILIO_TOKEN).await;
    let (_, unknown) = e.call("+13125550100", "CA-2", TWILIO_TOKEN).await;
    assert!(
        unknown.contains("<Say>Thanks for calling Beans &amp; Co."),
        "{unknown}"
    );
    let (status, calls) = e.json("/api/v1/calls", &e.support).await;
    assert_eq!(status, 200);
    let calls = calls.as_array().unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1]["member_id"], "m-maria");
    assert_eq!(calls[1]["from"], "+12125550142");
    assert!(calls[0]["member_id"].is_null());
    // The lookup by call is in the audit log, by the telephony webhook.
    let (_, audit) = e.json("/api/v1/audit?member=m-maria", &e.admin).await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "call" && a["actor"] == "telephony"),
        "{audit}"
    );
}

#[tokio::test]
async fn a_tokens_last_use_is_recorded_and_an_unused_token_has_none() {
    let e = start().await;
    let last_used = |name: &str| {
        let conn = rollcall_cloud::store::open_reader(e.dir.path()).unwrap();
        tokens::list(&conn)
            .unwrap()
            .into_iter()
            .find(|t| t.name == name)
            .unwrap()
            .last_used_at
    };
    assert_eq!(last_used("desk"), None);
    let (status, _) = e.json("/api/v1/engagement/summary", &e.support).await;
    assert_eq!(status, 200);
    // Recorded off the request path: poll for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while last_used("desk").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no last use recorded in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        last_used("desk"),
        Some(rollcall_cloud::registry::ms_to_rfc3339(
            now().timestamp_millis()
        )),
        "the last use is stamped by the server's clock"
    );
    assert_eq!(last_used("bi"), None);
}

#[tokio::test]
async fn every_lookup_is_audited_with_who_and_why() {
    let e = start().await;
    e.json("/api/v1/lookup?phone=2125550142", &e.support).await;
    e.json("/api/v1/members/m-maria", &e.support).await;
    e.json("/api/v1/members/m-maria/greeting", &e.support).await;
    e.json("/api/v1/lookup?q=nobody%20here", &e.support).await;
    e.json("/api/v1/members/m-maria/score", &e.analyst).await;
    e.json("/api/v1/members/m-maria/outreach", &e.support).await;
    let (status, v) = e.json("/api/v1/audit", &e.admin).await;
    assert_eq!(status, 200);
    let rows = v.as_array().unwrap();
    let actions: Vec<(&str, &str, Option<&str>)> = rows
        .iter()
        .rev()
        .map(|r| {
            (
                r["actor"].as_str().unwrap(),
                r["action"].as_str().unwrap(),
                r["member_id"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("desk", "search", Some("m-maria")),
            ("desk", "view", Some("m-maria")),
            ("desk", "greeting", Some("m-maria")),
            ("desk", "search", None),
            ("bi", "view", Some("m-maria")),
            ("desk", "view", Some("m-maria")),
        ]
    );
    assert_eq!(rows[5]["detail"], "phone=+12125550142");
    assert_eq!(
        (rows[1]["detail"].as_str(), rows[0]["detail"].as_str()),
        (Some("score"), Some("outreach"))
    );
}

#[tokio::test]
async fn the_engagement_api_counts_states_lists_who_needs_attention_and_exports_csv() {
    let e = start().await;
    let (status, v) = e.json("/api/v1/engagement/summary", &e.analyst).await;
    assert_eq!(status, 200, "{v}");
    let total: u64 = v["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);
    assert_eq!(v["to"], "2026-11-26");
    assert_eq!(
        v["by_day"].as_array().unwrap().len(),
        31,
        "one entry per day scored"
    );
    let transitions: u64 = v["transitions"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(
        transitions >= 4,
        "at least the first scoring of each member: {v}"
    );
    let (_, v) = e
        .json(
            "/api/v1/engagement/summary?from=2026-11-20&to=2026-11-26",
            &e.analyst,
        )
        .await;
    assert_eq!(v["by_day"].as_array().unwrap().len(), 7);
    let (status, page) = e
        .json(
            "/api/v1/engagement/members?sort=-score&per_page=2&page=2",
            &e.analyst,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (page["total"].as_u64(), page["page"].as_u64()),
        (Some(4), Some(2))
    );
    let rows = page["members"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["score"].as_u64() >= rows[1]["score"].as_u64());
    assert!(
        rows[0].get("name").is_none(),
        "analysts get pseudonymous ids only"
    );
    let (_, page) = e
        .json("/api/v1/engagement/members?sort=id", &e.support)
        .await;
    assert_eq!(page["members"][0]["name"], "Lucía García");
    let (status, csv) = e
        .get("/api/v1/engagement/export.csv", Some(&e.analyst))
        .await;
    assert_eq!(status, 200);
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("id,state,state_since,score"));
    assert_eq!(lines.count(), 4);
    assert!(!csv.contains("Maria"));
    let (_, csv) = e
        .get("/api/v1/engagement/export.csv", Some(&e.support))
        .await;
    assert!(csv.starts_with("id,name,") && csv.contains("Maria Rossi"));
    // Lists with names (and callers' numbers) are audited for the roles that see them;
    // the analyst's pseudonymous lists are not.
    let (status, _) = e
        .json("/api/v1/engagement/members?state=lapsing", &e.support)
        .await;
    assert_eq!(status, 200);
    let (status, _) = e.json("/api/v1/calls", &e.support).await;
    assert_eq!(status, 200);
    let (_, log) = e.json("/api/v1/audit", &e.admin).await;
    let lists: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "list")
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Newest first: the support reads above, none of the analyst's.
    let details: Vec<&str> = lists.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        details,
        [
            "calls: 0 callers",
            "engagement members state=lapsing page=1: 0 names",
            "engagement export state=any: 4 names",
            "engagement members state=any page=1: 4 names",
        ]
    );
    assert!(lists.iter().all(|(actor, _)| actor == "desk"), "{lists:?}");
}

#[tokio::test]
async fn export_holds_everything_and_erasure_keeps_usage_only_under_a_pseudonym() {
    let e = start().await;
    let (status, v) = e.json("/api/v1/members/m-maria/export", &e.admin).await;
    assert_eq!(status, 200);
    assert_eq!(v["member"]["name"], "Maria Rossi");
    assert_eq!(v["events"].as_array().unwrap().len(), 120);
    assert!(v["access_log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "export"));
    let (_, before) = e.json("/api/v1/engagement/summary", &e.admin).await;
    let (status, _) = e.json("/api/v1/members/m-maria", &e.support).await;
    assert_eq!(status, 200);
    // What the access log and the built-in webhook sink hold about her.
    for search in ["phone=2125550142", "q=Maria"] {
        let (status, v) = e
            .json(&format!("/api/v1/lookup?{search}"), &e.support)
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, _) = e.call("+12125550142", "CA-erase", TWILIO_TOKEN).await;
    assert_eq!(status, 200);
    {
        let conn = rollcall_cloud::store::open_writer(e.dir.path()).unwrap();
        conn.execute(
            "INSERT INTO sink_messages (webhook_id, received_ms, verified, body) VALUES
             ('msg_1', 0, 1, '{\"member\":{\"id\":\"m-maria\",\"name\":\"Maria Rossi\"}}'),
             ('msg_2', 0, 1, '{\"member\":{\"id\":\"m-tom\",\"name\":\"Tom Baker\"}}')",
            [],
        )
        .unwrap();
    }
    let (_, log) = e.json("/api/v1/audit?member=m-maria", &e.admin).await;
    let log = log.to_string();
    assert!(log.contains("+12125550142"), "{log}");
    let (status, _) = e.delete("/api/v1/members/m-maria", &e.support).await;
    assert_eq!(status, 403, "support may not erase");
    let (status, erased) = e.delete("/api/v1/members/m-maria", &e.admin).await;
    assert_eq!(status, 200);
    assert_eq!(erased["events_kept"], 120);
    assert_eq!(erased["sink_messages_removed"], 1, "{erased}");
    let pseudonym = erased["pseudonym"].as_str().unwrap().to_owned();
    assert!(pseudonym.starts_with("x-"));
    // The access log keeps who looked and when, not what was searched or who called.
    let (_, log) = e.json("/api/v1/audit?member=m-maria", &e.admin).await;
    let rows = log.as_array().expect("audit rows").clone();
    for gone in ["2125550142", "Maria"] {
        assert!(!log.to_string().contains(gone), "{gone} survived: {log}");
    }
    let redacted = rows
        .iter()
        .filter(|r| r["detail"] == rollcall_cloud::audit::REDACTED)
        .count();
    assert!(redacted >= 2, "{log}");
    assert_eq!(erased["audit_rows_redacted"], redacted as u64, "{erased}");
    for action in ["search", "call", "erase"] {
        assert!(
            rows.iter().any(|r| r["action"] == action),
            "{action}: {log}"
        );
    }
    let sink: Vec<String> = rollcall_cloud::store::open_reader(e.dir.path())
        .unwrap()
        .prepare("SELECT webhook_id FROM sink_messages")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sink, ["msg_2"]);
    // There is no one to greet.
    let (status, _) = e
        .json(&format!("/api/v1/members/{pseudonym}/greeting"), &e.support)
        .await;
    assert_eq!(status, 404);
    let (status, _) = e.json("/api/v1/members/m-maria", &e.admin).await;
    assert_eq!(status, 404);
    let (_, v) = e.json("/api/v1/lookup?phone=2125550142", &e.support).await;
    assert_eq!(v["members"], serde_json::json!([]));
    let (status, body) = e
        .get(&format!("/api/v1/members/{pseudonym}"), Some(&e.admin))
        .await;
    assert_eq!(status, 200);
    for gone in ["Maria", "+12125550142", "m-maria@example.com"] {
        assert!(!body.contains(gone), "{gone} survived erasure: {body}");
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["events"], 120);
    assert_eq!(v["erased"], true);
    let (_, after) = e.json("/api/v1/engagement/summary", &e.admin).await;
    assert_eq!(
        before["counts"], after["counts"],
        "aggregates are unchanged"
    );
    // Erasing again finds nobody.
    let (status, _) = e.delete("/api/v1/members/m-maria", &e.admin).await;
    assert_eq!(status, 404);
}

/// `docs/openapi.json`, parsed.
fn openapi_doc() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A route pattern with its parameters filled in: member `member`, ledger entry 0.
fn concrete(pattern: &str, member: &str) -> String {
    pattern.replace("{id}", member).replace("{index}", "0")
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
    let e = start().await;
    let doc = openapi_doc();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut routed: Vec<(String, String)> = rollcall_cloud::http::api_routes()
        .into_iter()
        .map(|(m, p, _)| (m.to_owned(), p.to_owned()))
        .collect();
    routed.sort();
    assert_eq!(documented, routed);
    // And each documented route is really served (not the fallback's "no such route").
    for (method, path) in &documented {
        let url = format!("{}{}", e.base, concrete(path, "m-tom"));
        let res = e
            .http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(&e.admin)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert!(
            !(status == 404 && body.contains("no such route")) && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn every_api_route_but_the_signed_webhook_refuses_a_request_without_a_token() {
    let e = start().await;
    let mut checked = 0;
    for (method, path, _) in rollcall_cloud::http::api_routes() {
        if rollcall_cloud::http::SELF_AUTHENTICATED.contains(&path) {
            continue;
        }
        let url = format!("{}{}", e.base, concrete(path, "m-maria"));
        let res = e
            .http
            .request(method.parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.text().await.unwrap();
        assert_eq!(status, 401, "{method} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "unauthorized", "{method} {path}");
        checked += 1;
    }
    assert!(checked >= 15, "{checked} routes");
}

#[tokio::test]
async fn the_console_escapes_what_members_and_callers_typed_and_hides_contact_details_from_analysts(
) {
    let e = start().await;
    let evil = "<script>alert(1)</script> \"Evil\" O'Brien";
    {
        let conn = rollcall_cloud::store::open_writer(e.dir.path()).unwrap();
        member(&conn, "m-evil", evil, "+1 415 555 0123", None, 30);
        usage(
            &conn,
            "m-evil",
            &[0, 1, 2],
            1,
            "<img src=x onerror=alert(2)>",
        );
    }
    let page = |path: &str, token: &str| {
        let req = e.http.get(format!("{}{path}", e.base)).header(
            "cookie",
            format!("{}={token}", rollcall_cloud::console::COOKIE),
        );
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    for path in ["/console/members/m-evil", "/console/search?q=Evil"] {
        let (status, html) = page(path, &e.support).await;
        assert_eq!(status, 200, "{path}: {html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &quot;Evil&quot;"),
            "{path}"
        );
        for raw in ["<script>alert(1)", "<img src=x", "\"Evil\""] {
            assert!(
                !html.contains(raw),
                "{path}: {raw} reached the page unescaped"
            );
        }
    }
    // The analyst's card: the member by id, with no name, phone or e-mail anywhere.
    let (status, html) = page("/console/members/m-evil", &e.analyst).await;
    assert_eq!(status, 200, "{html}");
    for hidden in [
        "Evil",
        "O&#x27;Brien",
        "4155550123",
        "m-evil@example.com",
        "555 0123",
    ] {
        assert!(!html.contains(hidden), "the analyst saw {hidden}");
    }
    let (status, html) = page("/console/calls", &e.analyst).await;
    assert!(
        status == 403 || !html.contains("+1"),
        "{status}: the analyst saw a caller's number"
    );
}

#[tokio::test]
async fn every_documented_query_parameter_is_one_the_route_reads_and_others_are_refused() {
    let e = start().await;
    let doc = openapi_doc();
    let ask = |path: String| {
        let req = e
            .http
            .get(format!("{}{path}", e.base))
            .bearer_auth(&e.admin);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(params) = item["get"]["parameters"].as_array() else {
            continue;
        };
        let path = concrete(path, "m-maria");
        let names: Vec<&str> = params
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        if names.is_empty() {
            // A route that reads no query string ignores one, as HTTP servers do.
            continue;
        }
        for name in names {
            // Any value: a bad one may be refused, but never as an unknown parameter.
            let (status, body) = ask(format!("{path}?{name}=1")).await;
            assert!(
                !(status == 400 && body.contains("unknown field")),
                "{path}: documented parameter {name} is not read: {body}"
            );
            checked += 1;
        }
        if path == "/api/v1/optout" {
            // Links in e-mails pick up trackers' parameters: the opt-out ignores them.
            continue;
        }
        let (status, body) = ask(format!("{path}?undocumented=1")).await;
        assert!(
            status == 400 && body.contains("unknown field"),
            "{path} takes a parameter the document does not list: {status} {body}"
        );
    }
    assert!(checked >= 20, "{checked} parameters");
}
