//! Runs a planned fleet through the real agent code: one [`run_uplink`] per simulated
//! device, all on one tokio runtime, with in-memory outboxes, talking MQTT to the
//! embedded broker of an in-process cloud (or to an external broker and cloud).
//!
//! Time: one shared simulated clock ([`ManualClock`]) that the runner moves, read by every
//! device (through its [`DeviceClock`]) and by the in-process cloud. The window is
//! anchored so that simulated time never runs ahead of the wall clock when the cloud is
//! external (it has its own clock then):
//!
//! - *history* (`history_days`): replayed one day at a time as fast as the cloud ingests,
//!   waiting after each day until every online device's events are acknowledged, so that
//!   the cloud receives each day's reports "on that day";
//! - *live* (`live_days`, `speed`): simulated time advances `speed` times faster than real
//!   time, until `live_days` have passed or the shutdown token is cancelled.
//!
//! Offline spells stop a device's uplink (it keeps recording into its outbox, as a real
//! device would) and start it again when the spell ends. Wrong-clock spells make the
//! device's clock read 2000-01-01 onwards; its events are flagged `clock_suspect`.

use super::clock::DeviceClock;
use super::config::FleetConfig;
use super::fleet::{Fleet, FleetSize, MemberPlan, SimEvent};
use super::truth::Truth;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rollcall_agent::outbox::{NewEvent, OutboxLimits};
use rollcall_agent::uplink::{BrokerUrl, UplinkSnapshot};
use rollcall_agent::{
    run_uplink, AgentRuntime, MemoryOutbox, MqttSettings, Outbox, UplinkSettings, UplinkStats,
};
use rollcall_cloud::domain::{Email, PhoneNumber, TimeZone};
use rollcall_cloud::registry::{self, NewMember};
use rollcall_shared::dsse::PublicKey;
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, DeviceId, EventKind, ManualClock, MemberId};
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which cloud the simulated devices report to.
#[derive(Debug, Clone)]
pub enum CloudTarget {
    /// Start the cloud (with its embedded broker) in this process, on the simulated clock.
    InProcess {
        /// Where the embedded broker listens.
        mqtt_listen: SocketAddr,
        /// Where the HTTP API listens.
        http_listen: SocketAddr,
    },
    /// A cloud already serving `data_dir`, reached through this broker.
    External {
        /// The broker URL.
        mqtt_url: String,
    },
}

/// Everything a simulation run needs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The fleet mix.
    pub fleet: FleetConfig,
    /// Seed for members, behaviour and events.
    pub seed: u64,
    /// How many members or devices.
    pub size: FleetSize,
    /// Days of history replayed before the live phase.
    pub history_days: u32,
    /// Days of live phase; `None` runs until shut down.
    pub live_days: Option<u32>,
    /// Simulated seconds per real second in the live phase.
    pub speed: f64,
    /// The cloud's data directory (its store, key) and where the truth file goes.
    pub data_dir: PathBuf,
    /// Which cloud.
    pub cloud: CloudTarget,
    /// Base configuration of an in-process cloud (its data dir and listen addresses are
    /// set from the fields above); `None`: the defaults.
    pub cloud_config: Option<rollcall_cloud::config::CloudConfig>,
    /// Where to write the ground truth.
    pub truth_path: PathBuf,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// Coffee machines track a pod slot ([`POD_SKU`]) and reorder by themselves; members
    /// opt in when they join, and an in-process cloud gets the pods in its catalogue.
    pub consumables: bool,
    /// A fixed window: its first date and planned length in days (to reproduce a run, or
    /// to resume a fleet planned earlier). History then runs from that date to now.
    /// `None`: the window starts `history_days` before the live phase. Either way, when
    /// the store already holds usage from this fleet, the devices continue their
    /// numbering and usage the cloud already received is not generated again.
    pub window: Option<(NaiveDate, i64)>,
}

/// What a finished run reports (`rollcall simulate` prints it as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    /// Members simulated.
    pub members: usize,
    /// Devices simulated.
    pub devices: usize,
    /// First simulated instant.
    pub sim_start: DateTime<Utc>,
    /// Last simulated instant.
    pub sim_end: DateTime<Utc>,
    /// Events the devices recorded.
    pub events_recorded: u64,
    /// Events the cloud acknowledged.
    pub events_acked: u64,
    /// Events still in outboxes (devices offline at the end, or not yet acknowledged).
    pub events_pending: u64,
    /// Events the outboxes refused (full).
    pub events_refused: u64,
    /// Events recorded with a wrong device clock.
    pub events_clock_suspect: u64,
    /// Device reconnects.
    pub reconnects: u64,
    /// Wall-clock seconds the run took.
    pub elapsed_s: f64,
    /// Acknowledged events per wall-clock second.
    pub events_per_s: f64,
    /// The ground-truth file.
    pub truth: PathBuf,
    /// The cloud's data directory.
    pub data_dir: PathBuf,
    /// The broker the devices used.
    pub mqtt_url: String,
}

struct SimDevice {
    id: DeviceId,
    clock: DeviceClock,
    outbox: Arc<MemoryOutbox>,
    runtime: AgentRuntime,
    stats: Arc<UplinkStats>,
    offline: Option<(DateTime<Utc>, DateTime<Utc>)>,
    running: Option<(CancellationToken, JoinHandle<()>)>,
    stopping: Option<JoinHandle<()>>,
    recorded: u64,
    refused: u64,
    suspect: u64,
    /// Its member has joined (and is registered): it may connect.
    admitted: bool,
}

impl SimDevice {
    fn snapshot(&self) -> UplinkSnapshot {
        self.stats.snapshot()
    }

    fn pending(&self) -> u64 {
        self.recorded.saturating_sub(self.snapshot().events_acked)
    }
}

struct ResumePoints {
    until: Option<DateTime<Utc>>,
    devices: std::collections::HashMap<String, DeviceResume>,
}

/// The newest numbers the store holds from one device.
#[derive(Debug, Clone, Copy)]
struct DeviceResume {
    seq: u64,
    report_seq: u64,
    tx_counter: u64,
    session: u64,
}

struct SimMember {
    registered: bool,
    next_day: i64,
    pending: VecDeque<SimEvent>,
    devices: Vec<usize>,
}

/// A simulation in progress.
pub struct Simulation {
    opts: SimOptions,
    fleet: Fleet,
    clock: ManualClock,
    t0: DateTime<Utc>,
    live_start: DateTime<Utc>,
    members: Vec<SimMember>,
    devices: Vec<SimDevice>,
    /// Usage up to this instant already reached the cloud in an earlier run.
    resumed_until: Option<DateTime<Utc>>,
    cloud: Option<(rollcall_cloud::server::RunningCloud, CancellationToken)>,
    mqtt_url: String,
    http_addr: Option<SocketAddr>,
    started: Instant,
}

/// The article simulated coffee machines reorder.
pub const POD_SKU: &str = "POD-CLASSIC";
/// Its catalogue price per pod, in cents.
pub const POD_PRICE: i64 = 45;

/// The pod slot of a simulated coffee machine: 60 pods, one per brew, reorder 60 below 12.
fn pod_slot() -> Result<rollcall_agent::consumables::Consumables> {
    use rollcall_shared::{Currency, Sku, SlotId};
    Ok(rollcall_agent::consumables::Consumables {
        slots: vec![rollcall_agent::consumables::SlotConfig {
            slot: SlotId::parse("pods")?,
            sku: Sku::parse(POD_SKU)?,
            capacity: 60,
            usage: [(EventKind::parse("brew")?, 1)].into_iter().collect(),
            threshold: 12,
            reorder_qty: 60,
            unit_price: POD_PRICE,
            currency: Currency::parse("USD")?,
        }],
        auto_reorder: false,
    })
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

fn bar(show: bool, len: u64, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta} {prefix}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

impl Simulation {
    /// Plans the fleet, starts (or connects to) the cloud, registers members and devices,
    /// and connects every device that is online at the start.
    pub async fn start(opts: SimOptions) -> Result<Simulation> {
        if !(opts.speed.is_finite() && opts.speed >= 1.0) {
            bail!("--speed must be at least 1 (simulated seconds per real second)");
        }
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("Failed to create {}", opts.data_dir.display()))?;
        let now = Utc::now();
        let live = opts.live_days.map(|d| Duration::days(i64::from(d)));
        // With a bounded live phase, end it at the wall clock's now (no future events).
        let live_start = match live {
            Some(d) => {
                now - d + Duration::milliseconds((d.num_milliseconds() as f64 / opts.speed) as i64)
            }
            None => now,
        };
        let (start_date, plan_days) = opts.window.unwrap_or_else(|| {
            let start: NaiveDate =
                (live_start - Duration::days(i64::from(opts.history_days))).date_naive();
            let days = i64::from(opts.history_days) + i64::from(opts.live_days.unwrap_or(30)) + 1;
            (start, days)
        });
        let t0 = start_date.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let fleet = Fleet::plan(&opts.fleet, opts.seed, opts.size, start_date, plan_days);
        let clock = ManualClock::new(t0);

        let needed = match opts.cloud {
            CloudTarget::InProcess { .. } => 2 * fleet.device_count() as u64 + 256,
            CloudTarget::External { .. } => fleet.device_count() as u64 + 256,
        };
        let limit = raise_fd_limit();
        if limit < needed {
            bail!(
                "{} devices need about {needed} open files here but the limit is {limit}; \
                 raise `ulimit -n`, or run the cloud as its own process and pass --mqtt-url",
                fleet.device_count()
            );
        }

        let (cloud, mqtt_url, http_addr, cloud_key) = match &opts.cloud {
            CloudTarget::InProcess {
                mqtt_listen,
                http_listen,
            } => {
                let mut cfg = opts.cloud_config.clone().unwrap_or_default();
                cfg.data_dir = opts.data_dir.clone();
                cfg.broker.listen = *mqtt_listen;
                cfg.http.listen = *http_listen;
                cfg.broker.max_connections = fleet.device_count() + 64;
                if opts.consumables {
                    cfg.orders
                        .catalogue
                        .push(rollcall_cloud::config::CatalogueEntry {
                            sku: POD_SKU.into(),
                            name: "Classic pods".into(),
                            unit_price: POD_PRICE,
                            currency: "USD".into(),
                        });
                }
                let token = CancellationToken::new();
                let running =
                    rollcall_cloud::server::start(cfg, Arc::new(clock.clone()), token.clone())
                        .await
                        .context("Failed to start the in-process cloud")?;
                let url = running.mqtt_url.clone();
                let http = running.http_addr;
                let key = running.public_key;
                (Some((running, token)), url, Some(http), key)
            }
            CloudTarget::External { mqtt_url } => {
                let path = opts.data_dir.join("cloud.key");
                if !path.exists() {
                    bail!(
                        "{} does not exist: start `rollcall-cloud serve --data-dir {}` first (the simulator registers the fleet in that store)",
                        path.display(),
                        opts.data_dir.display()
                    );
                }
                let key = rollcall_cloud::keys::load_or_create(&path)?.public();
                (None, mqtt_url.clone(), None, key)
            }
        };

        let mut sim = Simulation {
            members: Vec::new(),
            devices: Vec::new(),
            opts,
            fleet,
            clock,
            t0,
            live_start,
            resumed_until: None,
            cloud,
            mqtt_url,
            http_addr,
            started: Instant::now(),
        };
        sim.build_devices(cloud_key)?;
        let from = sim.resumed_until.unwrap_or(t0);
        sim.clock.set(from);
        sim.admit(from)?;
        sim.toggle_uplinks(from);
        sim.wait_connected().await?;
        Ok(sim)
    }

    /// The planned fleet.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The broker URL devices use.
    pub fn mqtt_url(&self) -> &str {
        &self.mqtt_url
    }

    /// The in-process cloud's HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The simulated clock (shared with the in-process cloud).
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Registers (in the cloud's registry) the members who have joined by `t`, with their
    /// devices, in one transaction. Members join the fleet when their day comes.
    fn admit(&mut self, t: DateTime<Utc>) -> Result<()> {
        let due: Vec<usize> = (0..self.members.len())
            .filter(|i| {
                let m = &self.fleet.members[*i];
                !self.members[*i].registered && self.fleet.day_start(m.tz, m.joined_day) <= t
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let mut conn = rollcall_cloud::store::open_writer(&self.opts.data_dir)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for &i in &due {
            let m = &self.fleet.members[i];
            let joined = self.fleet.day_start(m.tz, m.joined_day);
            let member = NewMember {
                id: MemberId::parse(&m.id)?,
                name: m.person.name(),
                phone: Some(PhoneNumber::parse(&m.person.phone, "US")?),
                email: Some(Email::parse(&m.person.email)?),
                tz: Some(TimeZone::parse(m.person.tz)?),
                plan: Some(m.plan.clone()),
                joined: Some(joined),
                joined_date: None,
                lang: None,
            };
            registry::upsert_member(&tx, &member, joined.max(self.t0).min(t))?;
            for d in &m.devices {
                let key = d.key(self.fleet.seed).public();
                registry::add_device(&tx, &DeviceId::parse(&d.id)?, &member.id, &key, t)?;
            }
            if self.opts.consumables {
                let policy = rollcall_cloud::orders::Policy {
                    auto_reorder: true,
                    limit_per_order: Some(10_000),
                    limit_30d: Some(30_000),
                    limit_slot_qty: Some(120),
                };
                rollcall_cloud::orders::set_policy(&tx, &member.id, &policy, t)?;
            }
        }
        tx.commit()?;
        for i in due {
            self.members[i].registered = true;
            for &d in &self.members[i].devices {
                self.devices[d].admitted = true;
            }
        }
        Ok(())
    }

    fn build_devices(&mut self, cloud_key: PublicKey) -> Result<()> {
        let broker: BrokerUrl = self
            .mqtt_url
            .parse()
            .map_err(|e| anyhow::anyhow!("broker URL {}: {e}", self.mqtt_url))?;
        let n = self.fleet.device_count();
        let uplink = UplinkSettings {
            batch_interval: std::time::Duration::from_millis(if n <= 1000 { 50 } else { 250 }),
            reconnect_min: std::time::Duration::from_millis(200),
            reconnect_max: std::time::Duration::from_secs(5),
            ..UplinkSettings::default()
        };
        let topics = Topics::default();
        let resume = self.resume_points()?;
        let pods = if self.opts.consumables {
            Some(Arc::new(pod_slot()?))
        } else {
            None
        };
        if let Some(until) = resume.until {
            self.resumed_until = Some(until);
        }
        for m in &self.fleet.members {
            let mut ids = Vec::new();
            for d in &m.devices {
                let instant = |day: i64| self.fleet.day_start(m.tz, day);
                let wrong = d.clock_wrong.map(|s| (instant(s.from), instant(s.to)));
                let clock = DeviceClock::new(self.clock.clone(), wrong);
                let mut outbox = match resume.devices.get(&d.id) {
                    Some(r) => MemoryOutbox::resume(
                        OutboxLimits::default(),
                        Arc::new(clock.clone()),
                        r.seq + 1,
                        r.report_seq + 1,
                        r.tx_counter + 1,
                        r.session,
                    ),
                    None => MemoryOutbox::new(OutboxLimits::default(), Arc::new(clock.clone())),
                };
                if let (Some(p), "coffee_machine") = (&pods, d.device_type.as_str()) {
                    outbox = outbox.with_consumables(p.clone());
                }
                let outbox = Arc::new(outbox);
                let stats = UplinkStats::new();
                let id = DeviceId::parse(&d.id)?;
                let runtime = AgentRuntime {
                    outbox: outbox.clone() as Arc<dyn Outbox>,
                    key: d.key(self.fleet.seed),
                    device_id: id.clone(),
                    topics: topics.clone(),
                    mqtt: MqttSettings::new(broker.clone()),
                    uplink: uplink.clone(),
                    cloud_key,
                    clock: Arc::new(clock.clone()),
                    stats: stats.clone(),
                };
                ids.push(self.devices.len());
                self.devices.push(SimDevice {
                    id,
                    clock,
                    outbox,
                    runtime,
                    stats,
                    offline: d.offline.map(|s| (instant(s.from), instant(s.to))),
                    running: None,
                    stopping: None,
                    recorded: 0,
                    refused: 0,
                    suspect: 0,
                    admitted: false,
                });
            }
            let mut next_day = m.joined_day.max(0);
            if let Some(until) = resume.until {
                while self.fleet.day_start(m.tz, next_day + 1) <= until {
                    next_day += 1;
                }
            }
            self.members.push(SimMember {
                registered: false,
                next_day,
                pending: VecDeque::new(),
                devices: ids,
            });
        }
        Ok(())
    }

    /// What the store already holds from this fleet: per device the newest event seq,
    /// report seq, transaction counter and status session, and the newest receipt time.
    fn resume_points(&self) -> Result<ResumePoints> {
        let conn = rollcall_cloud::store::open_reader(&self.opts.data_dir)?;
        let mut devices = std::collections::HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT d.id, d.max_report_seq, COALESCE(d.status_session, 0),
                    COALESCE((SELECT MAX(seq) FROM events e WHERE e.device_id = d.id), 0),
                    d.max_tx_counter
             FROM devices d",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (id, report_seq, session, seq, tx_counter) = row?;
            if seq > 0 || report_seq > 0 || tx_counter > 0 {
                devices.insert(
                    id,
                    DeviceResume {
                        seq: seq as u64,
                        report_seq: report_seq as u64,
                        tx_counter: tx_counter as u64,
                        session: session as u64,
                    },
                );
            }
        }
        let until: Option<i64> =
            conn.query_row("SELECT MAX(received_ms) FROM events", [], |r| r.get(0))?;
        Ok(ResumePoints {
            until: until
                .filter(|_| !devices.is_empty())
                .and_then(DateTime::from_timestamp_millis),
            devices,
        })
    }

    /// Starts and stops uplinks to match the devices' offline spells at `t`.
    fn toggle_uplinks(&mut self, t: DateTime<Utc>) {
        for d in &mut self.devices {
            let want = d.admitted && !d.offline.is_some_and(|(a, b)| a <= t && t < b);
            match (&d.running, want) {
                (None, true) => {
                    if d.stopping.as_ref().is_some_and(|h| !h.is_finished()) {
                        continue; // the old session is still saying goodbye; next step
                    }
                    d.stopping = None;
                    let token = CancellationToken::new();
                    let rt = d.runtime.clone();
                    let tk = token.clone();
                    let id = d.id.clone();
                    let handle = tokio::spawn(async move {
                        if let Err(e) = run_uplink(rt, tk).await {
                            tracing::error!(device_id = %id, error = %e, "Simulated uplink failed");
                        }
                    });
                    d.running = Some((token, handle));
                }
                (Some(_), false) => {
                    let (token, handle) = d.running.take().expect("running");
                    token.cancel();
                    d.stopping = Some(handle);
                }
                _ => {}
            }
        }
    }

    async fn wait_connected(&self) -> Result<()> {
        let want = self.devices.iter().filter(|d| d.running.is_some()).count() as u64;
        let pb = bar(self.opts.progress, want, "connecting");
        let deadline = Instant::now() + std::time::Duration::from_secs(60 + want / 50);
        loop {
            let up = self
                .devices
                .iter()
                .filter(|d| d.running.is_some() && d.snapshot().connected)
                .count() as u64;
            pb.set_position(up);
            if up >= want {
                pb.finish_and_clear();
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {up} of {want} simulated devices connected to {} in time",
                    self.mqtt_url
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Records every event that happened up to `t` into the devices' outboxes.
    fn emit(&mut self, t: DateTime<Utc>) -> u64 {
        let mut n = 0;
        for (mi, sm) in self.members.iter_mut().enumerate() {
            let plan: &MemberPlan = &self.fleet.members[mi];
            while self.fleet.day_start(plan.tz, sm.next_day) <= t {
                let skip = self.resumed_until;
                let events = self.fleet.day_events(plan, sm.next_day);
                sm.pending
                    .extend(events.into_iter().filter(|e| skip.is_none_or(|u| e.at > u)));
                sm.next_day += 1;
            }
            while sm.pending.front().is_some_and(|e| e.at <= t) {
                let e = sm.pending.pop_front().expect("front");
                let d = &mut self.devices[sm.devices[e.device]];
                let (device_time, wrong) = d.clock.reading(e.at);
                let event = NewEvent {
                    kind: EventKind::parse(&e.kind).expect("fleet kinds are validated"),
                    qty: e.qty,
                    occurred_at: rollcall_agent::capture::protocol_time(device_time),
                    attrs: e.attrs,
                    clock_suspect: wrong,
                };
                match d.outbox.append(event) {
                    Ok(_) => {
                        d.recorded += 1;
                        d.suspect += u64::from(wrong);
                        n += 1;
                    }
                    Err(error) => {
                        d.refused += 1;
                        tracing::warn!(device_id = %d.id, %error, "Simulated event refused");
                    }
                }
            }
        }
        n
    }

    fn pending_online(&self) -> u64 {
        self.devices
            .iter()
            .filter(|d| d.running.is_some())
            .map(SimDevice::pending)
            .sum()
    }

    /// Waits until every online device's events are acknowledged, or `limit` passes.
    async fn wait_drained(&self, limit: std::time::Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.pending_online() == 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Replays the history phase day by day.
    pub async fn run_history(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let from = self.resumed_until.unwrap_or(self.t0).max(self.t0);
        let days = (self.live_start - from)
            .num_seconds()
            .max(0)
            .div_euclid(86_400) as u64
            + 1;
        let pb = bar(self.opts.progress, days, "history");
        let mut t = from;
        let mut recorded = 0;
        while t < self.live_start && !shutdown.is_cancelled() {
            t = (t + Duration::days(1)).min(self.live_start);
            self.clock.set(t);
            self.admit(t)?;
            self.toggle_uplinks(t);
            recorded += self.emit(t);
            let drained = self.wait_drained(std::time::Duration::from_secs(10)).await;
            if !drained {
                tracing::warn!(day = %t.date_naive(), pending = self.pending_online(), "Day not fully acknowledged within 10 s; moving on");
            }
            pb.set_prefix(format!("{} events", recorded));
            pb.inc(1);
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// Runs the live phase until `live_days` have passed or `shutdown` is cancelled.
    pub async fn run_live(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let end = self
            .opts
            .live_days
            .map(|d| self.live_start + Duration::days(i64::from(d)));
        let total = end.map(|e| (e - self.live_start).num_minutes().max(1) as u64);
        let pb = match total {
            Some(t) if self.opts.progress => bar(true, t, "live (min)"),
            _ => ProgressBar::hidden(),
        };
        let anchor = Instant::now();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let elapsed = anchor.elapsed().as_secs_f64() * self.opts.speed;
            let mut t = self.live_start + Duration::milliseconds((elapsed * 1000.0) as i64);
            let done = end.is_some_and(|e| t >= e);
            if let Some(e) = end {
                t = t.min(e);
            }
            self.clock.set(t);
            self.admit(t)?;
            self.toggle_uplinks(t);
            self.emit(t);
            pb.set_position((t - self.live_start).num_minutes().max(0) as u64);
            if done {
                break;
            }
        }
        pb.finish_and_clear();
        Ok(())
    }

    /// Drains what can be drained, stops every device and the in-process cloud, writes
    /// the ground truth and returns the summary.
    pub async fn finish(self) -> Result<SimSummary> {
        let drain = std::time::Duration::from_secs(30 + self.devices.len() as u64 / 100);
        self.finish_within(drain).await
    }

    /// [`Simulation::finish`], waiting at most `drain` for outstanding acknowledgements.
    pub async fn finish_within(mut self, drain: std::time::Duration) -> Result<SimSummary> {
        if !self.wait_drained(drain).await {
            tracing::warn!(
                pending = self.pending_online(),
                "Not every event was acknowledged before the end"
            );
        }
        let sim_end = self.clock.now();
        let mut handles = Vec::new();
        for d in &mut self.devices {
            if let Some((token, handle)) = d.running.take() {
                token.cancel();
                handles.push(handle);
            }
            if let Some(h) = d.stopping.take() {
                handles.push(h);
            }
        }
        for h in handles {
            let _ = h.await;
        }
        let (mut recorded, mut acked, mut refused, mut suspect, mut reconnects) = (0, 0, 0, 0, 0);
        for d in &self.devices {
            let s = d.snapshot();
            recorded += d.recorded;
            acked += s.events_acked;
            refused += d.refused;
            suspect += d.suspect;
            reconnects += s.reconnects;
        }
        if let Some((cloud, token)) = self.cloud.take() {
            token.cancel();
            cloud.wait().await;
        }
        let complete_days = (sim_end - self.t0).num_seconds().div_euclid(86_400);
        let truth = Truth::build(&self.fleet, complete_days);
        truth.write(&self.opts.truth_path)?;
        let elapsed_s = self.started.elapsed().as_secs_f64();
        Ok(SimSummary {
            members: self.fleet.members.len(),
            devices: self.devices.len(),
            sim_start: self.t0,
            sim_end,
            events_recorded: recorded,
            events_acked: acked,
            events_pending: recorded - acked.min(recorded),
            events_refused: refused,
            events_clock_suspect: suspect,
            reconnects,
            elapsed_s,
            events_per_s: acked as f64 / elapsed_s.max(1e-9),
            truth: self.opts.truth_path.clone(),
            data_dir: self.opts.data_dir.clone(),
            mqtt_url: self.mqtt_url.clone(),
        })
    }
}
