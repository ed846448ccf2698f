//! Shared helpers for the outreach and delivery tests: a real local webhook receiver that
//! verifies Standard Webhooks signatures, a real (tiny) SMTP server, and store fixtures.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use rollcall_cloud::config::{CloudConfig, Secret, WebhookConfig};
use rollcall_cloud::delivery::webhook::{self, WebhookSecret};
use rusqlite::{params, Connection};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver answers, in order; the last one repeats.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Sleep this long, then answer 200.
    Slow(Duration),
}

/// A request the receiver accepted (valid signature).
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Default)]
struct ReceiverState {
    replies: VecDeque<Reply>,
    last: Option<Reply>,
    received: Vec<Received>,
    bad_signatures: usize,
    started: usize,
}

/// A local HTTP receiver of Standard Webhooks.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub secret: WebhookSecret,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start(replies: Vec<Reply>, clock: Arc<dyn rollcall_shared::Clock>) -> Self {
        let secret = WebhookSecret::from_bytes(&[9u8; 32]);
        let state = Arc::new(Mutex::new(ReceiverState {
            replies: replies.into(),
            ..Default::default()
        }));
        let (st, key) = (state.clone(), secret.clone());
        let clock2 = clock.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (st, key, clock) = (st.clone(), key.clone(), clock2.clone());
                async move {
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let id = h("webhook-id");
                    if webhook::verify(
                        &key,
                        &id,
                        &h("webhook-timestamp"),
                        &h("webhook-signature"),
                        &body,
                        clock.now(),
                    )
                    .is_err()
                    {
                        st.lock().unwrap().bad_signatures += 1;
                        return StatusCode::UNAUTHORIZED;
                    }
                    let reply = {
                        let mut s = st.lock().unwrap();
                        s.started += 1;
                        let r = s
                            .replies
                            .pop_front()
                            .or(s.last)
                            .unwrap_or(Reply::Status(200));
                        s.last = Some(r);
                        r
                    };
                    let status = match reply {
                        Reply::Status(c) => c,
                        Reply::Slow(d) => {
                            tokio::time::sleep(d).await;
                            200
                        }
                    };
                    st.lock().unwrap().received.push(Received {
                        id,
                        status,
                        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                    });
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            addr,
            secret,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn webhook(&self, name: &str) -> WebhookConfig {
        WebhookConfig {
            name: name.into(),
            url: self.url(),
            secrets: vec![Secret::new(self.secret.to_whsec())],
        }
    }

    /// Every request answered (any status), in order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Requests being answered right now (arrived, not yet answered).
    pub fn in_progress(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.started - s.received.len()
    }

    pub fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }
}

/// A config for tests: loopback allowed, short backoff, webhooks given.
pub fn config(dir: &std::path::Path, hooks: Vec<WebhookConfig>) -> CloudConfig {
    let mut cfg = CloudConfig {
        data_dir: dir.to_owned(),
        ..Default::default()
    };
    cfg.outreach.webhooks = hooks;
    cfg.outreach.business_name = "Bean There".into();
    cfg.delivery.allow_private_addresses = true;
    cfg.delivery.backoff_initial_ms = 1_000;
    cfg.delivery.backoff_max_ms = 60_000;
    cfg.delivery.request_timeout_ms = 2_000;
    cfg
}

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn add_member(
    conn: &Connection,
    id: &str,
    name: &str,
    tz: Option<&str>,
    email: Option<&str>,
    joined: &str,
) {
    conn.execute(
        "INSERT INTO members (id, name, email, tz, joined_ms, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, name, email, tz, t(&format!("{joined}T00:00:00Z")).timestamp_millis()],
    )
    .unwrap();
}

/// `n` uses of `kind` with `drink=...`, one a day ending on `last_day`.
pub fn add_usage(conn: &Connection, member: &str, n: i64, last_day: &str, drink: &str) {
    let last = t(last_day);
    for i in 0..n {
        let at = last - chrono::Duration::days(n - 1 - i);
        conn.execute(
            "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, attrs, fingerprint)
             VALUES (?1, (SELECT COUNT(*) + 1 FROM events), ?2, 'brew', 1, ?3, ?3, ?4, 0)",
            params![format!("import:{member}"), member, at.timestamp_millis(), format!(r#"{{"drink":"{drink}"}}"#)],
        )
        .unwrap();
    }
}

/// What scoring writes when a member changes state.
pub fn set_state(conn: &Connection, member: &str, old: Option<&str>, new: &str, at: DateTime<Utc>) {
    let ms = at.timestamp_millis();
    conn.execute(
        "INSERT INTO member_scores (member_id, as_of_ms, state, state_since_ms, score, p_engaged, p_silent_14d, p_silent_30d,
            expected_active_days_30d, rhythm_per_week, days_since_last, tenure_days, active_days, reasons)
         VALUES (?1, ?2, ?3, ?2, 30, 0.4, 0.6, 0.5, 3.0, 4.0, 9, 100, 40, '[\"No activity for 9 days.\"]')
         ON CONFLICT(member_id) DO UPDATE SET state = excluded.state, as_of_ms = excluded.as_of_ms, state_since_ms = excluded.state_since_ms",
        params![member, ms, new],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO state_transitions (member_id, at_ms, old_state, new_state, score, p_engaged, p_silent_14d,
            days_since_last, tenure_days, active_days, reasons)
         VALUES (?1, ?2, ?3, ?4, 30, 0.4, 0.6, 9, 100, 40, '[]')",
        params![member, ms, old, new],
    )
    .unwrap();
}

/// A tiny but real SMTP server (RFC 5321 happy path): records each message's DATA.
pub async fn smtp_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let m = mails.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let m = m.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 localhost ESMTP test\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") {
                        b"250-localhost\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("HELO")
                        || cmd.starts_with("MAIL FROM")
                        || cmd.starts_with("RCPT TO")
                        || cmd.starts_with("RSET")
                        || cmd.starts_with("NOOP")
                    {
                        b"250 OK\r\n"
                    } else if cmd == "DATA" {
                        w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                            .await
                            .unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).await.unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        }
                        m.lock().unwrap().push(data);
                        b"250 OK queued\r\n"
                    } else if cmd == "QUIT" {
                        w.write_all(b"221 Bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"502 Command not implemented\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, mails)
}
