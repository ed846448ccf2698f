//! The `rollcall-cloud` command line. Every command takes `--config FILE` and
//! `--data-dir DIR`; `serve` also `--mqtt-listen`, `--mqtt-url` and `--http-listen`.

use crate::config::CloudConfig;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rollcall_shared::dsse::PublicKey;
use rollcall_shared::{Clock, DeviceId, MemberId, SystemClock};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Rollcall cloud: ingest, registry and API.
#[derive(Debug, Parser)]
#[command(name = "rollcall-cloud", version, about)]
pub struct Cli {
    /// Configuration file (TOML); defaults apply when omitted.
    #[arg(long, global = true, env = "ROLLCALL_CLOUD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store and keys); overrides `data_dir` and `ROLLCALL_DATA_DIR`.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A bad argument found after parsing (a value clap cannot check on its own, such as an
/// `--as-of` in the future): `main` prints it with clap's usage hint and exits with 2,
/// like any other usage error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UsageError(Box<clap::Error>);

impl UsageError {
    /// A usage error saying `message`.
    pub fn new(message: impl std::fmt::Display) -> Self {
        use clap::CommandFactory;
        Self(Box::new(
            Cli::command().error(clap::error::ErrorKind::ValueValidation, message),
        ))
    }

    /// Prints the error with the usage hint and exits with status 2.
    pub fn exit(&self) -> ! {
        self.0.exit()
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (unless external), ingest and HTTP until SIGINT/SIGTERM.
    Serve {
        /// Embedded broker listen address (port 0 picks one); overrides `broker.listen`.
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// External broker URL; no embedded broker then. Overrides `broker.url`.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// HTTP listen address (port 0 picks one); overrides `http.listen`.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
    },
    /// Members (subscribers).
    #[command(subcommand)]
    Members(MembersCmd),
    /// Devices.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Rejected and held messages.
    #[command(subcommand)]
    Quarantine(QuarantineCmd),
    /// The cloud's signing key.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Score every registered member now (or as of an earlier instant) and print counts by state.
    Score {
        /// Score the fleet as it stood at this instant (RFC 3339, not in the future); usage
        /// after it is ignored.
        #[arg(long)]
        as_of: Option<String>,
        /// Print JSON: `{"as_of", "counts", "members": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// The fleet model.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Historical usage.
    #[command(subcommand)]
    Usage(UsageCmd),
    /// API bearer tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Personalised outreach: preview, list, plan now.
    #[command(subcommand)]
    Outreach(OutreachCmd),
    /// The delivery queue.
    #[command(subcommand)]
    Deliveries(DeliveriesCmd),
    /// Device-initiated orders.
    #[command(subcommand)]
    Orders(OrdersCmd),
    /// The tamper-evident transaction ledger.
    #[command(subcommand)]
    Ledger(LedgerCmd),
}

/// `outreach …`.
#[derive(Debug, Subcommand)]
pub enum OutreachCmd {
    /// Render what rule NAME would send to a member, with their real data, without sending.
    Preview {
        /// Member id.
        #[arg(long)]
        member: String,
        /// Rule name (`[outreach.rules.NAME]`).
        #[arg(long)]
        rule: String,
        /// Print JSON (with the template context).
        #[arg(long)]
        json: bool,
    },
    /// List messages, newest first: id, member, rule, channel, status, reason, body.
    List {
        /// Only this member.
        #[arg(long)]
        member: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show one message with its policy log.
    Show {
        /// Message id.
        id: i64,
    },
    /// Run one planning step now (what `serve` does every `outreach.tick_interval_s`).
    Tick,
}

/// `deliveries …`.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCmd {
    /// List deliveries, newest first: id, channel, status, attempts, last error.
    List {
        /// Only this status: pending, in_flight, awaiting_ack, delivered, dead, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Show one delivery with every attempt.
    Show {
        /// Delivery id.
        id: i64,
    },
    /// Make a dead delivery due again now (one more attempt; re-enables a 410'd endpoint;
    /// a marketing message still waits out the member's quiet hours).
    Retry {
        /// Delivery id.
        id: i64,
    },
}

/// `tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a token: prints `{"id", "name", "role"}` as JSON, then the token alone on the
    /// last line (shown this once; only its hash is stored).
    Create {
        /// `support`, `analyst` or `admin`.
        #[arg(long)]
        role: String,
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
    },
    /// Revoke a token by id (from `tokens list`).
    Revoke {
        /// Token id.
        id: i64,
    },
    /// List tokens (never their secrets) as JSON.
    List,
}

/// `orders …`.
#[derive(Debug, Subcommand)]
pub enum OrdersCmd {
    /// List orders, newest first.
    List {
        /// Only this member's.
        #[arg(long)]
        member: Option<String>,
        /// Print JSON (a list of objects).
        #[arg(long)]
        json: bool,
    },
    /// Cancel an accepted order within its cancellation window, or a held one.
    Cancel {
        /// The transaction id.
        tx_id: String,
        /// Why (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Confirm an order held for confirmation (the member agreed to the catalogue price).
    Confirm {
        /// The transaction id.
        tx_id: String,
    },
    /// Mark an accepted order delivered.
    Deliver {
        /// The transaction id.
        tx_id: String,
    },
}

/// `ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Recompute the Merkle tree and check every entry, device signature and checkpoint.
    /// Exits 1 naming the first bad entry if anything was altered, removed or reordered.
    Verify {
        /// Print `{"ok": true, "entries": N, "root": "<hex>"}` or
        /// `{"ok": false, "first_bad_index": i, "problem": "..."}`.
        #[arg(long)]
        json: bool,
    },
    /// Write entries, checkpoints and public keys as plain files (see docs/ledger.md).
    Export {
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// `model …`.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Fit the model by maximum likelihood and print parameters, log-likelihood, members, convergence.
    Fit {
        /// Fit on a usage CSV instead of the store (the store is not touched).
        #[arg(long, requires = "calibration_end")]
        from_csv: Option<PathBuf>,
        /// With --from-csv: ignore usage after this date (YYYY-MM-DD).
        #[arg(long, requires = "from_csv")]
        calibration_end: Option<String>,
        /// With --from-csv: time unit, `days` or `weeks`.
        #[arg(long, default_value = "days", requires = "from_csv")]
        unit: String,
        /// `mbgnbd`, `bgnbd` or `bgbb` (`bgbb` only with days). Default: `mbgnbd` with
        /// --from-csv, else `scoring.model`.
        #[arg(long)]
        model: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `usage …`.
#[derive(Debug, Subcommand)]
pub enum UsageCmd {
    /// Import usage from CSV (`member_id,occurred_at,kind,qty` or `device_id,…`); idempotent.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
}

/// `members …`.
#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Add or update a member. An update changes the name and the fields given; the others
    /// keep their values (`--clear` removes one).
    Add {
        /// Member id.
        #[arg(long)]
        id: String,
        /// Full name.
        #[arg(long)]
        name: String,
        /// Phone number, any common format (national numbers use `registry.default_region`).
        #[arg(long)]
        phone: Option<String>,
        /// E-mail address.
        #[arg(long)]
        email: Option<String>,
        /// IANA time zone, e.g. Europe/Berlin.
        #[arg(long)]
        tz: Option<String>,
        /// Plan name.
        #[arg(long)]
        plan: Option<String>,
        /// Subscription start, YYYY-MM-DD or RFC 3339.
        #[arg(long)]
        joined: Option<String>,
        /// Preferred language (ISO 639-1, e.g. es) for greetings; English when no template exists.
        #[arg(long)]
        lang: Option<String>,
        /// Remove a stored field (repeatable): phone, email, tz, plan or lang.
        #[arg(long, value_enum, value_name = "FIELD")]
        clear: Vec<crate::registry::ClearableField>,
    },
    /// Import members from CSV with header `id,name,phone,email,tz,plan,joined[,lang]`.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Set a member's consent to automatic reordering and spending limits (minor units).
    /// Limits not given are removed (no limit).
    Consent {
        /// Member id.
        #[arg(long)]
        id: String,
        /// Opt in (`on`) or out (`off`).
        #[arg(long, value_enum)]
        auto_reorder: OnOff,
        /// Most per order, in minor units (cents).
        #[arg(long)]
        limit_order: Option<i64>,
        /// Most over any rolling 30 days, in minor units.
        #[arg(long = "limit-30d")]
        limit_30d: Option<i64>,
        /// Most units per slot in one order.
        #[arg(long)]
        limit_slot_qty: Option<i64>,
    },
    /// Show a member with devices and usage totals.
    Show {
        /// Member id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `devices …`.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Register a device's public key for a member; held reports from it are ingested.
    Add {
        /// Device id.
        #[arg(long)]
        id: String,
        /// Member id.
        #[arg(long)]
        member: String,
        /// Standard base64 of the device's 32-byte Ed25519 public key (as `rollcall-agent init` prints).
        #[arg(long)]
        public_key: String,
    },
}

/// `quarantine …`.
#[derive(Debug, Subcommand)]
pub enum QuarantineCmd {
    /// List quarantined messages, newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Only this reason code.
        #[arg(long, value_parser = [
            "too_large", "malformed", "bad_signature", "unknown_device",
            "unsupported_version", "replayed", "device_mismatch", "conflict",
        ])]
        reason: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Delete quarantined messages last seen more than N days ago. Held reports lose
    /// nothing: their agents keep them until acked and send them again.
    Purge {
        /// Age in days (by last sighting); 0 purges everything of the state.
        #[arg(long)]
        older_than_days: u32,
        /// Only this state.
        #[arg(long, value_parser = ["held", "rejected", "released"])]
        state: Option<String>,
    },
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Print the cloud's public key (creating the key on first use) as JSON.
    Show,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = CloudConfig::load(cli.config.as_deref())?;
    if let Some(d) = cli.data_dir {
        cfg.data_dir = d;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve {
            mqtt_listen,
            mqtt_url,
            http_listen,
        } => {
            if let Some(a) = mqtt_listen {
                cfg.broker.listen = a;
            }
            if let Some(u) = mqtt_url {
                cfg.broker.url = u;
            }
            if let Some(a) = http_listen {
                cfg.http.listen = a;
            }
            cfg.validate("<command line>")?;
            serve(cfg, clock).await
        }
        Command::Members(cmd) => members(cfg, clock, cmd),
        Command::Devices(DevicesCmd::Add {
            id,
            member,
            public_key,
        }) => {
            let device = DeviceId::parse(&id)?;
            let member = MemberId::parse(&member)?;
            let key = PublicKey::from_base64(&public_key).context("--public-key")?;
            let mut conn = crate::store::open_writer(&cfg.data_dir)?;
            let registered =
                crate::registry::add_device(&conn, &device, &member, &key, clock.now())?;
            let topics = rollcall_shared::topics::Topics::new(&cfg.topic_prefix);
            let (released, outcome) =
                crate::ingest::release_held(&mut conn, &topics, &device, cfg.ingest.replay_window)?;
            println!(
                "{}",
                serde_json::json!({
                    "device_id": device.as_str(), "member_id": member.as_str(), "registered": registered,
                    "held_released": released, "events_stored": outcome.events_stored,
                })
            );
            Ok(())
        }
        Command::Quarantine(QuarantineCmd::List {
            json,
            reason,
            limit,
        }) => {
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let rows = crate::ingest::list_quarantine(&conn, reason.as_deref(), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<6} {:<20} {:<9} {:<24} {:<26} {:>5}  detail",
                    "id", "reason", "state", "device", "received", "seen"
                );
                for r in rows {
                    println!(
                        "{:<6} {:<20} {:<9} {:<24} {:<26} {:>5}  {}",
                        r.id,
                        r.reason,
                        r.state,
                        r.device_id.unwrap_or_default(),
                        r.received_at,
                        r.seen_count,
                        r.detail
                    );
                }
            }
            Ok(())
        }
        Command::Quarantine(QuarantineCmd::Purge {
            older_than_days,
            state,
        }) => {
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let before = clock.now() - chrono::Duration::days(i64::from(older_than_days));
            let purged = crate::ingest::purge_quarantine(&conn, state.as_deref(), before)?;
            println!("{}", serde_json::json!({ "purged": purged }));
            Ok(())
        }
        Command::Score { as_of, json } => score(cfg, clock, as_of, json),
        Command::Model(ModelCmd::Fit {
            from_csv,
            calibration_end,
            unit,
            model,
            json,
        }) => model_fit(cfg, clock, from_csv, calibration_end, &unit, model, json),
        Command::Usage(UsageCmd::Import { file }) => usage_import(cfg, clock, &file),
        Command::Tokens(cmd) => tokens(cfg, clock, cmd),
        Command::Outreach(cmd) => outreach(cfg, clock, cmd),
        Command::Deliveries(cmd) => deliveries(cfg, clock, cmd),
        Command::Orders(cmd) => orders(cfg, clock, cmd),
        Command::Ledger(cmd) => ledger(cfg, cmd),
        Command::Keys(KeysCmd::Show) => {
            let key = crate::keys::load_or_create(&cfg.data_dir.join("cloud.key"))?;
            println!(
                "{}",
                serde_json::json!({"public_key": key.public().to_base64(), "keyid": key.keyid()})
            );
            Ok(())
        }
    }
}

fn tokens(cfg: CloudConfig, clock: Arc<dyn Clock>, cmd: TokensCmd) -> anyhow::Result<()> {
    use crate::tokens::{self, Role};
    let conn = crate::store::open_writer(&cfg.data_dir)?;
    match cmd {
        TokensCmd::Create { role, name } => {
            let t = tokens::create(&conn, &name, Role::parse(&role)?, clock.now())?;
            println!(
                "{}",
                serde_json::json!({"id": t.id, "name": t.name, "role": t.role})
            );
            println!("{}", t.token);
        }
        TokensCmd::Revoke { id } => {
            if !tokens::revoke(&conn, id, clock.now())? {
                bail!("no live token with id {id}");
            }
            println!("{}", serde_json::json!({"revoked": id}));
        }
        TokensCmd::List => println!("{}", serde_json::to_string(&tokens::list(&conn)?)?),
    }
    Ok(())
}

fn members(cfg: CloudConfig, clock: Arc<dyn Clock>, cmd: MembersCmd) -> anyhow::Result<()> {
    let region = cfg.registry.default_region.clone();
    match cmd {
        MembersCmd::Add {
            id,
            name,
            phone,
            email,
            tz,
            plan,
            joined,
            lang,
            clear,
        } => {
            use crate::registry::ClearableField as F;
            for (field, given) in [
                (F::Phone, phone.is_some()),
                (F::Email, email.is_some()),
                (F::Tz, tz.is_some()),
                (F::Plan, plan.is_some()),
                (F::Lang, lang.is_some()),
            ] {
                if given && clear.contains(&field) {
                    let name = clap::ValueEnum::to_possible_value(&field)
                        .map(|v| v.get_name().to_owned())
                        .unwrap_or_default();
                    return Err(UsageError::new(format!(
                        "--{name} and --clear {name} contradict each other"
                    ))
                    .into());
                }
            }
            let m = crate::registry::NewMember::parse(
                &id,
                &name,
                phone.as_deref(),
                email.as_deref(),
                tz.as_deref(),
                plan.as_deref(),
                joined.as_deref(),
                &region,
            )?
            .with_lang(lang.as_deref())?;
            let mut conn = crate::store::open_writer(&cfg.data_dir)?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let created = crate::registry::upsert_member(&tx, &m, clock.now())?;
            crate::registry::clear_member_fields(&tx, &m.id, &clear)?;
            let phone: Option<String> = tx.query_row(
                "SELECT phone FROM members WHERE id = ?1",
                [m.id.as_str()],
                |r| r.get(0),
            )?;
            tx.commit()?;
            println!(
                "{}",
                serde_json::json!({"id": m.id.as_str(), "created": created, "phone": phone})
            );
            Ok(())
        }
        MembersCmd::Import { file } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("Failed to read {}", file.display()))?;
            let mut conn = crate::store::open_writer(&cfg.data_dir)?;
            let s = crate::registry::import_members(&mut conn, &bytes, &region, clock.now())?;
            for r in &s.rejected {
                eprintln!("{}:{}: {}", file.display(), r.line, r.error);
            }
            println!("{}", serde_json::to_string(&s)?);
            if !s.rejected.is_empty() {
                bail!(
                    "{} row(s) rejected; the others were imported",
                    s.rejected.len()
                );
            }
            Ok(())
        }
        MembersCmd::Consent {
            id,
            auto_reorder,
            limit_order,
            limit_30d,
            limit_slot_qty,
        } => {
            let id = MemberId::parse(&id)?;
            for (flag, v) in [
                ("--limit-order", limit_order),
                ("--limit-30d", limit_30d),
                ("--limit-slot-qty", limit_slot_qty),
            ] {
                if v.is_some_and(|v| v < 0) {
                    bail!("{flag} must not be negative");
                }
            }
            let p = crate::orders::Policy {
                auto_reorder: auto_reorder == OnOff::On,
                limit_per_order: limit_order,
                limit_30d,
                limit_slot_qty,
            };
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            crate::orders::set_policy(&conn, &id, &p, clock.now())?;
            let mut v = serde_json::to_value(p)?;
            v["member_id"] = id.as_str().into();
            println!("{v}");
            Ok(())
        }
        MembersCmd::Show { id, json } => {
            let id = MemberId::parse(&id)?;
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let Some(v) = crate::registry::show_member(&conn, &id)? else {
                bail!("no member with id {:?}", id.as_str());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{} ({})", v.name, v.id);
                println!(
                    "  phone {}  email {}  tz {}",
                    v.phone.as_deref().unwrap_or("-"),
                    v.email.as_deref().unwrap_or("-"),
                    v.tz.as_deref().unwrap_or("-")
                );
                for d in &v.devices {
                    println!(
                        "  device {}  {}  last seen {}",
                        d.id,
                        d.presence.as_deref().unwrap_or("never connected"),
                        d.last_seen_at.as_deref().unwrap_or("-")
                    );
                }
                println!(
                    "  usage: {} events from {} to {}",
                    v.usage.events,
                    v.usage.first_at.as_deref().unwrap_or("-"),
                    v.usage.last_at.as_deref().unwrap_or("-")
                );
                for (k, q) in &v.usage.by_kind {
                    println!("    {k}: {q}");
                }
                if let (Some(state), Some(score)) = (&v.state, v.score) {
                    println!("  engagement: {state}, score {score}");
                    for r in &v.reasons {
                        println!("    {r}");
                    }
                    for t in &v.transitions {
                        println!(
                            "    {}  {} -> {}",
                            t.at,
                            t.old_state.as_deref().unwrap_or("-"),
                            t.new_state
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn score(
    cfg: CloudConfig,
    clock: Arc<dyn Clock>,
    as_of: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let now = clock.now();
    let as_of = match as_of {
        Some(s) => {
            let at = chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|_| UsageError::new(format!("--as-of {s:?} is not an RFC 3339 instant")))?
                .with_timezone(&chrono::Utc);
            // A stored run in the future would keep every live run until then from being
            // stored (runs are stored only when they do not go back in time).
            if at > now {
                return Err(UsageError::new(format!(
                    "--as-of {s:?} is in the future (now {}): only the present or the past can be scored",
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))
                .into());
            }
            at
        }
        None => now,
    };
    let mut conn = crate::store::open_writer(&cfg.data_dir)?;
    let run = crate::scoring::score_once(&mut conn, &cfg.scoring, as_of, now)?;
    for w in &run.warnings {
        eprintln!("warning: {w}");
    }
    if !run.persisted {
        eprintln!(
            "note: {} is before the latest stored scoring run; these scores were not stored",
            run.as_of.to_rfc3339()
        );
    }
    if json {
        println!("{}", serde_json::to_string(&run)?);
    } else {
        println!("as of {}", run.as_of.to_rfc3339());
        for (s, n) in &run.counts {
            println!("{:<9} {n}", s.name());
        }
    }
    Ok(())
}

fn model_fit(
    cfg: CloudConfig,
    clock: Arc<dyn Clock>,
    from_csv: Option<PathBuf>,
    calibration_end: Option<String>,
    unit: &str,
    model: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::scoring::{ModelKind, Unit};
    let kind = match model {
        Some(m) => ModelKind::parse(&m).ok_or_else(|| {
            UsageError::new(format!("--model {m:?}: expected mbgnbd, bgnbd or bgbb"))
        })?,
        // A usage file is fitted with the buy-till-you-die model the published fits use;
        // live scoring keeps the configured model (docs/scoring.md).
        None if from_csv.is_some() => ModelKind::Mbgnbd,
        None => cfg.scoring.model,
    };
    let result = match from_csv {
        Some(file) => {
            let end = calibration_end.context("--calibration-end is required with --from-csv")?;
            let end = chrono::NaiveDate::parse_from_str(&end, "%Y-%m-%d").map_err(|_| {
                UsageError::new(format!("--calibration-end {end:?} is not YYYY-MM-DD"))
            })?;
            let unit = Unit::parse(unit).ok_or_else(|| {
                UsageError::new(format!("--unit {unit:?}: expected days or weeks"))
            })?;
            if kind.is_discrete() && unit != Unit::Days {
                return Err(UsageError::new(format!(
                    "--model {kind} counts whole days: use --unit days, or --model mbgnbd or bgnbd for weeks"
                ))
                .into());
            }
            let bytes = std::fs::read(&file)
                .with_context(|| format!("Failed to read {}", file.display()))?;
            let (r, rejected) = crate::scoring::fit_csv(&bytes, end, unit, kind)?;
            for e in &rejected {
                eprintln!("{}:{}: {}", file.display(), e.line, e.error);
            }
            r
        }
        None => {
            let mut scoring = cfg.scoring.clone();
            scoring.model = kind;
            let mut conn = crate::store::open_writer(&cfg.data_dir)?;
            let now = clock.now();
            crate::scoring::fit_store(&mut conn, &scoring, now, now)?
        }
    };
    if !result.converged {
        eprintln!("warning: the fit did not converge");
    }
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let p = result.params;
        let n = result.model.param_names();
        println!(
            "{}: {}={:.4} {}={:.4} {}={:.4} {}={:.4}  log-likelihood {:.2}  members {}  {}",
            result.model,
            n[0],
            p.r,
            n[1],
            p.alpha,
            n[2],
            p.a,
            n[3],
            p.b,
            result.log_likelihood,
            result.members,
            if result.converged {
                "converged"
            } else {
                "NOT converged"
            }
        );
    }
    Ok(())
}

fn usage_import(
    cfg: CloudConfig,
    clock: Arc<dyn Clock>,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let bytes =
        std::fs::read(file).with_context(|| format!("Failed to read {}", file.display()))?;
    let mut conn = crate::store::open_writer(&cfg.data_dir)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({eta})")
                .expect("valid template"),
        );
        b
    });
    let out = crate::usage::import(
        &mut conn,
        &bytes,
        cfg.scoring.default_tz(),
        clock.now(),
        |done, total| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for r in &out.rejected {
        eprintln!("{}:{}: {}", file.display(), r.line, r.error);
    }
    println!("{}", serde_json::to_string(&out)?);
    if !out.rejected.is_empty() {
        bail!(
            "{} row(s) rejected; the others were imported",
            out.rejected.len()
        );
    }
    Ok(())
}

fn outreach(cfg: CloudConfig, clock: Arc<dyn Clock>, cmd: OutreachCmd) -> anyhow::Result<()> {
    match cmd {
        OutreachCmd::Preview { member, rule, json } => {
            let member = MemberId::parse(&member)?;
            let o = crate::outreach::Outreach::new(&cfg)?;
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let p = o.preview(&conn, member.as_str(), &rule, clock.now())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                let channels: Vec<_> = p.channels.iter().map(|c| c.name()).collect();
                println!(
                    "rule {} ({}, {}) to {} by {}",
                    p.rule,
                    p.trigger,
                    p.category.name(),
                    p.member_id,
                    channels.join(", ")
                );
                println!("Subject: {}\n\n{}", p.subject, p.body);
            }
            Ok(())
        }
        OutreachCmd::List {
            member,
            json,
            limit,
        } => {
            let member = member.map(|m| MemberId::parse(&m)).transpose()?;
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let rows =
                crate::outreach::view::list(&conn, member.as_ref().map(|m| m.as_str()), limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<6} {:<14} {:<18} {:<8} {:<10} {:<22} subject",
                    "id", "member", "rule", "channel", "status", "reason"
                );
                for r in rows {
                    println!(
                        "{:<6} {:<14} {:<18} {:<8} {:<10} {:<22} {}",
                        r.id,
                        r.member_id,
                        r.rule,
                        r.channel,
                        r.status,
                        r.reason.as_deref().unwrap_or("-"),
                        r.subject
                    );
                }
            }
            Ok(())
        }
        OutreachCmd::Show { id } => {
            let conn = crate::store::open_writer(&cfg.data_dir)?;
            let row = crate::outreach::view::list(&conn, None, u32::MAX)?
                .into_iter()
                .find(|r| r.id == id)
                .with_context(|| format!("no outreach message with id {id}"))?;
            let log = crate::outreach::view::log(&conn, id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"message": row, "log": log}))?
            );
            Ok(())
        }
        OutreachCmd::Tick => {
            let o = crate::outreach::Outreach::new(&cfg)?;
            let mut conn = crate::store::open_writer(&cfg.data_dir)?;
            let r = o.tick(&mut conn, clock.now())?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn deliveries(cfg: CloudConfig, clock: Arc<dyn Clock>, cmd: DeliveriesCmd) -> anyhow::Result<()> {
    let mut conn = crate::store::open_writer(&cfg.data_dir)?;
    match cmd {
        DeliveriesCmd::List {
            status,
            json,
            limit,
        } => {
            let status = status
                .as_deref()
                .map(crate::delivery::DeliveryStatus::parse)
                .transpose()?;
            let rows = crate::delivery::list(&conn, status, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<6} {:<8} {:<13} {:>8}  {:<26} last error",
                    "id", "channel", "status", "attempts", "target"
                );
                for r in rows {
                    println!(
                        "{:<6} {:<8} {:<13} {:>8}  {:<26} {}",
                        r.id,
                        r.channel,
                        r.status,
                        r.attempts,
                        r.target,
                        r.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
        DeliveriesCmd::Show { id } => {
            let d = crate::delivery::get(&conn, id)?
                .with_context(|| format!("no delivery with id {id}"))?;
            let attempts = crate::delivery::attempts(&conn, id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"delivery": d, "attempts": attempts})
                )?
            );
            Ok(())
        }
        DeliveriesCmd::Retry { id } => {
            crate::delivery::retry(&mut conn, id, clock.now())?;
            let d = crate::delivery::get(&conn, id)?
                .with_context(|| format!("no delivery with id {id}"))?;
            println!("{}", serde_json::to_string(&d)?);
            Ok(())
        }
    }
}

async fn serve(cfg: CloudConfig, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let cloud = crate::server::start(cfg.clone(), clock, shutdown.clone()).await?;
    // One line of JSON on stdout for scripts and tests; logs go to stderr.
    println!(
        "{}",
        serde_json::json!({
            "mqtt_url": cloud.mqtt_url,
            "http_url": format!("http://{}", cloud.http_addr),
            "public_key": cloud.public_key.to_base64(),
            "data_dir": cfg.data_dir,
        })
    );
    wait_for_signal().await;
    tracing::info!("Shutting down");
    shutdown.cancel();
    cloud.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn orders(cfg: CloudConfig, clock: Arc<dyn Clock>, cmd: OrdersCmd) -> anyhow::Result<()> {
    use crate::orders::Action;
    let mut conn = crate::store::open_writer(&cfg.data_dir)?;
    let (tx_id, action, note) = match cmd {
        OrdersCmd::List { member, json } => {
            if let Some(m) = &member {
                MemberId::parse(m)?;
            }
            let rows = crate::orders::list(&conn, member.as_deref(), None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<28} {:<12} {:<16} {:<12} {:>5} {:>10} {:<4} {:<22} reason",
                    "tx_id", "member", "device", "sku", "qty", "amount", "cur", "status"
                );
                for o in rows {
                    println!(
                        "{:<28} {:<12} {:<16} {:<12} {:>5} {:>10} {:<4} {:<22} {}",
                        o.tx_id,
                        o.member_id,
                        o.device_id,
                        o.sku,
                        o.qty,
                        o.amount,
                        o.currency,
                        o.status,
                        o.reason.unwrap_or_default()
                    );
                }
            }
            return Ok(());
        }
        OrdersCmd::Cancel { tx_id, reason } => (tx_id, Action::Cancel, Some(reason)),
        OrdersCmd::Confirm { tx_id } => (tx_id, Action::Confirm, None),
        OrdersCmd::Deliver { tx_id } => (tx_id, Action::Deliver, None),
    };
    let key = crate::keys::load_or_create(&cfg.data_dir.join("cloud.key"))?;
    let rules = crate::orders::OrderRules::for_cloud(&cfg)?;
    let order = crate::orders::change(
        &mut conn,
        &key,
        &rules,
        &tx_id,
        action,
        note.as_deref(),
        clock.now(),
    )?;
    println!("{}", serde_json::to_string(&order)?);
    Ok(())
}

fn ledger(cfg: CloudConfig, cmd: LedgerCmd) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // Checkpoints are checked against the existing key: never create one here.
    let key_path = cfg.data_dir.join("cloud.key");
    if !key_path.exists() {
        bail!(
            "no cloud key at {}: the ledger's checkpoints cannot be checked without it",
            key_path.display()
        );
    }
    let key = crate::keys::load_or_create(&key_path)?;
    // Run migrations if needed, then read on a read-only connection.
    drop(crate::store::open_writer(&cfg.data_dir)?);
    let conn = crate::store::open_reader(&cfg.data_dir)?;
    match cmd {
        LedgerCmd::Verify { json } => {
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} entries ({per_sec}, {eta})",
                    )
                    .expect("valid template"),
                );
                b
            });
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let report = crate::ledger::verify(&conn, &key.public(), threads, |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            })?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else if report.ok {
                println!(
                    "ok: {} entries, root {}",
                    report.entries.unwrap_or(0),
                    report.root.as_deref().unwrap_or("")
                );
            }
            if !report.ok {
                bail!(
                    "the ledger does not verify: entry {}: {}",
                    report.first_bad_index.unwrap_or(0),
                    report.problem.unwrap_or_default()
                );
            }
            Ok(())
        }
        LedgerCmd::Export { out } => {
            let s = crate::ledger::export(&conn, &key.public(), &out)?;
            println!("{}", serde_json::to_string(&s)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn quarantine_list_takes_every_reason_code_and_refuses_others() {
        for r in crate::ingest::Reason::ALL {
            let args = ["rollcall-cloud", "quarantine", "list", "--reason", r.code()];
            assert!(Cli::try_parse_from(args).is_ok(), "{}", r.code());
        }
        let err =
            Cli::try_parse_from(["rollcall-cloud", "quarantine", "list", "--reason", "bogus"])
                .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
