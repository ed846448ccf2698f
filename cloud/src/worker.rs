//! The ingest worker: an MQTT subscriber feeding a pipeline of three threads (check,
//! commit, sign downlinks), and an MQTT publisher for acks. The same client code serves
//! the embedded and external brokers.
//!
//! ```text
//! broker ──► subscriber task ──(bounded queue)──► check thread (signatures in parallel)
//!        ──► writer thread (commit) ──► downlink thread (sign) ──► publisher task ──► broker
//! ```
//! The subscriber takes `.../usage`, `.../status` and `.../tx`. After each commit the
//! downlink thread publishes, on each device's `.../down`, the acks of usage reports, the
//! receipts of transactions (decided now, re-sent, or, when the device reports itself
//! online, changed since the device was last told or listed by it with another status),
//! and the member's reorder policy at
//! the first online status of each of the device's sessions and whenever it changed
//! ([`PolicyPushes`]). Nothing is acked before its batch has committed: the downlink
//! thread only ever sees committed outcomes.
//! The queue and the hand-overs between the threads are bounded: when the writer falls
//! behind, the subscriber stops reading and the broker buffers. Acks go out on their own
//! connection, so a full queue can never block them (and with them the commit that would
//! drain the queue).

use crate::config::CloudConfig;
use crate::ingest::{self, Checked, Inbound, PolicyPush};
use crate::metrics::Metrics;
use crate::mqtt::{client_options, BrokerUrl};
use crate::registry::DeviceInfo;
use rollcall_shared::dsse::{KeyPair, DOWNLINK_PAYLOAD_TYPE};
use rollcall_shared::payload::{DownBody, Downlink, ReorderPolicy};
use rollcall_shared::topics::{Channel, Topics};
use rollcall_shared::{Clock, DeviceId, Secret, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Registered devices, cached: a device keeps its key for life, so hits never go stale.
/// Misses are not cached, so a device registered by the CLI is seen at once.
pub struct DeviceCache {
    map: RwLock<HashMap<DeviceId, DeviceInfo>>,
    reader: Mutex<rusqlite::Connection>,
}

impl DeviceCache {
    /// A cache reading from `reader`.
    pub fn new(reader: rusqlite::Connection) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            reader: Mutex::new(reader),
        }
    }
    /// The device's registration, if any.
    pub fn get(&self, d: &DeviceId) -> Option<DeviceInfo> {
        if let Some(i) = self.map.read().expect("cache lock").get(d) {
            return Some(i.clone());
        }
        let info = {
            let conn = self.reader.lock().expect("reader lock");
            match crate::registry::device_info(&conn, d) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(device_id = %d, error = %e, "Device lookup failed");
                    None
                }
            }
        }?;
        self.map
            .write()
            .expect("cache lock")
            .insert(d.clone(), info.clone());
        Some(info)
    }
}

/// Which reorder policy the downlink thread last sent to each device, and in which of the
/// device's sessions. The agent does not acknowledge policies and connects with a clean
/// session (whatever is published while it is away is lost), so a policy is sent again at
/// the first online status of every new session, and within a session whenever it changed.
/// Only statuses of devices that are online reach it ([`crate::ingest::commit`]).
#[derive(Debug, Default)]
pub struct PolicyPushes {
    last: HashMap<DeviceId, (u64, ReorderPolicy)>,
}

impl PolicyPushes {
    /// Whether `p` is to be published; if so, remembers it as sent.
    pub fn should_send(&mut self, p: &PolicyPush) -> bool {
        let now = (p.session, p.policy);
        if self.last.get(&p.device) == Some(&now) {
            return false;
        }
        self.last.insert(p.device.clone(), now);
        true
    }

    /// Forgets what was sent to `device` (its publication failed), so the next online
    /// status sends the policy again.
    pub fn forget(&mut self, device: &DeviceId) {
        self.last.remove(device);
    }
}

/// Shared state of the running ingest, visible to the HTTP side.
pub struct IngestHandle {
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Settings for [`start`].
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Broker to connect to.
    pub url: BrokerUrl,
    /// Username.
    pub username: String,
    /// Password (never shown by `Debug`).
    pub password: Secret,
    /// CA file for TLS.
    pub ca_file: Option<std::path::PathBuf>,
    /// Shared-subscription group, if any.
    pub shared_group: String,
}

fn backoff(attempt: u32) -> Duration {
    let cap = 200u64.saturating_mul(1 << attempt.min(8)).min(10_000);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// Starts the subscriber, writer and publisher. Returns a future that completes when
/// all of them have stopped after `shutdown`.
pub async fn start(
    cfg: &CloudConfig,
    settings: WorkerSettings,
    key: KeyPair,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let topics = Topics::new(&cfg.topic_prefix);
    let suffix = fastrand::u64(..);
    let sub_opts = client_options(
        &format!("rollcall-ingest-{suffix:x}"),
        &settings.url,
        &settings.username,
        settings.password.expose(),
        settings.ca_file.as_deref(),
    )?;
    let pub_opts = client_options(
        &format!("rollcall-acks-{suffix:x}"),
        &settings.url,
        &settings.username,
        settings.password.expose(),
        settings.ca_file.as_deref(),
    )?;
    let (queue_tx, queue_rx) = mpsc::channel::<Inbound>(cfg.ingest.queue_capacity);

    // Publisher for acks.
    let (pub_client, mut pub_loop) = AsyncClient::new(pub_opts, 10_000);
    // The publisher outlives `shutdown`: it stops only once the pipeline has drained, so
    // the acks of the batches still in flight get out.
    let pub_stop = CancellationToken::new();
    let pub_shutdown = pub_stop.clone();
    let publisher = tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            tokio::select! {
                _ = pub_shutdown.cancelled() => break,
                ev = pub_loop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => attempt = 0,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Ack publisher disconnected; reconnecting");
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
    });

    // Subscriber.
    let (sub_client, mut sub_loop) = AsyncClient::new(sub_opts, 100);
    let filters: Vec<String> = [Channel::Usage, Channel::Status, Channel::Tx]
        .iter()
        .map(|c| {
            let f = topics.filter(*c);
            if settings.shared_group.is_empty() {
                f
            } else {
                format!("$share/{}/{f}", settings.shared_group)
            }
        })
        .collect();
    let sub_shutdown = shutdown.clone();
    let sub_metrics = metrics.clone();
    let sub_clock = clock.clone();
    let subscriber = tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            tokio::select! {
                _ = sub_shutdown.cancelled() => break,
                ev = sub_loop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        attempt = 0;
                        sub_metrics.mqtt_connected.set(1);
                        tracing::info!("Ingest connected to the broker");
                        for f in &filters {
                            if let Err(e) = sub_client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                                tracing::error!(filter = %f, error = %e, "Subscribe failed");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let msg = Inbound { topic: p.topic.clone(), payload: p.payload.to_vec(), received_at: sub_clock.now() };
                        if queue_tx.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        sub_metrics.mqtt_connected.set(0);
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "Ingest disconnected from the broker; reconnecting");
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
            }
        }
        let _ = sub_client.try_disconnect();
    });

    // Three threads in a pipeline, so that checking the next batch, committing this one
    // and signing the previous one's acks overlap (and fill each other's fsync waits).
    // The writer first: it migrates the store, and a reader refuses one not yet migrated.
    let mut conn = crate::store::open_writer(&cfg.data_dir)?;
    let cache = Arc::new(DeviceCache::new(crate::store::open_reader(&cfg.data_dir)?));
    let batch_max = cfg.ingest.batch_max_reports;
    let window = cfg.ingest.replay_window;
    let threads = cfg.ingest.verify_threads;
    let rules = crate::orders::OrderRules::for_cloud(cfg)?;
    let (checked_tx, checked_rx) = std::sync::mpsc::sync_channel::<Vec<Checked>>(2);
    let (down_tx, down_rx) = std::sync::mpsc::sync_channel::<ingest::BatchOutcome>(2);

    // 1. Checker: takes what is queued (up to a batch) and checks it, signatures in parallel.
    let c_topics = topics.clone();
    let checker = std::thread::Builder::new()
        .name("ingest-check".into())
        .spawn(move || {
            let mut rx = queue_rx;
            while let Some(first) = rx.blocking_recv() {
                let mut batch = Vec::with_capacity(batch_max);
                batch.push(first);
                while batch.len() < batch_max {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                if checked_tx
                    .send(check_parallel(&c_topics, batch, &cache, threads))
                    .is_err()
                {
                    break;
                }
            }
        })?;

    // 2. Writer: the one transaction per batch; passes the outcome on only once committed.
    let w_metrics = metrics.clone();
    let w_key = key.clone();
    let w_shutdown = shutdown.clone();
    let writer = std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || {
            for checked in checked_rx {
                let started = Instant::now();
                let outcome = loop {
                    let ctx = ingest::TxContext {
                        rules: &rules,
                        key: &w_key,
                    };
                    match ingest::commit(&mut conn, &checked, window, Some(&ctx)) {
                        Ok(o) => break Some(o),
                        Err(e) if w_shutdown.is_cancelled() => {
                            // Stopping: give up on this batch rather than hang the shutdown.
                            // Nothing of it was acked, so its devices send it again.
                            tracing::error!(error = %e, "Ingest commit failed while stopping; the batch is left to be re-sent");
                            break None;
                        }
                        Err(e) => {
                            // Nothing was acked; retrying is safe. A persistent failure (disk full)
                            // fills the pipeline and the queue, which stops reading from the broker.
                            tracing::error!(error = %e, "Ingest commit failed; retrying in 1 s");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                };
                let Some(outcome) = outcome else { break };
                w_metrics.record(&outcome);
                w_metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                if down_tx.send(outcome).is_err() {
                    break;
                }
            }
            tracing::info!("Ingest writer stopped");
        })?;

    // 3. Downlink: signs the committed batch's acks, receipts and changed policies and
    // queues them on the ack publisher.
    let rt = tokio::runtime::Handle::current();
    let d_metrics = metrics.clone();
    let d_topics = topics.clone();
    let downlink = std::thread::Builder::new().name("ingest-downlink".into()).spawn(move || {
        let mut pushed_policies = PolicyPushes::default();
        for outcome in down_rx {
            let mut down: Vec<(DeviceId, DownBody)> = Vec::with_capacity(outcome.acks.len() + outcome.receipts.len());
            down.extend(outcome.acks.into_iter().map(|(d, a)| (d, DownBody::Ack(a))));
            down.extend(outcome.receipts.into_iter().map(|(d, r)| (d, DownBody::Receipt(r))));
            for p in outcome.policies {
                if pushed_policies.should_send(&p) {
                    down.push((p.device, DownBody::Policy(p.policy)));
                }
            }
            for (device, body) in down {
                let is_ack = matches!(body, DownBody::Ack(_));
                let down = Downlink { v: PROTOCOL_VERSION, device_id: device.clone(), sent_at: clock.now(), body };
                let env = key.sign(DOWNLINK_PAYLOAD_TYPE, &down.encode());
                let topic = d_topics.down(&device);
                let payload = env.to_json();
                match pub_client.try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone()) {
                    Ok(()) => {}
                    Err(_) => {
                        // Request queue full: wait for room (the publisher task drains it), but
                        // not for ever: with the broker gone, the device re-sends anyway.
                        let queued = rt.block_on(tokio::time::timeout(
                            Duration::from_secs(10),
                            pub_client.publish(topic, QoS::AtLeastOnce, false, payload),
                        ));
                        let failed = match queued {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(e.to_string()),
                            Err(_) => Some("no room in the publisher's queue for 10 s".to_owned()),
                        };
                        if let Some(e) = failed {
                            tracing::warn!(error = %e, "Downlink could not be queued; the device will re-send and be answered then");
                            if !is_ack {
                                pushed_policies.forget(&device);
                            }
                            continue;
                        }
                    }
                }
                if is_ack {
                    d_metrics.acks.inc();
                } else {
                    d_metrics.downlinks.inc();
                }
            }
        }
    })?;

    Ok(tokio::spawn(async move {
        let _ = subscriber.await;
        let _ = tokio::task::spawn_blocking(move || {
            for t in [checker, writer, downlink] {
                let _ = t.join();
            }
        })
        .await;
        // Give queued acks a moment to leave before the publisher stops.
        tokio::time::sleep(Duration::from_millis(200)).await;
        pub_stop.cancel();
        let _ = publisher.await;
    }))
}

/// Checks a batch on up to `threads` threads, keeping the order of the messages; each
/// thread verifies its share of the signatures as Ed25519 batches.
fn check_parallel(
    topics: &Topics,
    batch: Vec<Inbound>,
    cache: &DeviceCache,
    threads: usize,
) -> Vec<Checked> {
    let lookup = |d: &DeviceId| cache.get(d);
    if threads <= 1 || batch.len() < 64 {
        return ingest::check_many(topics, batch, &lookup);
    }
    let chunk = batch.len().div_ceil(threads);
    let mut parts: Vec<Vec<Inbound>> = Vec::new();
    let mut it = batch.into_iter();
    loop {
        let part: Vec<Inbound> = it.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || ingest::check_many(topics, part, &lookup)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("check threads do not panic"))
            .collect()
    })
}
