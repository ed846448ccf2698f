//! Outreach and the delivery queue against real local servers: a webhook receiver that
//! verifies Standard Webhooks signatures and a tiny real SMTP server. Time is a
//! `ManualClock`.

mod support;

use chrono::Duration;
use rollcall_cloud::config::CloudConfig;
use rollcall_cloud::delivery::dispatcher::{Channels, Dispatcher, Outcome};
use rollcall_cloud::delivery::email::EmailSender;
use rollcall_cloud::delivery::webhook::WebhookSender;
use rollcall_cloud::metrics::Metrics;
use rollcall_cloud::outreach::view::OutreachView;
use rollcall_cloud::outreach::{Outreach, TickReport};
use rollcall_shared::{Clock, ManualClock};
use rusqlite::Connection;
use std::sync::Arc;
use support::*;

struct Env {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    cfg: CloudConfig,
    outreach: Outreach,
    conn: Connection,
    dispatcher: Dispatcher,
    receiver: Receiver,
}

async fn env(start: &str, replies: Vec<Reply>, tune: impl FnOnce(&mut CloudConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t(start));
    let receiver = Receiver::start(replies, Arc::new(clock.clone())).await;
    let mut cfg = config(dir.path(), vec![receiver.webhook("crm")]);
    tune(&mut cfg);
    cfg.validate("<test>").unwrap();
    let conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let outreach = Outreach::new(&cfg).unwrap();
    let channels = Channels {
        webhook: Some(WebhookSender::new(&cfg.delivery, &cfg.outreach.webhooks).unwrap()),
        email: (!cfg.delivery.smtp.host.is_empty()).then(|| {
            EmailSender::new(&cfg.delivery.smtp, std::time::Duration::from_secs(5)).unwrap()
        }),
        device: None,
    };
    let dispatcher = Dispatcher::new(
        rollcall_cloud::store::open_writer(dir.path()).unwrap(),
        cfg.delivery.clone(),
        Arc::new(clock.clone()),
        channels,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    Env {
        _dir: dir,
        clock,
        cfg,
        outreach,
        conn,
        dispatcher,
        receiver,
    }
}

impl Env {
    fn tick(&mut self) -> TickReport {
        self.outreach
            .tick(&mut self.conn, self.clock.now())
            .unwrap()
    }
    async fn dispatch(&self) {
        while let Outcome::Worked(_) = self.dispatcher.dispatch_once().await.unwrap() {}
    }
    fn list(&self, member: &str) -> Vec<OutreachView> {
        rollcall_cloud::outreach::view::list(&self.conn, Some(member), 100).unwrap()
    }
    fn of_rule(&self, member: &str, rule: &str) -> Vec<OutreachView> {
        self.list(member)
            .into_iter()
            .filter(|o| o.rule == rule)
            .collect()
    }
    fn maria(&self) {
        add_member(
            &self.conn,
            "m-maria",
            "Maria Lopez",
            Some("Europe/Berlin"),
            Some("maria@example.com"),
            "2025-01-10",
        );
        add_usage(&self.conn, "m-maria", 23, "2026-05-12T07:30:00Z", "latte");
        set_state(
            &self.conn,
            "m-maria",
            None,
            "active",
            t("2026-05-01T06:00:00Z"),
        );
    }
}

#[tokio::test]
async fn a_lapsing_member_gets_exactly_one_win_back_with_their_own_name_and_numbers() {
    let mut e = env("2026-05-21T09:00:00Z", vec![], |_| {}).await;
    e.maria();
    e.tick();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    let r = e.tick();
    assert_eq!(r.queued, 1, "{r:?}");
    e.dispatch().await;
    // Nothing new: ticking and dispatching again sends nothing more.
    e.clock.advance(Duration::minutes(5));
    e.tick();
    e.dispatch().await;
    let got = e.receiver.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(e.receiver.bad_signatures(), 0);
    let body = got[0].body["body"].as_str().unwrap();
    assert!(body.starts_with("Hi Maria,"), "{body}");
    assert!(body.contains("latte"), "{body}");
    assert!(body.contains("since Tuesday (9 days now)"), "{body}");
    assert!(
        body.contains("Last month you enjoyed it 11 times, and 12 so far this month"),
        "{body}"
    );
    assert_eq!(got[0].body["subject"], "We miss you, Maria");
    assert_eq!(got[0].body["member"]["id"], "m-maria");
    assert_eq!(got[0].id, got[0].body["id"].as_str().unwrap());
    let list = e.list("m-maria");
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].status.as_str(), list[0].rule.as_str()),
        ("sent", "win_back")
    );
}

#[tokio::test]
async fn a_receiver_failing_with_500_then_200_gets_the_message_once_with_attempts_recorded() {
    let mut e = env(
        "2026-05-21T09:00:00Z",
        vec![Reply::Status(500), Reply::Status(503), Reply::Status(200)],
        |_| {},
    )
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    for _ in 0..10 {
        e.dispatch().await;
        e.clock.advance(Duration::seconds(10));
    }
    let got = e.receiver.received();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 503, 200]
    );
    assert!(
        got.iter().all(|r| r.id == got[0].id),
        "one webhook-id across retries"
    );
    assert_eq!(e.receiver.accepted().len(), 1);
    let id = e.list("m-maria")[0].delivery_id.unwrap();
    let attempts = rollcall_cloud::delivery::attempts(&e.conn, id).unwrap();
    let codes: Vec<_> = attempts
        .iter()
        .map(|a| (a.n, a.status_code, a.outcome.as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (1, Some(500), "retry"),
            (2, Some(503), "retry"),
            (3, Some(200), "delivered")
        ]
    );
    let d = rollcall_cloud::delivery::get(&e.conn, id).unwrap().unwrap();
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 3));
}

#[tokio::test]
async fn http_410_disables_the_endpoint_until_retried() {
    let mut e = env(
        "2026-05-21T09:00:00Z",
        vec![Reply::Status(410), Reply::Status(200)],
        |c| {
            c.outreach.caps.clear();
        },
    )
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    e.dispatch().await;
    let first = e.list("m-maria")[0].clone();
    assert_eq!(
        (first.status.as_str(), first.reason.as_deref()),
        ("dead", Some("endpoint_gone"))
    );
    // A later message to the same endpoint is not even tried.
    e.clock.advance(Duration::days(1));
    set_state(&e.conn, "m-maria", Some("lapsing"), "lapsed", e.clock.now());
    e.tick();
    e.dispatch().await;
    assert_eq!(e.receiver.received().len(), 1);
    let second = e.of_rule("m-maria", "last_call")[0].clone();
    assert_eq!(
        (second.status.as_str(), second.reason.as_deref()),
        ("dead", Some("endpoint_disabled"))
    );
    // `deliveries retry` re-enables the endpoint.
    let mut conn = rollcall_cloud::store::open_writer(&e.cfg.data_dir).unwrap();
    rollcall_cloud::delivery::retry(&mut conn, second.delivery_id.unwrap(), e.clock.now()).unwrap();
    e.dispatch().await;
    assert_eq!(e.receiver.accepted().len(), 1);
    assert_eq!(e.of_rule("m-maria", "last_call")[0].status, "sent");
}

#[tokio::test]
async fn a_receiver_that_times_out_is_retried() {
    let mut e = env(
        "2026-05-21T09:00:00Z",
        vec![
            Reply::Slow(std::time::Duration::from_secs(3)),
            Reply::Status(200),
        ],
        |c| c.delivery.request_timeout_ms = 500,
    )
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    e.dispatch().await;
    let id = e.list("m-maria")[0].delivery_id.unwrap();
    let a = rollcall_cloud::delivery::attempts(&e.conn, id).unwrap();
    assert_eq!(a.len(), 1);
    assert!(
        a[0].error.as_deref().unwrap().starts_with("timeout"),
        "{a:?}"
    );
    // Not due yet: the backoff holds it.
    e.dispatch().await;
    assert_eq!(
        rollcall_cloud::delivery::attempts(&e.conn, id)
            .unwrap()
            .len(),
        1
    );
    e.clock.advance(Duration::seconds(2));
    e.dispatch().await;
    let d = rollcall_cloud::delivery::get(&e.conn, id).unwrap().unwrap();
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 2));
}

#[tokio::test]
async fn quiet_hours_hold_the_message_until_eight_local_time_across_the_dst_change() {
    // New York springs forward at 02:00 on Sunday 8 March 2026.
    let mut e = env("2026-03-08T04:00:00Z", vec![], |_| {}).await; // 23:00 EST on the 7th
    add_member(
        &e.conn,
        "m-ny",
        "Sam Carter",
        Some("America/New_York"),
        None,
        "2025-06-01",
    );
    add_usage(&e.conn, "m-ny", 5, "2026-02-27T15:00:00Z", "mocha");
    set_state(&e.conn, "m-ny", None, "active", t("2026-02-01T00:00:00Z"));
    e.tick();
    set_state(&e.conn, "m-ny", Some("active"), "lapsing", e.clock.now());
    let r = e.tick();
    assert_eq!(r.held, 1, "{r:?}");
    let held = e.list("m-ny")[0].clone();
    assert_eq!(
        (held.status.as_str(), held.reason.as_deref()),
        ("held", Some("quiet_hours"))
    );
    // 08:00 EDT is 12:00Z (it would be 13:00Z without the change).
    assert_eq!(held.due_at.as_deref(), Some("2026-03-08T12:00:00+00:00"));
    e.clock.set(t("2026-03-08T11:59:00Z"));
    e.tick();
    e.dispatch().await;
    assert_eq!(e.list("m-ny")[0].status, "held");
    assert!(e.receiver.received().is_empty());
    e.clock.set(t("2026-03-08T12:00:00Z"));
    assert_eq!(e.tick().queued, 1);
    e.dispatch().await;
    assert_eq!(e.list("m-ny")[0].status, "sent");
    assert_eq!(e.receiver.accepted().len(), 1);
    let log = rollcall_cloud::outreach::view::log(&e.conn, held.id).unwrap();
    let steps: Vec<_> = log
        .iter()
        .map(|l| format!("{}:{}", l.step, l.decision))
        .collect();
    assert_eq!(
        steps,
        [
            "plan:planned",
            "consent:pass",
            "quiet_hours:hold",
            "consent:pass",
            "quiet_hours:pass",
            "caps:pass",
            "dedup:pass",
            "queue:queued"
        ]
    );
}

#[tokio::test]
async fn an_unknown_time_zone_falls_back_to_the_business_zone_explicitly() {
    let mut e = env("2026-05-21T05:00:00Z", vec![], |c| {
        c.outreach.business_tz = "Asia/Tokyo".into()
    })
    .await;
    add_member(&e.conn, "m-x", "Kim Park", None, None, "2025-06-01");
    set_state(&e.conn, "m-x", None, "active", t("2026-05-01T00:00:00Z"));
    e.tick();
    set_state(&e.conn, "m-x", Some("active"), "lapsing", e.clock.now());
    e.tick();
    // 05:00Z is 14:00 in Tokyo: not quiet, although it is night in UTC... and logged.
    let m = e.list("m-x")[0].clone();
    assert_eq!(m.status, "queued");
    let log = rollcall_cloud::outreach::view::log(&e.conn, m.id).unwrap();
    assert!(log
        .iter()
        .any(|l| l.step == "timezone" && l.reason.as_deref() == Some("tz_fallback_business")));
}

#[tokio::test]
async fn frequency_caps_count_the_members_calendar_day() {
    let mut e = env("2026-05-21T09:00:00Z", vec![], |c| {
        let mut extra = c.outreach.rules["win_back"].clone();
        extra.priority = 10;
        c.outreach.rules.insert("recipes".into(), extra);
    })
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    let win_back = e.of_rule("m-maria", "win_back")[0].clone();
    let recipes = e.of_rule("m-maria", "recipes")[0].clone();
    assert_eq!(
        win_back.status, "queued",
        "the higher priority takes the cap"
    );
    assert_eq!(
        (recipes.status.as_str(), recipes.reason.as_deref()),
        ("skipped", Some("frequency_cap_daily"))
    );
    // The next calendar day in Berlin has room again (21:59Z is 23:59 CEST: still the 21st).
    e.clock.set(t("2026-05-21T21:59:00Z"));
    set_state(&e.conn, "m-maria", Some("lapsing"), "lapsed", e.clock.now());
    e.tick();
    let last_call = e.of_rule("m-maria", "last_call")[0].clone();
    assert_eq!(
        (last_call.status.as_str(), last_call.reason.as_deref()),
        ("held", Some("quiet_hours"))
    );
    e.clock.set(t("2026-05-22T06:00:00Z")); // 08:00 CEST on the 22nd
    e.tick();
    assert_eq!(e.of_rule("m-maria", "last_call")[0].status, "queued");
}

#[tokio::test]
async fn an_erased_member_gets_no_outreach_though_their_opt_outs_are_gone() {
    let mut e = env("2026-05-21T09:00:00Z", vec![], |_| {}).await;
    e.maria();
    e.tick();
    let id = rollcall_shared::MemberId::parse("m-maria").unwrap();
    let erased = rollcall_cloud::profile::erase(&mut e.conn, &id, e.clock.now())
        .unwrap()
        .unwrap();
    // The pseudonym's usage goes on being scored; a lapse would trigger a win-back.
    set_state(
        &e.conn,
        &erased.pseudonym,
        Some("active"),
        "lapsing",
        e.clock.now(),
    );
    let r = e.tick();
    assert_eq!((r.planned, r.queued), (0, 0), "{r:?}");
    e.dispatch().await;
    let got = e.receiver.accepted();
    assert!(got.is_empty(), "nothing reaches an erased member: {got:?}");
    let rows = e.list(&erased.pseudonym);
    assert!(
        rows.iter()
            .all(|o| o.status != "queued" && o.status != "held"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn an_opt_out_cancels_marketing_already_queued_for_the_member() {
    let mut e = env("2026-05-21T09:00:00Z", vec![], |_| {}).await;
    e.maria();
    e.tick();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    assert_eq!(e.tick().queued, 1);
    let queued = e.of_rule("m-maria", "win_back")[0].clone();
    // She opts out before the dispatcher gets to it (or while it waits to retry).
    rollcall_cloud::outreach::optout::record(
        &e.conn,
        &rollcall_cloud::outreach::optout::OptOut {
            member_id: "m-maria".into(),
            channel: "*".into(),
            category: "marketing".into(),
        },
        "link",
        e.clock.now(),
    )
    .unwrap();
    e.dispatch().await;
    let got = e.receiver.accepted();
    assert!(got.is_empty(), "{got:?}");
    let d = rollcall_cloud::delivery::get(&e.conn, queued.delivery_id.unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.last_error.as_deref()),
        ("cancelled", Some("opted_out"))
    );
}

#[tokio::test]
async fn an_opt_out_link_stops_marketing_but_not_orders() {
    use rollcall_cloud::outreach::triggers::{OrderEvent, OrderTrigger};
    let mut e = env("2026-05-21T09:00:00Z", vec![], |_| {}).await;
    e.maria();
    // The link works over HTTP without any login.
    let url = e.outreach.optout_url("m-maria", "*");
    let token = url.split("token=").nth(1).unwrap().to_owned();
    let mut state =
        rollcall_cloud::http::AppState::new(Arc::new(Metrics::new()), e.cfg.clone()).unwrap();
    state.optout = Some(e.outreach.optout_key().clone());
    state.clock = Arc::new(e.clock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, rollcall_cloud::http::router(state))
            .await
            .unwrap()
    });
    let link = format!("http://{addr}/api/v1/optout?token={token}&utm_source=mail");
    let opted_out = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM consent WHERE member_id = 'm-maria'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    // Opening the link (or a mail scanner fetching it) only asks: nothing is recorded.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let res = http.get(&link).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let page = res.text().await.unwrap();
        assert!(
            page.contains("Stop marketing messages from us by any channel?")
                && page.contains(&format!("<form method=post action=\"?token={token}\">"))
                && page.contains("name=List-Unsubscribe value=One-Click"),
            "{page}"
        );
    }
    assert_eq!(opted_out(&e.conn), 0, "a GET opted her out");
    // The button, or a mail client's one-click unsubscribe (RFC 8058), POSTs to the link.
    let res = http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("no longer receive marketing messages from us by any channel"));
    assert_eq!(opted_out(&e.conn), 1);
    // Again: nothing new (idempotent).
    assert_eq!(http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(opted_out(&e.conn), 1);
    for forged in [
        format!("http://{addr}/api/v1/optout?token=x{token}"),
        format!("http://{addr}/api/v1/optout?token={token}%22%3E"),
    ] {
        assert_eq!(http.get(&forged).send().await.unwrap().status(), 400);
        assert_eq!(http.post(&forged).send().await.unwrap().status(), 400);
    }
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    let w = e.of_rule("m-maria", "win_back")[0].clone();
    assert_eq!(
        (w.status.as_str(), w.reason.as_deref()),
        ("skipped", Some("opted_out"))
    );
    // An order still reaches her, queued in the order's own transaction.
    let tx = e.conn.transaction().unwrap();
    let d = e
        .outreach
        .raise_order(
            &tx,
            &OrderEvent {
                kind: OrderTrigger::Accepted,
                member_id: rollcall_shared::MemberId::parse("m-maria").unwrap(),
                order_id: "ord-7".into(),
                sku: "pods-latte-50".into(),
                amount_minor: 2490,
                currency: "EUR".into(),
                cancellable_until: None,
            },
            e.clock.now(),
        )
        .unwrap();
    tx.commit().unwrap();
    assert!(
        matches!(
            d[..],
            [rollcall_cloud::outreach::engine::Decision::Queued(_)]
        ),
        "{d:?}"
    );
    e.dispatch().await;
    let got = e.receiver.accepted();
    assert_eq!(got.len(), 1);
    assert!(got[0].body["body"]
        .as_str()
        .unwrap()
        .contains("order ord-7 for pods-latte-50 (24.90 EUR)"));
    // Erasure removes her opt-outs; the link still verifies afterwards but brings nothing
    // back under the old id.
    let id = rollcall_shared::MemberId::parse("m-maria").unwrap();
    rollcall_cloud::profile::erase(&mut e.conn, &id, e.clock.now())
        .unwrap()
        .unwrap();
    assert_eq!(opted_out(&e.conn), 0);
    assert_eq!(http.post(&link).send().await.unwrap().status(), 200);
    assert_eq!(
        opted_out(&e.conn),
        0,
        "the link recreated an erased member's opt-out"
    );
}

#[tokio::test]
async fn a_member_flapping_in_and_out_of_lapsing_gets_one_win_back() {
    let mut e = env("2026-05-21T09:00:00Z", vec![], |c| c.outreach.caps.clear()).await;
    e.maria();
    for (old, new) in [
        ("active", "lapsing"),
        ("lapsing", "active"),
        ("active", "lapsing"),
        ("lapsing", "active"),
        ("active", "lapsing"),
    ] {
        set_state(&e.conn, "m-maria", Some(old), new, e.clock.now());
        e.tick();
        e.dispatch().await;
        e.clock.advance(Duration::days(4));
    }
    let wins = e.of_rule("m-maria", "win_back");
    assert_eq!(wins.len(), 3);
    assert_eq!(
        wins.iter().filter(|w| w.status == "sent").count(),
        1,
        "{wins:?}"
    );
    assert!(wins
        .iter()
        .filter(|w| w.status != "sent")
        .all(|w| w.reason.as_deref() == Some("duplicate_episode")));
    assert_eq!(
        e.receiver
            .accepted()
            .iter()
            .filter(|r| r.body["rule"] == "win_back")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_message_is_cancelled_when_the_member_comes_back_before_it_is_sent() {
    let mut e = env("2026-05-21T20:30:00Z", vec![], |_| {}).await; // 22:30 in Berlin: quiet
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    assert_eq!(e.of_rule("m-maria", "win_back")[0].status, "held");
    // She brews at 06:00 and scoring sees it before the quiet hours end.
    e.clock.set(t("2026-05-22T04:00:00Z"));
    set_state(&e.conn, "m-maria", Some("lapsing"), "active", e.clock.now());
    e.tick();
    let w = e.of_rule("m-maria", "win_back")[0].clone();
    assert_eq!(
        (w.status.as_str(), w.reason.as_deref()),
        ("cancelled", Some("no_longer_relevant"))
    );
    // A queued delivery not yet sent is cancelled too.
    e.clock.set(t("2026-06-25T09:00:00Z"));
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    let q = e
        .of_rule("m-maria", "win_back")
        .into_iter()
        .find(|w| w.status == "queued")
        .unwrap();
    set_state(&e.conn, "m-maria", Some("lapsing"), "active", e.clock.now());
    e.tick();
    e.dispatch().await;
    let after = e
        .list("m-maria")
        .into_iter()
        .find(|w| w.id == q.id)
        .unwrap();
    assert_eq!(
        (after.status.as_str(), after.reason.as_deref()),
        ("cancelled", Some("no_longer_relevant"))
    );
    assert!(e
        .receiver
        .accepted()
        .iter()
        .all(|r| r.body["rule"] != "win_back"));
}

#[tokio::test]
async fn an_email_reaches_a_real_smtp_server_with_the_rendered_body() {
    let (smtp, mails) = smtp_server().await;
    let mut e = env("2026-05-21T09:00:00Z", vec![], |c| {
        c.delivery.smtp.host = "127.0.0.1".into();
        c.delivery.smtp.port = smtp.port();
        c.delivery.smtp.security = "none".into();
        c.delivery.smtp.from = "hello@beanthere.example".into();
        c.outreach.public_url = "https://rollcall.beanthere.example".into();
        c.outreach.rules.get_mut("win_back").unwrap().channels =
            vec![rollcall_cloud::delivery::DeliveryChannel::Email];
    })
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    e.dispatch().await;
    let m = e.of_rule("m-maria", "win_back")[0].clone();
    assert_eq!(m.status, "sent", "{m:?}");
    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    // Undo quoted-printable soft breaks and `=` escapes, and header folding.
    let raw = mails[0]
        .replace("=\r\n", "")
        .replace("=3D", "=")
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    assert!(raw.contains("Subject: We miss you, Maria"), "{raw}");
    assert!(raw.contains("To: maria@example.com"), "{raw}");
    assert!(raw.contains("Hi Maria,"), "{raw}");
    assert!(raw.contains("latte"), "{raw}");
    assert!(raw.contains("Message-ID: <outreach."), "{raw}");
    // The mail client's own unsubscribe button: her signed opt-out link, one click
    // (RFC 8058), the same link as in the body.
    let link = e.outreach.optout_url("m-maria", "*");
    assert!(link.starts_with("https://rollcall.beanthere.example/api/v1/optout?token="));
    assert!(
        raw.contains(&format!("List-Unsubscribe: <{link}>\r\n")),
        "{raw}"
    );
    assert!(
        raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
        "{raw}"
    );
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    assert!(body.contains(&link), "{raw}");
}

#[tokio::test]
async fn preview_renders_with_the_real_data_and_sends_nothing() {
    let e = env("2026-05-21T09:00:00Z", vec![], |_| {}).await;
    e.maria();
    let p = e
        .outreach
        .preview(&e.conn, "m-maria", "win_back", e.clock.now())
        .unwrap();
    assert!(
        p.body.contains("Hi Maria") && p.body.contains("latte"),
        "{}",
        p.body
    );
    assert_eq!(p.context["usage"]["days_silent"], 9);
    assert!(e.list("m-maria").is_empty());
}

#[test]
#[ignore = "benchmark: cargo test -p rollcall-cloud --release --test outreach -- --ignored --nocapture"]
fn webhook_delivery_benchmark() {
    let r = rollcall_cloud::delivery::bench::run(5_000).unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.distinct, r.deliveries);
    assert_eq!(r.bad_signatures, 0);
}

#[tokio::test]
async fn a_retry_that_falls_due_in_the_members_quiet_hours_waits_for_their_end() {
    // 20:50 in Berlin: ten minutes before the quiet hours (21:00–08:00).
    let mut e = env(
        "2026-05-21T18:50:00Z",
        vec![Reply::Status(503), Reply::Status(200)],
        |_| {},
    )
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    assert_eq!(e.tick().queued, 1);
    e.dispatch().await;
    assert_eq!(e.receiver.received().len(), 1, "the first attempt fails");
    let id = e.of_rule("m-maria", "win_back")[0].delivery_id.unwrap();
    let quiet: Option<String> = e
        .conn
        .query_row("SELECT quiet FROM deliveries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(quiet.as_deref(), Some("21:00-08:00 Europe/Berlin"));
    // The retry falls due at 21:30: it is not sent, but moved to 08:00 local time.
    e.clock.set(t("2026-05-21T19:30:00Z"));
    e.dispatch().await;
    assert_eq!(e.receiver.received().len(), 1, "a retry went out at night");
    let d = rollcall_cloud::delivery::get(&e.conn, id).unwrap().unwrap();
    assert_eq!(d.status, "pending");
    assert_eq!(
        d.last_error.as_deref(),
        Some("quiet_hours: waits until 2026-05-22T06:00:00+00:00")
    );
    let not_before: i64 = e
        .conn
        .query_row(
            "SELECT not_before_ms FROM deliveries WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(not_before, t("2026-05-22T06:00:00Z").timestamp_millis());
    e.clock.set(t("2026-05-22T05:59:00Z"));
    e.dispatch().await;
    assert_eq!(e.receiver.received().len(), 1);
    // 08:00 CEST: the retry goes out, once, and succeeds.
    e.clock.set(t("2026-05-22T06:00:00Z"));
    e.dispatch().await;
    assert_eq!(e.receiver.accepted().len(), 1);
    let d = rollcall_cloud::delivery::get(&e.conn, id).unwrap().unwrap();
    assert_eq!((d.status.as_str(), d.attempts), ("delivered", 2));
    // The window names her time zone: an erasure removes it with the payload.
    let member = rollcall_shared::MemberId::parse("m-maria").unwrap();
    rollcall_cloud::profile::erase(&mut e.conn, &member, e.clock.now())
        .unwrap()
        .unwrap();
    let quiet: Option<String> = e
        .conn
        .query_row("SELECT quiet FROM deliveries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(quiet, None);
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_goes_dead_after_the_last_attempt() {
    let mut e = env("2026-05-21T09:00:00Z", vec![Reply::Status(500)], |c| {
        c.delivery.max_attempts = 3;
    })
    .await;
    e.maria();
    set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
    e.tick();
    for _ in 0..10 {
        e.dispatch().await;
        e.clock.advance(Duration::minutes(2));
    }
    assert_eq!(e.receiver.received().len(), 3);
    let m = e.list("m-maria")[0].clone();
    assert_eq!(
        (m.status.as_str(), m.reason.as_deref(), m.attempts),
        ("dead", Some("HTTP 500"), 3)
    );
    let dead = rollcall_cloud::delivery::list(
        &e.conn,
        Some(rollcall_cloud::delivery::DeliveryStatus::Dead),
        10,
    )
    .unwrap();
    assert_eq!(dead.len(), 1);
}

#[tokio::test]
async fn the_weekly_cap_counts_the_members_iso_week() {
    let mut e = env("2026-05-18T09:00:00Z", vec![], |c| {
        // Monday 18 May 2026; one a day, two a week.
        c.outreach
            .caps
            .get_mut(&rollcall_cloud::outreach::Category::Marketing)
            .unwrap()
            .per_week = 2;
        c.outreach.episode_gap_days = 0;
    })
    .await;
    e.maria();
    let mut statuses = Vec::new();
    for day in 0..3 {
        set_state(&e.conn, "m-maria", Some("active"), "lapsing", e.clock.now());
        e.tick();
        set_state(
            &e.conn,
            "m-maria",
            Some("lapsing"),
            "active",
            e.clock.now() + Duration::hours(1),
        );
        e.clock.advance(Duration::hours(1));
        e.dispatch().await;
        e.tick();
        statuses.push((
            day,
            e.of_rule("m-maria", "win_back")[0].status.clone(),
            e.of_rule("m-maria", "win_back")[0].reason.clone(),
        ));
        e.clock.advance(Duration::hours(23));
    }
    assert_eq!(statuses[0].1, "sent");
    assert_eq!(statuses[1].1, "sent");
    assert_eq!(
        (statuses[2].1.as_str(), statuses[2].2.as_deref()),
        ("skipped", Some("frequency_cap_weekly"))
    );
}

#[tokio::test]
async fn events_of_a_held_report_released_a_day_later_trigger_their_milestone_exactly_once() {
    use rollcall_cloud::ingest::{self, Checked, Inbound};
    use rollcall_shared::dsse::{KeyPair, USAGE_PAYLOAD_TYPE};
    use rollcall_shared::payload::{UsageEvent, UsageReport};
    use rollcall_shared::topics::Topics;
    use rollcall_shared::{DeviceId, EventKind, MemberId, Seq};

    let mut e = env("2026-05-18T09:00:00Z", vec![], |c| {
        c.outreach.milestone_uses = 3;
    })
    .await;
    add_member(
        &e.conn,
        "m-maria",
        "Maria Lopez",
        Some("UTC"),
        None,
        "2025-01-10",
    );
    assert_eq!(e.tick().triggers, 0);

    // The machine reports its third use before it is registered: the report is held.
    let key = KeyPair::generate();
    let device = DeviceId::parse("dev-maria").unwrap();
    let topics = Topics::default();
    let at = e.clock.now();
    let report = UsageReport {
        v: 1,
        device_id: device.clone(),
        report_seq: 1,
        sent_at: at,
        boot_id: "b".into(),
        events: (1..=3)
            .map(|s| UsageEvent {
                seq: Seq::new(s).unwrap(),
                kind: EventKind::parse("brew").unwrap(),
                qty: 1,
                occurred_at: at - Duration::minutes(10 - s as i64),
                attrs: Default::default(),
                clock_suspect: false,
            })
            .collect(),
    };
    let msg = Inbound {
        topic: topics.usage(&device),
        payload: key.sign(USAGE_PAYLOAD_TYPE, &report.encode()).to_json(),
        received_at: at,
    };
    let held = ingest::check(&topics, msg, &|_| None);
    assert!(matches!(&held, Checked::Rejected(r) if r.held));
    ingest::commit(&mut e.conn, &[held], 4096, None).unwrap();

    // The outreach planner keeps looking all day; nothing is there yet.
    for _ in 0..4 {
        e.clock.advance(Duration::hours(6));
        assert_eq!(e.tick().triggers, 0);
    }

    // A day later the device is registered and its report released (events stamped with
    // the time they were first received): the milestone is celebrated, once.
    rollcall_cloud::registry::add_device(
        &e.conn,
        &device,
        &MemberId::parse("m-maria").unwrap(),
        &key.public(),
        e.clock.now(),
    )
    .unwrap();
    let (released, out) = ingest::release_held(&mut e.conn, &topics, &device, 4096).unwrap();
    assert_eq!((released, out.events_stored), (1, 3));
    e.clock.advance(Duration::minutes(1));
    assert_eq!(e.tick().triggers, 1);
    for _ in 0..3 {
        e.clock.advance(Duration::hours(1));
        assert_eq!(e.tick().triggers, 0);
    }
    let celebrated = e.of_rule("m-maria", "hundredth_use");
    assert_eq!(celebrated.len(), 1, "{celebrated:?}");
}

/// "You can still cancel" held through the member's night must not come out once the
/// order is cancelled, or once the window it announces has closed.
#[tokio::test]
async fn a_held_cancellable_notice_is_withdrawn_when_the_order_is_cancelled_or_the_window_closes() {
    use rollcall_cloud::outreach::triggers::{OrderEvent, OrderTrigger};
    // 23:30 in Berlin: quiet hours.
    let mut e = env("2026-05-21T21:30:00Z", vec![], |_| {}).await;
    e.maria();
    let notice = |e: &mut Env, order: &str, hours: i64| {
        let now = e.clock.now();
        let tx = e.conn.transaction().unwrap();
        e.outreach
            .raise_order(
                &tx,
                &OrderEvent {
                    kind: OrderTrigger::Cancellable,
                    member_id: rollcall_shared::MemberId::parse("m-maria").unwrap(),
                    order_id: order.into(),
                    sku: "pods-latte-50".into(),
                    amount_minor: 2490,
                    currency: "EUR".into(),
                    cancellable_until: Some(now + Duration::hours(hours)),
                },
                now,
            )
            .unwrap();
        tx.commit().unwrap();
    };
    notice(&mut e, "ord-1", 24);
    notice(&mut e, "ord-2", 2);
    let held = |e: &Env| {
        e.of_rule("m-maria", "order_cancellable")
            .into_iter()
            .map(|o| (o.status, o.reason))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        held(&e),
        [
            ("held".into(), Some("quiet_hours".into())),
            ("held".into(), Some("quiet_hours".into()))
        ]
    );
    // ord-1 is cancelled at night.
    let tx = e.conn.transaction().unwrap();
    let n = rollcall_cloud::outreach::engine::withdraw_order_messages(
        &tx,
        "ord-1",
        true,
        e.clock.now(),
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(n, 1);
    // 09:00 in Berlin: ord-2's window closed at 01:30.
    e.clock.set(t("2026-05-22T07:00:00Z"));
    e.tick();
    e.dispatch().await;
    assert!(
        e.receiver.accepted().is_empty(),
        "{:?}",
        e.receiver.accepted()
    );
    assert_eq!(
        held(&e),
        [
            ("cancelled".into(), Some("no_longer_relevant".into())),
            ("cancelled".into(), Some("no_longer_relevant".into()))
        ]
    );
}
