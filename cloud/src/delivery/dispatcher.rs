//! The dispatcher: claim due deliveries → deliver them concurrently → record every
//! attempt and the next state, one step at a time ([`Dispatcher::dispatch_once`]), and
//! the loop `serve` runs ([`Dispatcher::run`]).

use super::device::DeviceSender;
use super::email::EmailSender;
use super::webhook::WebhookSender;
use super::{DeliveryChannel, DeliveryError};
use crate::config::DeliveryConfig;
use crate::metrics::{DeliveryLabel, Metrics};
use chrono::{DateTime, Utc};
use rollcall_shared::Clock;
use rusqlite::{params, Connection, TransactionBehavior};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The result of one attempt, as a channel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Accepted by the receiver (2xx, SMTP 250).
    Delivered {
        /// The status code, if the channel has one.
        code: Option<u16>,
    },
    /// Handed to the device's downlink; delivered when the agent's receipt comes.
    Published,
    /// Failed in a way a later attempt may fix (5xx, 4xx other than 410, timeout, refused connection).
    Retry {
        /// The status code, if any.
        code: Option<u16>,
        /// What went wrong.
        error: String,
    },
    /// HTTP 410: the endpoint is gone; it is disabled.
    Gone {
        /// The status code (410).
        code: u16,
    },
    /// Cannot ever succeed (unknown endpoint, SSRF refusal, bad address, bad payload).
    Permanent {
        /// What is wrong.
        error: String,
    },
}

impl Attempt {
    fn outcome(&self) -> &'static str {
        match self {
            Attempt::Delivered { .. } => "delivered",
            Attempt::Published => "published",
            Attempt::Retry { .. } => "retry",
            Attempt::Gone { .. } => "gone",
            Attempt::Permanent { .. } => "permanent",
        }
    }
}

/// The channel senders the dispatcher can use; a missing one fails its deliveries for good.
#[derive(Debug, Clone, Default)]
pub struct Channels {
    /// Webhooks.
    pub webhook: Option<WebhookSender>,
    /// E-mail.
    pub email: Option<EmailSender>,
    /// Device display messages.
    pub device: Option<DeviceSender>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepReport {
    /// Rows claimed.
    pub claimed: u64,
    /// Delivered.
    pub delivered: u64,
    /// Published to devices (awaiting receipts).
    pub published: u64,
    /// Scheduled for another attempt.
    pub retried: u64,
    /// Due inside their quiet hours, so moved to the end of them.
    pub deferred: u64,
    /// Given up.
    pub dead: u64,
}

/// What [`Dispatcher::dispatch_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was due.
    Idle,
    /// Something was done.
    Worked(StepReport),
}

struct Claimed {
    id: i64,
    channel: DeliveryChannel,
    target: String,
    key: String,
    payload: String,
    n: u32,
}

/// Claims, delivers and records.
pub struct Dispatcher {
    conn: Arc<Mutex<Connection>>,
    cfg: DeliveryConfig,
    clock: Arc<dyn Clock>,
    channels: Channels,
    metrics: Arc<Metrics>,
    notify: Arc<Notify>,
}

impl Dispatcher {
    /// A dispatcher writing through `conn` (a writer connection of its own). There is one
    /// dispatcher per store: rows left `in_flight` by a previous run (a crash) are released
    /// now, their attempt already counted.
    pub fn new(
        conn: Connection,
        cfg: DeliveryConfig,
        clock: Arc<dyn Clock>,
        channels: Channels,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeliveryError> {
        let now = clock.now().timestamp_millis();
        let n = conn.execute(
            "UPDATE deliveries SET status = 'pending', lease_until_ms = NULL, not_before_ms = MIN(not_before_ms, ?1),
                last_error = 'interrupted: the cloud stopped during the attempt', updated_ms = ?1
             WHERE status = 'in_flight'",
            [now],
        )?;
        if n > 0 {
            tracing::warn!(deliveries = n, "Re-queued deliveries interrupted by a stop; receivers deduplicate by idempotency key");
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            cfg,
            clock,
            channels,
            metrics,
            notify: Arc::new(Notify::new()),
        })
    }

    /// Notify it to look for work at once (after enqueueing).
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DeliveryError> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("dispatcher connection")))
            .await
            .expect("dispatcher store task does not panic")
    }

    /// One step: claim up to `batch_size` due deliveries, deliver them (at most
    /// `concurrency` at once), record the attempts and next states.
    pub async fn dispatch_once(&self) -> Result<Outcome, DeliveryError> {
        let now = self.clock.now();
        let batch = self.cfg.batch_size;
        let lease_ms = (self.cfg.request_timeout_ms + self.cfg.connect_timeout_ms + 30_000) as i64;
        let max = self.cfg.max_attempts;
        let (claimed, mut report) = self
            .db(move |c| claim(c, now, batch, lease_ms, max))
            .await?;
        if claimed.is_empty() && report == StepReport::default() {
            return Ok(Outcome::Idle);
        }
        report.claimed += claimed.len() as u64;
        let sem = Arc::new(Semaphore::new(self.cfg.concurrency));
        let mut set = tokio::task::JoinSet::new();
        for d in claimed {
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            let channels = self.channels.clone();
            let clock = self.clock.clone();
            set.spawn(async move {
                let started_at = clock.now();
                let t0 = Instant::now();
                let attempt = deliver(&channels, &d, started_at).await;
                drop(permit);
                (d, started_at, t0.elapsed(), attempt)
            });
        }
        let mut results = Vec::new();
        while let Some(r) = set.join_next().await {
            results.push(r.expect("delivery tasks do not panic"));
        }
        for (d, _, latency, a) in &results {
            self.metrics
                .delivery_attempts
                .get_or_create(&DeliveryLabel {
                    channel: d.channel.name().into(),
                    outcome: a.outcome().into(),
                })
                .inc();
            self.metrics
                .delivery_latency_seconds
                .observe(latency.as_secs_f64());
        }
        let cfg = self.cfg.clone();
        let now = self.clock.now();
        let step = self.db(move |c| record(c, &results, &cfg, now)).await?;
        report.delivered += step.delivered;
        report.published += step.published;
        report.retried += step.retried;
        report.dead += step.dead;
        Ok(Outcome::Worked(report))
    }

    /// Steps until `shutdown`: at once while there is work, else every
    /// `poll_interval_ms` or when notified. A failing store is retried after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        let idle = Duration::from_millis(self.cfg.poll_interval_ms);
        loop {
            let wait = match self.dispatch_once().await {
                Ok(Outcome::Worked(r)) => {
                    tracing::debug!(?r, "Dispatched deliveries");
                    None
                }
                Ok(Outcome::Idle) => Some(idle),
                Err(e) => {
                    tracing::warn!(error = %e, "Delivery step failed; retrying");
                    Some(idle.max(Duration::from_secs(1)))
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(w) = wait {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep(w) => {}
                }
            }
        }
        tracing::info!("Delivery dispatcher stopped");
    }
}

async fn deliver(channels: &Channels, d: &Claimed, now: DateTime<Utc>) -> Attempt {
    let missing = |what: &str| Attempt::Permanent {
        error: format!("the {what} channel is not configured"),
    };
    match d.channel {
        DeliveryChannel::Webhook => match &channels.webhook {
            Some(w) => w.send(&d.target, &d.key, d.payload.clone(), now).await,
            None => missing("webhook"),
        },
        DeliveryChannel::Email => match &channels.email {
            Some(e) => e.send(&d.target, &d.key, &d.payload).await,
            None => missing("e-mail"),
        },
        DeliveryChannel::Device => match &channels.device {
            Some(s) => s.send(&d.target, &d.key, &d.payload, now).await,
            None => missing("device"),
        },
    }
}

/// Claims due rows; rows that may not be tried again (disabled endpoint, attempts used up
/// while awaiting a receipt) go `dead` here and are counted in the report.
fn claim(
    conn: &mut Connection,
    now: DateTime<Utc>,
    batch: usize,
    lease_ms: i64,
    max_attempts: u32,
) -> Result<(Vec<Claimed>, StepReport), DeliveryError> {
    let now_ms = now.timestamp_millis();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rows = Vec::new();
    let mut report = StepReport::default();
    {
        let mut due = tx.prepare_cached(
            "SELECT d.id, d.channel, d.target, d.idempotency_key, d.payload, d.attempts, d.extra_attempts, d.status,
                    e.reason IS NOT NULL, d.quiet
             FROM deliveries d LEFT JOIN delivery_endpoints e ON e.channel = d.channel AND e.target = d.target
             WHERE d.status IN ('pending', 'awaiting_ack') AND d.not_before_ms <= ?1
             ORDER BY d.not_before_ms LIMIT CAST(?2 AS INTEGER)",
        )?;
        let mut expired = tx.prepare_cached(
            "SELECT d.id, d.channel, d.target, d.idempotency_key, d.payload, d.attempts, d.extra_attempts, d.status,
                    e.reason IS NOT NULL, d.quiet
             FROM deliveries d LEFT JOIN delivery_endpoints e ON e.channel = d.channel AND e.target = d.target
             WHERE d.status = 'in_flight' AND d.lease_until_ms <= ?1 LIMIT CAST(?2 AS INTEGER)",
        )?;
        let map = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, bool>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        };
        let mut found: Vec<_> = due
            .query_map(params![now_ms, batch as i64], map)?
            .collect::<Result<_, _>>()?;
        let room = batch.saturating_sub(found.len()) as i64;
        if room > 0 {
            found.extend(
                expired
                    .query_map(params![now_ms, room], map)?
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        let mut dead = tx.prepare_cached(
            "UPDATE deliveries SET status = 'dead', last_error = ?2, lease_until_ms = NULL, updated_ms = ?3 WHERE id = ?1",
        )?;
        let mut take = tx.prepare_cached(
            "UPDATE deliveries SET status = 'in_flight', attempts = attempts + 1, lease_until_ms = ?2, updated_ms = ?3 WHERE id = ?1",
        )?;
        // A row due inside its quiet hours waits for their end; an expired lease goes back
        // to `pending` (its attempt is already counted), an unacknowledged device message
        // stays `awaiting_ack`.
        let mut defer = tx.prepare_cached(
            "UPDATE deliveries SET status = CASE status WHEN 'in_flight' THEN 'pending' ELSE status END,
                not_before_ms = ?2, lease_until_ms = NULL, last_error = ?3, updated_ms = ?4 WHERE id = ?1",
        )?;
        for (id, channel, target, key, payload, attempts, extra, status, disabled, quiet) in found {
            let limit = max_attempts as i64 + extra;
            if disabled {
                dead.execute(params![id, "endpoint_disabled", now_ms])?;
                report.dead += 1;
                continue;
            }
            if attempts >= limit {
                let why = if status == "awaiting_ack" {
                    "no receipt from the device after the last attempt"
                } else {
                    "attempts exhausted"
                };
                dead.execute(params![id, why, now_ms])?;
                report.dead += 1;
                continue;
            }
            let Some(channel) = DeliveryChannel::parse(&channel) else {
                dead.execute(params![id, format!("unknown channel {channel:?}"), now_ms])?;
                report.dead += 1;
                continue;
            };
            // Only a row that would really be sent waits out its quiet hours.
            let window = quiet.as_deref().and_then(|q| {
                let w = super::QuietWindow::parse_column(q);
                if w.is_none() {
                    tracing::warn!(
                        delivery = id,
                        quiet = q,
                        "Unreadable quiet hours on a delivery; sending it without them"
                    );
                }
                w
            });
            if let Some(end) = window.and_then(|w| w.ends_after(now)) {
                let why = format!("quiet_hours: waits until {}", end.to_rfc3339());
                defer.execute(params![id, end.timestamp_millis(), why, now_ms])?;
                report.deferred += 1;
                continue;
            }
            take.execute(params![id, now_ms + lease_ms, now_ms])?;
            rows.push(Claimed {
                id,
                channel,
                target,
                key,
                payload,
                n: attempts as u32 + 1,
            });
        }
    }
    tx.commit()?;
    Ok((rows, report))
}

fn record(
    conn: &mut Connection,
    results: &[(Claimed, DateTime<Utc>, Duration, Attempt)],
    cfg: &DeliveryConfig,
    now: DateTime<Utc>,
) -> Result<StepReport, DeliveryError> {
    let now_ms = now.timestamp_millis();
    let backoff = cfg.backoff();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut report = StepReport::default();
    {
        let mut att = tx.prepare_cached(
            "INSERT INTO delivery_attempts (delivery_id, n, started_ms, latency_ms, outcome, status_code, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (d, started, latency, a) in results {
            let (code, error) = match a {
                Attempt::Delivered { code } => (*code, None),
                Attempt::Published => (None, None),
                Attempt::Retry { code, error } => (*code, Some(error.clone())),
                Attempt::Gone { code } => (Some(*code), Some("endpoint_gone".to_owned())),
                Attempt::Permanent { error } => (None, Some(error.clone())),
            };
            att.execute(params![
                d.id,
                d.n,
                started.timestamp_millis(),
                latency.as_millis() as i64,
                a.outcome(),
                code,
                error
            ])?;
            // Only rows still in flight are moved on: a receipt may already have marked a
            // device message delivered.
            match a {
                Attempt::Delivered { code } => {
                    tx.execute(
                        "UPDATE deliveries SET status = 'delivered', delivered_ms = ?2, last_status_code = ?3,
                            last_error = NULL, lease_until_ms = NULL, updated_ms = ?2
                         WHERE id = ?1 AND status = 'in_flight'",
                        params![d.id, now_ms, code],
                    )?;
                    report.delivered += 1;
                }
                Attempt::Published => {
                    let due = now_ms + cfg.device_ack_timeout_s as i64 * 1000;
                    tx.execute(
                        "UPDATE deliveries SET status = 'awaiting_ack', not_before_ms = ?2, lease_until_ms = NULL, updated_ms = ?3
                         WHERE id = ?1 AND status = 'in_flight'",
                        params![d.id, due, now_ms],
                    )?;
                    report.published += 1;
                }
                Attempt::Retry { code, error } => {
                    let limit: i64 = tx.query_row(
                        "SELECT extra_attempts FROM deliveries WHERE id = ?1",
                        [d.id],
                        |r| r.get(0),
                    )?;
                    if d.n as i64 >= cfg.max_attempts as i64 + limit {
                        tx.execute(
                            "UPDATE deliveries SET status = 'dead', last_status_code = ?2, last_error = ?3,
                                lease_until_ms = NULL, updated_ms = ?4 WHERE id = ?1 AND status = 'in_flight'",
                            params![d.id, code, error, now_ms],
                        )?;
                        report.dead += 1;
                    } else {
                        let next = now_ms + backoff.delay(d.n).as_millis() as i64;
                        tx.execute(
                            "UPDATE deliveries SET status = 'pending', not_before_ms = ?2, last_status_code = ?3,
                                last_error = ?4, lease_until_ms = NULL, updated_ms = ?5 WHERE id = ?1 AND status = 'in_flight'",
                            params![d.id, next, code, error, now_ms],
                        )?;
                        report.retried += 1;
                    }
                }
                Attempt::Gone { code } => {
                    tx.execute(
                        "INSERT INTO delivery_endpoints (channel, target, disabled_ms, reason) VALUES (?1, ?2, ?3, 'gone')
                         ON CONFLICT(channel, target) DO NOTHING",
                        params![d.channel.name(), d.target, now_ms],
                    )?;
                    tx.execute(
                        "UPDATE deliveries SET status = 'dead', last_status_code = ?2, last_error = 'endpoint_gone',
                            lease_until_ms = NULL, updated_ms = ?3 WHERE id = ?1 AND status = 'in_flight'",
                        params![d.id, code, now_ms],
                    )?;
                    tracing::warn!(channel = %d.channel, target = %d.target, "Endpoint answered 410 Gone; disabled until `deliveries retry`");
                    report.dead += 1;
                }
                Attempt::Permanent { error } => {
                    tx.execute(
                        "UPDATE deliveries SET status = 'dead', last_error = ?2, lease_until_ms = NULL, updated_ms = ?3
                         WHERE id = ?1 AND status = 'in_flight'",
                        params![d.id, error, now_ms],
                    )?;
                    report.dead += 1;
                }
            }
        }
    }
    tx.commit()?;
    Ok(report)
}

/// Marks device messages delivered when the agent's receipt names them (idempotent).
pub fn mark_received(
    conn: &Connection,
    device_id: &str,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<u64, DeliveryError> {
    let mut st = conn.prepare_cached(
        "UPDATE deliveries SET status = 'delivered', delivered_ms = ?3, last_error = NULL, lease_until_ms = NULL, updated_ms = ?3
         WHERE channel = 'device' AND target = ?1 AND idempotency_key = ?2
           AND status IN ('pending', 'in_flight', 'awaiting_ack')",
    )?;
    let mut n = 0;
    for k in keys {
        n += st.execute(params![device_id, k, now.timestamp_millis()])? as u64;
    }
    Ok(n)
}
