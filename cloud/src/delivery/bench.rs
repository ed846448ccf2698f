//! The webhook throughput benchmark: `n` deliveries enqueued in one transaction, sent
//! by the real dispatcher to a local receiver that verifies every Standard Webhooks
//! signature and counts each `webhook-id`. The target is at least 1,000 deliveries per
//! second with no duplicate.

use super::dispatcher::{Channels, Dispatcher, Outcome};
use super::webhook::{self, WebhookSecret, WebhookSender};
use super::{enqueue, DeliveryChannel, IdempotencyKey, NewDelivery};
use crate::config::{DeliveryConfig, Secret, WebhookConfig};
use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use rollcall_shared::{Clock, SystemClock};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// Deliveries enqueued.
    pub deliveries: usize,
    /// Seconds from the first claim to the last delivery recorded.
    pub seconds: f64,
    /// Deliveries per second.
    pub per_second: f64,
    /// Requests the receiver accepted (valid signature).
    pub received: usize,
    /// Distinct `webhook-id`s received.
    pub distinct: usize,
    /// Ids received more than once.
    pub duplicates: usize,
    /// Requests with a bad signature (must be 0).
    pub bad_signatures: usize,
    /// Attempts recorded in the store.
    pub attempts_recorded: u64,
}

#[derive(Default)]
struct Seen {
    ids: HashMap<String, u32>,
    bad: usize,
}

/// Runs the benchmark with `n` deliveries (builds its own runtime; call from sync code).
pub fn run(n: usize) -> anyhow::Result<BenchResult> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run_async(n))
}

/// Runs the benchmark on the current runtime.
pub async fn run_async(n: usize) -> anyhow::Result<BenchResult> {
    let secret = WebhookSecret::from_bytes(&[42u8; 32]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (s2, k2) = (seen.clone(), secret.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (seen, secret) = (s2.clone(), k2.clone());
            async move {
                let h = |k: &str| {
                    headers
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let id = h("webhook-id");
                let ok = webhook::verify(
                    &secret,
                    &id,
                    &h("webhook-timestamp"),
                    &h("webhook-signature"),
                    &body,
                    SystemClock.now(),
                )
                .is_ok();
                let mut s = seen.lock().expect("lock");
                if ok {
                    *s.ids.entry(id).or_default() += 1;
                    StatusCode::NO_CONTENT
                } else {
                    s.bad += 1;
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile_dir()?;
    let mut conn = crate::store::open_writer(&dir.0)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let tx = conn.transaction()?;
    for i in 0..n {
        enqueue(
            &tx,
            NewDelivery {
                channel: DeliveryChannel::Webhook,
                target: "bench".into(),
                idempotency_key: IdempotencyKey::parse(&format!("bench:{i}"))?,
                payload: serde_json::json!({"type": "bench", "n": i, "text": "Hi Maria, your machine has been quiet since Tuesday"}),
                not_before: now,
                purpose: "bench".into(),
                quiet: None,
            },
        )?;
    }
    tx.commit()?;
    let cfg = DeliveryConfig {
        allow_private_addresses: true,
        batch_size: 512,
        concurrency: 64,
        ..DeliveryConfig::default()
    };
    let hook = WebhookConfig {
        name: "bench".into(),
        url: format!("http://{addr}/hook"),
        secrets: vec![Secret::new(secret.to_whsec())],
    };
    let channels = Channels {
        webhook: Some(WebhookSender::new(&cfg, &[hook])?),
        ..Channels::default()
    };
    let d = Dispatcher::new(
        crate::store::open_writer(&dir.0)?,
        cfg,
        clock,
        channels,
        Arc::new(Metrics::new()),
    )?;
    let t0 = Instant::now();
    while let Outcome::Worked(_) = d.dispatch_once().await? {}
    let seconds = t0.elapsed().as_secs_f64();
    server.abort();
    let attempts: i64 =
        conn.query_row("SELECT COUNT(*) FROM delivery_attempts", [], |r| r.get(0))?;
    let s = seen.lock().expect("lock");
    let received: u32 = s.ids.values().sum();
    Ok(BenchResult {
        deliveries: n,
        seconds,
        per_second: n as f64 / seconds.max(1e-9),
        received: received as usize,
        distinct: s.ids.len(),
        duplicates: s.ids.values().filter(|c| **c > 1).count(),
        bad_signatures: s.bad,
        attempts_recorded: attempts as u64,
    })
}

/// A temporary directory removed on drop (the cloud crate has no tempfile dependency).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> std::io::Result<TempDir> {
    let p = std::env::temp_dir().join(format!(
        "rollcall-delivery-bench-{:016x}",
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}
