//! The uplink: the MQTT session that carries outbox events to the cloud.
//!
//! # What it does
//!
//! - Batches unsent outbox events into [`UsageReport`]s (at most `batch_max_events`,
//!   cut to fit [`MAX_REPORT_BODY_BYTES`]), signs each as a DSSE envelope of
//!   [`USAGE_PAYLOAD_TYPE`] with the device key, and publishes it with QoS 1 on
//!   `.../usage`. At most `max_inflight_reports` reports wait for an ack at once.
//! - Deletes a report's events **only** when the cloud's signed application-level ack
//!   arrives on `.../down` ([`DownBody::Ack`]). A PUBACK, or `try_publish` returning
//!   `Ok`, means only that the bytes left. Every downlink must verify under the cloud's
//!   key ([`AgentRuntime::cloud_key`], `cloud_public_key` in the configuration, which
//!   `rollcall-agent run` requires); downlinks for another device, or that fail
//!   verification, are logged, counted and ignored, so nobody else who can publish on
//!   `.../down` can delete a report's events.
//! - Re-sends a report whose ack has not come after `ack_timeout`, oldest first, and
//!   re-sends every in-flight report after each (re)connect. The cloud deduplicates by
//!   `(device_id, seq)`, so duplicates are harmless and lost acks heal themselves.
//! - Publishes a signed, retained online [`DeviceStatus`] with [`Health`] on connect and
//!   every `status_interval`, and sets a signed, retained offline status as the Last Will.
//!   A clean shutdown publishes the offline status itself (a clean DISCONNECT discards
//!   the will), then disconnects.
//! - Lists in every online status's [`Health::orders`] the orders that had a receipt and
//!   are not final, with the status last heard ([`Outbox::open_orders`]; at most
//!   [`MAX_STATUS_ORDERS`], a window moving on with every status when there are more). The
//!   cloud re-sends the receipt of any whose status it knows to be further along, so a receipt lost
//!   on the way (a later cancellation, a confirmation) reaches the device with a later
//!   status, and the list converges.
//! - Keeps display messages from the cloud ([`DownBody::Message`], verified like acks) in
//!   the outbox store and confirms each with a signed [`MessageReceipt`] on `.../receipt`.
//! - When the outbox tracks consumables ([`crate::consumables`]): signs each new
//!   replenishment order once (DSSE, [`TRANSACTION_PAYLOAD_TYPE`]) and stores the envelope
//!   in the outbox, publishes it on `.../tx` and re-sends exactly those bytes after every
//!   (re)connect and every `ack_timeout` until a receipt for it arrives. Receipts
//!   ([`DownBody::Receipt`]) and policies ([`DownBody::Policy`]) verify under the cloud's
//!   key like every downlink. A policy is applied only when its downlink's `sent_at` is
//!   later than that of the policy last applied (kept in the outbox), so a replayed old
//!   policy cannot undo a member's later choice.
//!
//! # Sessions and the Last Will
//!
//! rumqttc sends the will in CONNECT, so it is fixed per connection. Before **every**
//! connection attempt the uplink takes a new persisted session number
//! ([`Outbox::next_session`]) and rebuilds the will with it and `n = u64::MAX`. Online
//! statuses of that connection carry the same session and `n = 1, 2, …`. Receivers keep
//! the status with the largest `(session, n)`, so the will of connection *k* outranks
//! every online message of *k*, and is outranked by everything of *k + 1*, even when
//! the broker publishes the stale will late. One session number per process would let a
//! late will from a dropped connection overwrite the online status of the next one.
//!
//! # Structure
//!
//! One task owns rumqttc's `EventLoop` (the *driver*) and forwards every event over an
//! mpsc channel; it only (re)connects when told to, because the event loop has no backoff
//! of its own. The session logic consumes those events, a batch ticker and the shutdown
//! token in one `select!` whose branches are all cancel-safe, follows the explicit state
//! machine in [`SessionState`], and publishes with `try_publish` (a full request channel
//! is retried on the next tick). `clean_session = true`: requests queued for a dead
//! connection are dropped and the session re-sends what matters itself.
//!
//! Timers (ack timeout, backoff, ticks) use tokio's monotonic clock; every timestamp that
//! travels (`sent_at`, status `at`, `last_ack_at`) comes from the injected [`Clock`].

mod mqtt;
mod session;

pub use mqtt::{mqtt_options, tls_config, BrokerUrl, MqttSettings};
pub use session::{Backoff, SessionInput, SessionState};

use crate::capture::protocol_time;
use crate::consumables::ReceiptOutcome;
use crate::outbox::{AckOutcome, ConnectionState, DaemonState, Outbox, OutboxError};
use rollcall_shared::dsse::{
    Envelope, EnvelopeError, KeyPair, PublicKey, DOWNLINK_PAYLOAD_TYPE, RECEIPT_PAYLOAD_TYPE,
    STATUS_PAYLOAD_TYPE, TRANSACTION_PAYLOAD_TYPE, USAGE_PAYLOAD_TYPE,
};
use rollcall_shared::limits::{MAX_REPORT_BODY_BYTES, MAX_STATUS_ORDERS};
use rollcall_shared::payload::{
    Ack, AckStatus, DeviceMessage, DeviceStatus, DownBody, Downlink, Health, MessageReceipt,
    OpenOrder, PayloadError, Presence, UsageEvent, UsageReport,
};
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, DeviceId, TxId, PROTOCOL_VERSION};
use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a clean shutdown waits for the offline status and DISCONNECT to go out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the uplink could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The TLS configuration could not be built.
    #[error("TLS setup failed ({}): {message}", path.display())]
    Tls {
        /// The CA file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The outbox failed at start-up.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The MQTT event loop task ended unexpectedly.
    #[error("the MQTT event loop task stopped unexpectedly")]
    EventLoopGone,
}

/// Batching, ack and reconnect timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSettings {
    /// Most events in one report.
    pub batch_max_events: usize,
    /// How often to look for new events (and to retry anything deferred).
    pub batch_interval: Duration,
    /// Re-send an unacked report after this long.
    pub ack_timeout: Duration,
    /// Most reports awaiting an ack.
    pub max_inflight_reports: usize,
    /// How often to publish the online status.
    pub status_interval: Duration,
    /// Smallest backoff ceiling.
    pub reconnect_min: Duration,
    /// Largest backoff ceiling.
    pub reconnect_max: Duration,
}

impl Default for UplinkSettings {
    fn default() -> Self {
        Self {
            batch_max_events: 500,
            batch_interval: Duration::from_millis(200),
            ack_timeout: Duration::from_secs(10),
            max_inflight_reports: 16,
            status_interval: Duration::from_secs(60),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// Everything one agent's uplink needs. Build one per simulated device.
#[derive(Clone)]
pub struct AgentRuntime {
    /// The events to send.
    pub outbox: Arc<dyn Outbox>,
    /// The device's signing key.
    pub key: KeyPair,
    /// The device id (also the MQTT client id).
    pub device_id: DeviceId,
    /// Topic names.
    pub topics: Topics,
    /// Broker and login.
    pub mqtt: MqttSettings,
    /// Timing.
    pub uplink: UplinkSettings,
    /// The cloud's key; every downlink must verify under it. There is deliberately no
    /// way to run without one: acks delete events from the outbox.
    pub cloud_key: PublicKey,
    /// Source of every timestamp that travels.
    pub clock: Arc<dyn Clock>,
    /// Live counters; clone the `Arc` before calling [`run_uplink`] to watch progress.
    pub stats: Arc<UplinkStats>,
}

impl std::fmt::Debug for AgentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRuntime")
            .field("device_id", &self.device_id)
            .field("mqtt", &self.mqtt)
            .field("uplink", &self.uplink)
            .finish_non_exhaustive()
    }
}

/// Live counters of one uplink, cheap to read from anywhere.
#[derive(Debug, Default)]
pub struct UplinkStats {
    connected: AtomicBool,
    connects: AtomicU64,
    reconnects: AtomicU64,
    reports_sent: AtomicU64,
    reports_resent: AtomicU64,
    reports_acked: AtomicU64,
    events_acked: AtomicU64,
    downlinks_ignored: AtomicU64,
    tx_sent: AtomicU64,
    tx_resent: AtomicU64,
    receipts: AtomicU64,
}

/// A copy of [`UplinkStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkSnapshot {
    /// Connected to the broker now.
    pub connected: bool,
    /// ConnAcks received.
    pub connects: u64,
    /// ConnAcks after the first one.
    pub reconnects: u64,
    /// Reports published for the first time.
    pub reports_sent: u64,
    /// Re-publications (after an ack timeout or a reconnect).
    pub reports_resent: u64,
    /// Reports whose ack deleted them from the outbox.
    pub reports_acked: u64,
    /// Events deleted by those acks.
    pub events_acked: u64,
    /// Downlinks ignored: bad signature, malformed, addressed to another device, or a
    /// reorder policy older than the one applied.
    pub downlinks_ignored: u64,
    /// Replenishment transactions published for the first time by this process.
    pub tx_sent: u64,
    /// Re-publications of transactions awaiting their receipt.
    pub tx_resent: u64,
    /// Receipts that changed an order's state.
    pub receipts: u64,
}

impl UplinkStats {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counters now.
    pub fn snapshot(&self) -> UplinkSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UplinkSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            connects: g(&self.connects),
            reconnects: g(&self.reconnects),
            reports_sent: g(&self.reports_sent),
            reports_resent: g(&self.reports_resent),
            reports_acked: g(&self.reports_acked),
            events_acked: g(&self.events_acked),
            downlinks_ignored: g(&self.downlinks_ignored),
            tx_sent: g(&self.tx_sent),
            tx_resent: g(&self.tx_resent),
            receipts: g(&self.receipts),
        }
    }

    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a downlink was ignored.
#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    /// Not a DSSE envelope, wrong payload type, or bad signature.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The payload does not decode.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Addressed to another device.
    #[error("downlink is addressed to {0}, not to this device")]
    OtherDevice(DeviceId),
}

/// Opens a downlink: parses the envelope, verifies it under `cloud_key`, decodes it, and
/// checks it is addressed to `device`.
pub fn open_downlink(
    bytes: &[u8],
    device: &DeviceId,
    cloud_key: &PublicKey,
) -> Result<Downlink, DownlinkError> {
    let env = Envelope::from_json(bytes)?;
    let body = env.verify(DOWNLINK_PAYLOAD_TYPE, cloud_key)?;
    let down = Downlink::decode(&body)?;
    if down.device_id != *device {
        return Err(DownlinkError::OtherDevice(down.device_id));
    }
    Ok(down)
}

/// What the driver task forwards: every event loop result.
type DriverEvent = Result<Event, ConnectionError>;

/// Runs the uplink until `shutdown` is cancelled, then publishes the offline status,
/// disconnects and returns. Connection failures are retried forever with backoff; only
/// start-up problems (bad URL, TLS files, outbox) return an error.
pub async fn run_uplink(rt: AgentRuntime, shutdown: CancellationToken) -> Result<(), UplinkError> {
    // Validate the options (URL, TLS) once, up front; the will is filled in per attempt.
    let options = mqtt_options(&rt.mqtt, rt.device_id.as_str(), None)?;
    let inflight = outbox_call(&rt.outbox, |o| o.inflight_reports()).await?;
    let (client, eventloop) = AsyncClient::new(options, rt.uplink.max_inflight_reports + 16);
    let (cmd_tx, cmd_rx) = mpsc::channel(1);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let driver_stop = CancellationToken::new();
    let driver = tokio::spawn(drive(eventloop, cmd_rx, ev_tx, driver_stop.clone()));

    let mut up = Uplink::new(rt, client, cmd_tx, ev_rx, inflight);
    let result = up.run(shutdown).await;
    driver_stop.cancel();
    if let Err(e) = driver.await {
        warn!(error = %e, "MQTT event loop task failed");
    }
    up.finish().await;
    result
}

/// The driver: owns the event loop; connects only when told, with the will it is given.
async fn drive(
    mut el: EventLoop,
    mut commands: mpsc::Receiver<LastWill>,
    events: mpsc::Sender<DriverEvent>,
    stop: CancellationToken,
) {
    loop {
        let will = tokio::select! {
            _ = stop.cancelled() => return,
            cmd = commands.recv() => match cmd { Some(w) => w, None => return },
        };
        // Forget requests queued for the previous connection; the session re-sends
        // everything that matters after the ConnAck.
        el.clean();
        el.pending.clear();
        el.mqtt_options.set_last_will(will);
        loop {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = el.poll() => r,
            };
            let failed = result.is_err();
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = events.send(result) => if sent.is_err() { return },
            }
            if failed {
                break;
            }
        }
    }
}

/// Runs an outbox call off the async executor when it may block.
async fn outbox_call<T, F>(outbox: &Arc<dyn Outbox>, f: F) -> Result<T, OutboxError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Outbox) -> Result<T, OutboxError> + Send + 'static,
{
    if !outbox.may_block() {
        return f(outbox.as_ref());
    }
    let o = outbox.clone();
    match tokio::task::spawn_blocking(move || f(o.as_ref())).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Whether the session loop goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Done,
}

/// What the session knows about one report awaiting its ack.
#[derive(Debug, Clone, Copy, Default)]
struct InflightReport {
    /// When it was last published; `None`: due now.
    last_sent: Option<Instant>,
    /// Published at least once by this process (for the sent/resent counters).
    sent_before: bool,
}

/// The session: state machine plus the bookkeeping of reports in flight.
struct Uplink {
    rt: AgentRuntime,
    client: AsyncClient,
    connect_tx: mpsc::Sender<LastWill>,
    events: mpsc::Receiver<DriverEvent>,
    state: SessionState,
    backoff: Backoff,
    /// In-flight reports, oldest first.
    inflight: BTreeMap<u64, InflightReport>,
    boot_id: String,
    /// Bytes of event JSON a report may carry besides its own fields.
    events_budget: usize,
    session_no: u64,
    status_n: u64,
    /// Online statuses published since the agent started, across connections: where the
    /// open-order window ([`status_window`]) starts, so that it moves on even when the
    /// device reconnects more often than it sends statuses.
    statuses_sent: u64,
    next_status_at: Instant,
    need_subscribe: bool,
    written_state: Option<ConnectionState>,
    usage_topic: String,
    status_topic: String,
    receipt_topic: String,
    down_topic: String,
    tx_topic: String,
    /// Transactions awaiting a receipt: when each was last published by this connection.
    tx_sent: HashMap<TxId, Instant>,
    /// Transactions this process has published at least once.
    tx_seen: std::collections::HashSet<TxId>,
}

impl Uplink {
    fn new(
        rt: AgentRuntime,
        client: AsyncClient,
        connect_tx: mpsc::Sender<LastWill>,
        events: mpsc::Receiver<DriverEvent>,
        inflight: Vec<u64>,
    ) -> Self {
        let boot_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let backoff = Backoff {
            min: rt.uplink.reconnect_min,
            max: rt.uplink.reconnect_max.max(rt.uplink.reconnect_min),
        };
        let events_budget = MAX_REPORT_BODY_BYTES - report_overhead(&rt.device_id, &boot_id);
        Self {
            usage_topic: rt.topics.usage(&rt.device_id),
            status_topic: rt.topics.status(&rt.device_id),
            receipt_topic: rt.topics.receipt(&rt.device_id),
            down_topic: rt.topics.down(&rt.device_id),
            tx_topic: rt.topics.tx(&rt.device_id),
            tx_sent: HashMap::new(),
            tx_seen: std::collections::HashSet::new(),
            inflight: inflight
                .into_iter()
                .map(|r| (r, InflightReport::default()))
                .collect(),
            rt,
            client,
            connect_tx,
            events,
            state: SessionState::Connecting { attempt: 0 },
            backoff,
            boot_id,
            events_budget,
            session_no: 0,
            status_n: 0,
            statuses_sent: 0,
            next_status_at: Instant::now(),
            need_subscribe: false,
            written_state: None,
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), UplinkError> {
        info!(device_id = %self.rt.device_id, broker = %self.rt.mqtt.broker, inflight = self.inflight.len(), "Uplink starting");
        self.write_state(ConnectionState::Disconnected).await;
        self.start_connect().await?;
        let mut ticker = tokio::time::interval(self.rt.uplink.batch_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let far = || Instant::now() + Duration::from_secs(365 * 86_400);
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let backoff_until = match self.state {
                SessionState::Backoff { until, .. } => Some(until),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if shutdown_deadline.is_none() => {
                    shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                    if self.begin_shutdown() == Flow::Done {
                        return Ok(());
                    }
                }
                _ = sleep_until(shutdown_deadline.unwrap_or_else(far)), if shutdown_deadline.is_some() => {
                    warn!("Shutdown grace period over before the broker saw our DISCONNECT");
                    return Ok(());
                }
                ev = self.events.recv() => match ev {
                    Some(ev) => if self.on_event(ev).await == Flow::Done { return Ok(()) },
                    None => return Err(UplinkError::EventLoopGone),
                },
                _ = sleep_until(backoff_until.unwrap_or_else(far)), if backoff_until.is_some() => {
                    self.transition(SessionInput::BackoffElapsed);
                    self.start_connect().await?;
                }
                _ = ticker.tick() => {
                    if self.state.is_connected() {
                        self.pump().await;
                    }
                }
            }
        }
    }

    fn transition(&mut self, input: SessionInput) {
        let next = self
            .state
            .on(input, Instant::now(), &self.backoff, fastrand::f64());
        if next != self.state {
            debug!(from = ?self.state, to = ?next, ?input, "Session transition");
        }
        self.state = next;
    }

    /// Takes a new session number, rebuilds the will, and tells the driver to connect.
    async fn start_connect(&mut self) -> Result<(), UplinkError> {
        self.session_no = match outbox_call(&self.rt.outbox, |o| o.next_session()).await {
            Ok(n) => n,
            Err(error) => {
                warn!(%error, "Could not persist the session counter; counting in memory");
                self.session_no + 1
            }
        };
        self.status_n = 0;
        let will = LastWill::new(
            self.status_topic.clone(),
            self.status_envelope(Presence::Offline, u64::MAX, None),
            QoS::AtLeastOnce,
            true,
        );
        debug!(session = self.session_no, state = ?self.state, "Connecting");
        self.connect_tx
            .send(will)
            .await
            .map_err(|_| UplinkError::EventLoopGone)
    }

    async fn on_event(&mut self, ev: DriverEvent) -> Flow {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                self.transition(SessionInput::ConnAck);
                if self.state.is_connected() {
                    self.on_connected().await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == self.down_topic {
                    self.on_downlink(&p.payload).await;
                } else {
                    debug!(topic = %p.topic, "Ignoring a publish on an unexpected topic");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    warn!(topic = %self.down_topic, "The broker refused our downlink subscription; acks cannot arrive");
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect))
                if self.state == SessionState::ShuttingDown =>
            {
                return Flow::Done;
            }
            Ok(_) => {}
            Err(error) => {
                if self.state == SessionState::ShuttingDown {
                    return Flow::Done;
                }
                let was_connected = self.state.is_connected();
                self.transition(SessionInput::ConnectionLost);
                self.rt.stats.connected.store(false, Ordering::Relaxed);
                if let SessionState::Backoff { until, attempt } = self.state {
                    let wait_ms =
                        until.saturating_duration_since(Instant::now()).as_millis() as u64;
                    if was_connected {
                        warn!(%error, attempt, wait_ms, "Connection to the broker lost");
                    } else {
                        info!(%error, attempt, wait_ms, "Could not connect to the broker");
                    }
                }
                self.write_state(ConnectionState::Disconnected).await;
            }
        }
        Flow::Continue
    }

    async fn on_connected(&mut self) {
        let stats = &self.rt.stats;
        if stats.connects.fetch_add(1, Ordering::Relaxed) > 0 {
            UplinkStats::bump(&stats.reconnects, 1);
        }
        stats.connected.store(true, Ordering::Relaxed);
        info!(device_id = %self.rt.device_id, session = self.session_no, inflight = self.inflight.len(), "Connected to the broker");
        self.need_subscribe = true;
        self.next_status_at = Instant::now();
        // Whatever was in flight may never have reached the cloud: send it all again.
        for report in self.inflight.values_mut() {
            report.last_sent = None;
        }
        self.tx_sent.clear();
        self.write_state(ConnectionState::Connected).await;
        self.pump().await;
    }

    async fn on_downlink(&mut self, payload: &[u8]) {
        let down = match open_downlink(payload, &self.rt.device_id, &self.rt.cloud_key) {
            Ok(d) => d,
            Err(error) => {
                UplinkStats::bump(&self.rt.stats.downlinks_ignored, 1);
                warn!(%error, "Ignoring downlink");
                return;
            }
        };
        let Ack {
            report_seq,
            status,
            stored,
            reason,
        } = match down.body {
            DownBody::Ack(a) => a,
            DownBody::Message(m) => return self.on_message(m).await,
            DownBody::Receipt(r) => return self.on_receipt(r).await,
            DownBody::Policy(p) => {
                let (auto, sent_at) = (p.auto_reorder, down.sent_at);
                match outbox_call(&self.rt.outbox, move |o| o.set_policy(auto, sent_at)).await {
                    Ok(true) => {
                        info!(auto_reorder = auto, %sent_at, "Reorder policy from the cloud")
                    }
                    Ok(false) => {
                        UplinkStats::bump(&self.rt.stats.downlinks_ignored, 1);
                        warn!(auto_reorder = auto, %sent_at, "Ignoring a reorder policy sent no later than the one applied (a replay, or pushes that crossed)");
                    }
                    Err(error) => warn!(%error, "Could not store the reorder policy"),
                }
                return;
            }
        };
        let outcome = outbox_call(&self.rt.outbox, move |o| o.ack(report_seq, status)).await;
        match outcome {
            Ok(AckOutcome::Deleted { events }) => {
                self.inflight.remove(&report_seq);
                UplinkStats::bump(&self.rt.stats.reports_acked, 1);
                UplinkStats::bump(&self.rt.stats.events_acked, events);
                if status == AckStatus::Rejected {
                    warn!(
                        report_seq,
                        events,
                        reason = reason.as_deref().unwrap_or("-"),
                        "The cloud rejected a report; its events are dropped"
                    );
                } else {
                    debug!(report_seq, events, stored, ?status, "Report acknowledged");
                }
                // Room for another report: don't wait for the next tick.
                if self.state.is_connected() {
                    self.pump().await;
                }
            }
            Ok(AckOutcome::UnknownReport) => {
                self.inflight.remove(&report_seq);
                debug!(
                    report_seq,
                    "Ack for a report no longer in flight (a duplicate)"
                );
            }
            Err(error) => {
                warn!(%error, report_seq, "Could not apply an ack; the report will be re-sent")
            }
        }
    }

    /// A display message: keep it (idempotent by id), then confirm with a signed receipt.
    /// A lost receipt makes the cloud send the message again; it is kept once and
    /// confirmed again.
    async fn on_message(&mut self, m: DeviceMessage) {
        let id = m.id.clone();
        match outbox_call(&self.rt.outbox, move |o| o.store_message(&m)).await {
            Ok(new) => info!(message_id = %id, new, "Display message received"),
            Err(error) => {
                warn!(%error, message_id = %id, "Could not keep a display message; the cloud will send it again");
                return;
            }
        }
        let receipt = MessageReceipt {
            v: PROTOCOL_VERSION,
            device_id: self.rt.device_id.clone(),
            message_ids: vec![id],
            at: protocol_time(self.rt.clock.now()),
        };
        let env = self
            .rt
            .key
            .sign(RECEIPT_PAYLOAD_TYPE, &receipt.encode())
            .to_json();
        let _ = self.publish(&self.receipt_topic, false, env);
    }

    async fn on_receipt(&mut self, r: rollcall_shared::payload::Receipt) {
        let id = r.tx_id.clone();
        let (status, reason) = (r.status, r.reason.clone());
        match outbox_call(&self.rt.outbox, move |o| o.apply_receipt(&r)).await {
            Ok(ReceiptOutcome::Applied(state)) => {
                self.tx_sent.remove(&id);
                UplinkStats::bump(&self.rt.stats.receipts, 1);
                info!(tx_id = %id, state = state.as_str(), reason = reason.as_deref().unwrap_or("-"), "Order receipt");
            }
            Ok(ReceiptOutcome::Unchanged) => {
                self.tx_sent.remove(&id);
                debug!(tx_id = %id, ?status, "Repeated receipt");
            }
            Ok(ReceiptOutcome::UnknownOrder) => {
                debug!(tx_id = %id, "Receipt for an order this device does not have")
            }
            Ok(ReceiptOutcome::Mismatch) => {
                UplinkStats::bump(&self.rt.stats.downlinks_ignored, 1);
                warn!(tx_id = %id, "Ignoring a receipt about other bytes than this device signed");
            }
            Err(error) => warn!(%error, tx_id = %id, "Could not apply a receipt"),
        }
    }

    /// Signs new orders once, then publishes every order awaiting its receipt that is due.
    async fn pump_orders(&mut self) {
        if self.rt.outbox.consumables().is_none() {
            return;
        }
        match outbox_call(&self.rt.outbox, |o| o.unsigned_orders()).await {
            Ok(unsigned) => {
                for rec in unsigned {
                    let body = rec.transaction(&self.rt.device_id).encode();
                    let sha = hex::encode(Sha256::digest(&body));
                    let env = self.rt.key.sign(TRANSACTION_PAYLOAD_TYPE, &body).to_json();
                    let id = rec.tx_id.clone();
                    if let Err(error) =
                        outbox_call(&self.rt.outbox, move |o| o.store_envelope(&id, &env, &sha))
                            .await
                    {
                        warn!(%error, tx_id = %rec.tx_id, "Could not store a signed order");
                        return;
                    }
                    info!(tx_id = %rec.tx_id, slot = %rec.slot, sku = %rec.sku, qty = rec.qty, "Replenishment order signed");
                }
            }
            Err(error) => {
                warn!(%error, "Could not read new orders");
                return;
            }
        }
        let pending = match outbox_call(&self.rt.outbox, |o| o.unreceipted()).await {
            Ok(p) => p,
            Err(error) => {
                warn!(%error, "Could not read orders awaiting receipts");
                return;
            }
        };
        let timeout = self.rt.uplink.ack_timeout;
        let now = Instant::now();
        for (id, env) in pending {
            if self
                .tx_sent
                .get(&id)
                .is_some_and(|t| now.duration_since(*t) < timeout)
            {
                continue;
            }
            if self.publish(&self.tx_topic, false, env).is_err() {
                return;
            }
            let counter = if self.tx_seen.insert(id.clone()) {
                &self.rt.stats.tx_sent
            } else {
                &self.rt.stats.tx_resent
            };
            UplinkStats::bump(counter, 1);
            debug!(tx_id = %id, "Transaction published");
            self.tx_sent.insert(id, now);
        }
    }

    /// One round of work while connected: subscribe, status, re-sends, new reports.
    async fn pump(&mut self) {
        if self.need_subscribe {
            match self
                .client
                .try_subscribe(self.down_topic.clone(), QoS::AtLeastOnce)
            {
                Ok(()) => self.need_subscribe = false,
                Err(_) => return,
            }
        }
        if Instant::now() >= self.next_status_at {
            let health = self.health(self.statuses_sent + 1).await;
            self.status_n += 1;
            let env = self.status_envelope(Presence::Online, self.status_n, Some(health));
            if self.publish(&self.status_topic, true, env).is_err() {
                self.status_n -= 1;
                return;
            }
            self.statuses_sent += 1;
            self.next_status_at = Instant::now() + self.rt.uplink.status_interval;
        }
        self.pump_orders().await;
        if !self.resend_due().await {
            return;
        }
        while self.inflight.len() < self.rt.uplink.max_inflight_reports {
            let (max_events, budget) = (self.rt.uplink.batch_max_events, self.events_budget);
            match outbox_call(&self.rt.outbox, move |o| o.build_report(max_events, budget)).await {
                Ok(Some(batch)) => {
                    self.inflight
                        .insert(batch.report_seq, InflightReport::default());
                    if !self.send_report(batch.report_seq, batch.events) {
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    warn!(%error, "Could not build a report");
                    return;
                }
            }
        }
    }

    /// Publishes every in-flight report that is due, oldest first. False when the
    /// request channel is full (try again next tick).
    async fn resend_due(&mut self) -> bool {
        let now = Instant::now();
        let timeout = self.rt.uplink.ack_timeout;
        let due: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, r)| r.last_sent.is_none_or(|t| now.duration_since(t) >= timeout))
            .map(|(r, _)| *r)
            .collect();
        for report_seq in due {
            let events =
                match outbox_call(&self.rt.outbox, move |o| o.report_events(report_seq)).await {
                    Ok(e) => e,
                    Err(error) => {
                        warn!(%error, report_seq, "Could not load a report to re-send");
                        return false;
                    }
                };
            if events.is_empty() {
                // Acked meanwhile (or by an earlier run): nothing to send.
                self.inflight.remove(&report_seq);
                continue;
            }
            if !self.send_report(report_seq, events) {
                return false;
            }
        }
        true
    }

    /// Signs and queues one report; marks it sent. False if the request channel is full.
    fn send_report(&mut self, report_seq: u64, events: Vec<UsageEvent>) -> bool {
        let count = events.len();
        let report = UsageReport {
            v: PROTOCOL_VERSION,
            device_id: self.rt.device_id.clone(),
            report_seq,
            sent_at: protocol_time(self.rt.clock.now()),
            boot_id: self.boot_id.clone(),
            events,
        };
        let body = report.encode();
        debug_assert!(
            body.len() <= MAX_REPORT_BODY_BYTES,
            "report of {} bytes",
            body.len()
        );
        let env = self.rt.key.sign(USAGE_PAYLOAD_TYPE, &body).to_json();
        if self.publish(&self.usage_topic, false, env).is_err() {
            return false;
        }
        let entry = self.inflight.entry(report_seq).or_default();
        let counter = if entry.sent_before {
            &self.rt.stats.reports_resent
        } else {
            &self.rt.stats.reports_sent
        };
        UplinkStats::bump(counter, 1);
        *entry = InflightReport {
            last_sent: Some(Instant::now()),
            sent_before: true,
        };
        debug!(
            report_seq,
            events = count,
            bytes = body.len(),
            "Report published"
        );
        true
    }

    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<(), ClientError> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .inspect_err(|_| {
                debug!(topic, "MQTT request queue full; retrying on the next tick");
            })
    }

    fn status_envelope(&self, state: Presence, n: u64, health: Option<Health>) -> Vec<u8> {
        let status = DeviceStatus {
            v: PROTOCOL_VERSION,
            device_id: self.rt.device_id.clone(),
            state,
            at: protocol_time(self.rt.clock.now()),
            session: self.session_no,
            n,
            health,
        };
        self.rt
            .key
            .sign(STATUS_PAYLOAD_TYPE, &status.encode())
            .to_json()
    }

    /// The health carried by the `n`-th online status since the agent started.
    async fn health(&self, n: u64) -> Health {
        let reconnects = self.rt.stats.reconnects.load(Ordering::Relaxed);
        let orders = match outbox_call(&self.rt.outbox, |o| o.open_orders()).await {
            Ok(open) => status_window(open, n),
            Err(error) => {
                warn!(%error, "Could not read the open orders for the status message");
                Vec::new()
            }
        };
        let consumables = match outbox_call(&self.rt.outbox, |o| {
            let Some(cfg) = o.consumables() else {
                return Ok(Vec::new());
            };
            let levels = o.slots()?;
            Ok(levels
                .into_iter()
                .filter_map(|s| {
                    let c = cfg.slot(&s.slot)?;
                    Some(rollcall_shared::payload::SlotLevel {
                        slot: s.slot,
                        sku: c.sku.clone(),
                        level: s.level,
                        capacity: c.capacity,
                    })
                })
                .take(rollcall_shared::limits::MAX_STATUS_SLOTS)
                .collect())
        })
        .await
        {
            Ok(levels) => levels,
            Err(error) => {
                warn!(%error, "Could not read consumable levels for the status message");
                Vec::new()
            }
        };
        match outbox_call(&self.rt.outbox, |o| o.stats()).await {
            Ok(s) => Health {
                consumables,
                orders,
                outbox_depth: s.depth,
                oldest_unsent_age_s: s
                    .oldest_unacked_recorded_at
                    .map(|t| (self.rt.clock.now() - t).num_seconds().max(0) as u64),
                last_ack_at: s.last_ack_at,
                reconnects,
                evictions: s.evictions,
                rejected_full: s.rejected_full,
            },
            Err(error) => {
                warn!(%error, "Could not read outbox stats for the status message");
                Health {
                    reconnects,
                    consumables,
                    orders,
                    ..Health::default()
                }
            }
        }
    }

    /// Starts a clean shutdown. `Done` when there is nothing to wait for.
    fn begin_shutdown(&mut self) -> Flow {
        let was_connected = self.state.is_connected();
        self.transition(SessionInput::Shutdown);
        if !was_connected {
            return Flow::Done;
        }
        info!("Shutting down: publishing offline status and disconnecting");
        let env = self.status_envelope(Presence::Offline, u64::MAX, None);
        // If either request cannot be queued, dropping the connection makes the broker
        // publish the (equivalent) Last Will instead.
        if self.publish(&self.status_topic, true, env).is_err()
            || self.client.try_disconnect().is_err()
        {
            return Flow::Done;
        }
        Flow::Continue
    }

    /// After the loop: record that the daemon stopped.
    async fn finish(&mut self) {
        self.rt.stats.connected.store(false, Ordering::Relaxed);
        self.write_state(ConnectionState::Stopped).await;
        info!(device_id = %self.rt.device_id, "Uplink stopped");
    }

    async fn write_state(&mut self, state: ConnectionState) {
        if self.written_state == Some(state) {
            return;
        }
        let ds = DaemonState {
            state,
            pid: std::process::id(),
            at: self.rt.clock.now(),
            session: self.session_no,
            reconnects: self.rt.stats.reconnects.load(Ordering::Relaxed),
        };
        match outbox_call(&self.rt.outbox, move |o| o.set_daemon_state(&ds)).await {
            Ok(()) => self.written_state = Some(state),
            Err(error) => warn!(%error, "Could not record the daemon state"),
        }
    }
}

/// The open orders the `n`-th online status since the agent started lists: all of them
/// when they fit [`MAX_STATUS_ORDERS`]; otherwise a window of that many, starting further
/// on with every status (wrapping round, and across reconnects), so that over consecutive
/// statuses every open order is listed and any receipt the device missed is sent again.
fn status_window(open: Vec<OpenOrder>, n: u64) -> Vec<OpenOrder> {
    if open.len() <= MAX_STATUS_ORDERS {
        return open;
    }
    let start =
        (n.saturating_sub(1) as u128 * MAX_STATUS_ORDERS as u128 % open.len() as u128) as usize;
    open.iter()
        .cycle()
        .skip(start)
        .take(MAX_STATUS_ORDERS)
        .cloned()
        .collect()
}

/// The bytes a report needs besides its events' JSON (and the commas between them),
/// computed from the largest values its fields can take.
fn report_overhead(device_id: &DeviceId, boot_id: &str) -> usize {
    let latest = chrono::DateTime::parse_from_rfc3339("2099-12-31T23:59:59.999999999Z")
        .expect("valid time")
        .with_timezone(&chrono::Utc);
    let empty = UsageReport {
        v: PROTOCOL_VERSION,
        device_id: device_id.clone(),
        report_seq: u64::MAX,
        sent_at: latest,
        boot_id: boot_id.to_owned(),
        events: Vec::new(),
    };
    empty.encode().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{MemoryOutbox, NewEvent, OutboxLimits};
    use chrono::{DateTime, Utc};
    use rollcall_shared::{EventKind, ManualClock};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn downlink(device: &str, report_seq: u64) -> Downlink {
        Downlink {
            v: 1,
            device_id: DeviceId::parse(device).unwrap(),
            sent_at: t0(),
            body: DownBody::Ack(Ack {
                report_seq,
                status: AckStatus::Stored,
                stored: 1,
                reason: None,
            }),
        }
    }

    #[test]
    fn the_status_lists_every_open_order_over_consecutive_statuses_when_they_do_not_fit_one() {
        let open = |n: usize| -> Vec<OpenOrder> {
            (0..n)
                .map(|i| OpenOrder {
                    tx_id: TxId::parse(&format!("tx-{i}")).unwrap(),
                    status: rollcall_shared::payload::TxStatus::Accepted,
                })
                .collect()
        };
        assert_eq!(status_window(open(3), 7), open(3));
        let many = open(MAX_STATUS_ORDERS + 10);
        let mut seen = std::collections::BTreeSet::new();
        for n in 1..=2 {
            let w = status_window(many.clone(), n);
            assert_eq!(w.len(), MAX_STATUS_ORDERS);
            seen.extend(w.into_iter().map(|o| o.tx_id));
        }
        assert_eq!(seen.len(), many.len(), "two statuses cover them all");
        assert_eq!(status_window(many.clone(), 1)[0], many[0]);
        assert_eq!(
            status_window(many.clone(), u64::MAX).len(),
            MAX_STATUS_ORDERS
        );
    }

    #[test]
    fn a_downlink_signed_by_the_cloud_opens() {
        let cloud = KeyPair::generate();
        let dev = DeviceId::parse("dev-1").unwrap();
        let bytes = cloud
            .sign(DOWNLINK_PAYLOAD_TYPE, &downlink("dev-1", 7).encode())
            .to_json();
        let d = open_downlink(&bytes, &dev, &cloud.public()).unwrap();
        assert_eq!(d, downlink("dev-1", 7));
    }

    #[test]
    fn downlinks_with_a_wrong_key_type_or_device_are_refused() {
        let cloud = KeyPair::generate();
        let intruder = KeyPair::generate();
        let dev = DeviceId::parse("dev-1").unwrap();
        let forged = intruder
            .sign(DOWNLINK_PAYLOAD_TYPE, &downlink("dev-1", 7).encode())
            .to_json();
        assert!(matches!(
            open_downlink(&forged, &dev, &cloud.public()),
            Err(DownlinkError::Envelope(EnvelopeError::BadSignature))
        ));
        let other = cloud
            .sign(DOWNLINK_PAYLOAD_TYPE, &downlink("dev-2", 7).encode())
            .to_json();
        assert!(matches!(
            open_downlink(&other, &dev, &cloud.public()),
            Err(DownlinkError::OtherDevice(_))
        ));
        let wrong_type = cloud
            .sign(USAGE_PAYLOAD_TYPE, &downlink("dev-1", 7).encode())
            .to_json();
        assert!(open_downlink(&wrong_type, &dev, &cloud.public()).is_err());
        assert!(open_downlink(b"{}", &dev, &cloud.public()).is_err());
        let garbage = cloud.sign(DOWNLINK_PAYLOAD_TYPE, b"{\"v\":1}").to_json();
        assert!(matches!(
            open_downlink(&garbage, &dev, &cloud.public()),
            Err(DownlinkError::Payload(_))
        ));
    }

    #[test]
    fn a_report_of_maximal_events_fits_the_body_limit() {
        let dev = DeviceId::parse(&"d".repeat(64)).unwrap();
        let boot = "b".repeat(32);
        let budget = MAX_REPORT_BODY_BYTES - report_overhead(&dev, &boot);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let outbox = MemoryOutbox::new(OutboxLimits::default(), clock);
        let attrs: BTreeMap<String, String> = (0..16)
            .map(|i| (format!("{i:0>32}"), "v".repeat(128)))
            .collect();
        for _ in 0..400 {
            outbox
                .append(NewEvent {
                    kind: EventKind::parse(&"k".repeat(32)).unwrap(),
                    qty: 1_000_000,
                    occurred_at: t0(),
                    attrs: attrs.clone(),
                    clock_suspect: true,
                })
                .unwrap();
        }
        let batch = outbox.build_report(1000, budget).unwrap().unwrap();
        assert!(
            batch.events.len() < 400,
            "the byte budget, not the count, must cut this report"
        );
        let report = UsageReport {
            v: 1,
            device_id: dev,
            report_seq: u64::MAX,
            sent_at: t0(),
            boot_id: boot,
            events: batch.events,
        };
        let body = report.encode();
        assert!(body.len() <= MAX_REPORT_BODY_BYTES, "{} bytes", body.len());
        assert!(
            body.len() > MAX_REPORT_BODY_BYTES - 4096,
            "the budget is used, not wasted: {}",
            body.len()
        );
        UsageReport::decode(&body).unwrap();
        let env = KeyPair::generate()
            .sign(USAGE_PAYLOAD_TYPE, &body)
            .to_json();
        assert!(env.len() <= rollcall_shared::limits::MAX_ENVELOPE_BYTES);
    }

    #[tokio::test]
    async fn a_bad_url_or_missing_ca_fails_at_start() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let mut mqtt = MqttSettings::new(BrokerUrl::plain("127.0.0.1", 1));
        mqtt.broker.tls = true;
        let rt = AgentRuntime {
            outbox: Arc::new(MemoryOutbox::new(OutboxLimits::default(), clock.clone())),
            key: KeyPair::generate(),
            device_id: DeviceId::parse("dev-1").unwrap(),
            topics: Topics::default(),
            mqtt,
            uplink: UplinkSettings::default(),
            cloud_key: KeyPair::generate().public(),
            clock,
            stats: UplinkStats::new(),
        };
        let r = run_uplink(rt, CancellationToken::new()).await;
        assert!(matches!(r, Err(UplinkError::Tls { .. })), "{r:?}");
    }

    /// A session that is never connected, for feeding it downlinks directly.
    fn offline_uplink(outbox: Arc<dyn Outbox>, cloud_key: PublicKey) -> Uplink {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let rt = AgentRuntime {
            outbox,
            key: KeyPair::generate(),
            device_id: DeviceId::parse("dev-1").unwrap(),
            topics: Topics::default(),
            mqtt: MqttSettings::new(BrokerUrl::plain("127.0.0.1", 1)),
            uplink: UplinkSettings::default(),
            cloud_key,
            clock,
            stats: UplinkStats::new(),
        };
        let options = mqtt_options(&rt.mqtt, rt.device_id.as_str(), None).unwrap();
        let (client, _eventloop) = AsyncClient::new(options, 10);
        let (connect_tx, _) = mpsc::channel(1);
        let (_, events) = mpsc::channel(1);
        Uplink::new(rt, client, connect_tx, events, Vec::new())
    }

    #[tokio::test]
    async fn a_replayed_older_policy_does_not_override_a_newer_one() {
        let cloud = KeyPair::generate();
        let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
            OutboxLimits::default(),
            Arc::new(ManualClock::new(t0())),
        ));
        let mut up = offline_uplink(outbox.clone(), cloud.public());
        let policy = |auto_reorder: bool, after_s: i64| {
            let d = Downlink {
                v: 1,
                device_id: DeviceId::parse("dev-1").unwrap(),
                sent_at: t0() + chrono::Duration::seconds(after_s),
                body: DownBody::Policy(rollcall_shared::payload::ReorderPolicy { auto_reorder }),
            };
            cloud.sign(DOWNLINK_PAYLOAD_TYPE, &d.encode()).to_json()
        };
        let opted_in = policy(true, 10);
        let opted_out = policy(false, 20);
        up.on_downlink(&opted_in).await;
        assert_eq!(outbox.policy().unwrap(), Some(true));
        up.on_downlink(&opted_out).await;
        assert_eq!(outbox.policy().unwrap(), Some(false));
        // The member opted out; the old, validly signed opt-in comes again.
        up.on_downlink(&opted_in).await;
        assert_eq!(
            outbox.policy().unwrap(),
            Some(false),
            "a replayed older policy must not win"
        );
        // The same policy again changes nothing either, and a newer one applies.
        up.on_downlink(&opted_out).await;
        up.on_downlink(&policy(true, 30)).await;
        assert_eq!(outbox.policy().unwrap(), Some(true));
    }

    /// Report numbers are small and sequential, so anyone who can publish on `.../down`
    /// could guess them: only an ack signed by the cloud's key may delete events.
    #[tokio::test]
    async fn an_ack_signed_by_another_key_deletes_nothing() {
        let cloud = KeyPair::generate();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
        let outbox: Arc<dyn Outbox> =
            Arc::new(MemoryOutbox::new(OutboxLimits::default(), clock.clone()));
        for _ in 0..3 {
            outbox
                .append(NewEvent {
                    kind: EventKind::parse("brew").unwrap(),
                    qty: 1,
                    occurred_at: t0(),
                    attrs: BTreeMap::new(),
                    clock_suspect: false,
                })
                .unwrap();
        }
        let batch = outbox
            .build_report(10, MAX_REPORT_BODY_BYTES)
            .unwrap()
            .unwrap();
        assert_eq!(batch.events.len(), 3);
        let mut up = offline_uplink(outbox.clone(), cloud.public());
        let ack = downlink("dev-1", batch.report_seq).encode();
        let forged = KeyPair::generate()
            .sign(DOWNLINK_PAYLOAD_TYPE, &ack)
            .to_json();
        up.on_downlink(&forged).await;
        // An unsigned look-alike: the cloud's keyid, no valid signature.
        let mut unsigned = cloud.sign(DOWNLINK_PAYLOAD_TYPE, &ack);
        unsigned.signatures[0].sig = String::new();
        up.on_downlink(&unsigned.to_json()).await;
        let stats = up.rt.stats.snapshot();
        assert_eq!(stats.downlinks_ignored, 2);
        assert_eq!((stats.reports_acked, stats.events_acked), (0, 0));
        assert_eq!(
            outbox.stats().unwrap().depth,
            3,
            "a forged ack must not delete anything"
        );
        // The genuine ack does.
        up.on_downlink(&cloud.sign(DOWNLINK_PAYLOAD_TYPE, &ack).to_json())
            .await;
        assert_eq!(outbox.stats().unwrap().depth, 0);
        assert_eq!(up.rt.stats.snapshot().events_acked, 3);
    }
}
