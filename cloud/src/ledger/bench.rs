//! The ledger benchmark: transactions verified, decided and appended per second through
//! the ingest's own code path, and `ledger verify` over a large ledger.
//!
//! Method:
//! 1. **Append.** `devices` registered devices of opted-in members, each with its own key,
//!    sign `transactions` transactions (before the clock starts: devices sign on their own
//!    CPUs). The clock then runs over exactly what the ingest writer does: [`check`] on
//!    `threads` threads (envelope, registered key, signature, payload), then
//!    [`commit`](crate::ingest::commit) in batches of `batch` (decision, `orders` row,
//!    ledger entry, one signed checkpoint per batch, `synchronous = FULL`).
//! 2. **Verify.** The ledger is grown to `verify_entries` decision entries (each with its
//!    own signed device envelope; generated directly, not timed), then [`verify`] runs over
//!    all of them on `threads` threads and the time is taken.
//!
//! [`check`]: crate::ingest::check
//! [`verify`]: super::verify

use super::{consistency, entry_with_proof, verify, Appender, EntryKind, NewEntry};
use crate::ingest::{self, Checked, Inbound, TxContext};
use crate::orders::OrderRules;
use chrono::{DateTime, Utc};
use rollcall_shared::dsse::{KeyPair, TRANSACTION_PAYLOAD_TYPE};
use rollcall_shared::payload::{ReorderReason, Transaction};
use rollcall_shared::topics::Topics;
use rollcall_shared::{Currency, DeviceId, Sku, SlotId, TxId};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// SQLite said no.
    #[error("bench store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A commit failed.
    #[error(transparent)]
    Commit(#[from] crate::ingest::CommitError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] super::LedgerError),
    /// The run did not do what it should (a transaction was not accepted, verify failed).
    #[error("benchmark sanity check failed: {0}")]
    Sanity(String),
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Transactions for the append figure.
    pub transactions: u64,
    /// Devices signing them.
    pub devices: u32,
    /// Transactions per commit (the ingest's `batch_max_reports`).
    pub batch: usize,
    /// Entries for the verify figure.
    pub verify_entries: u64,
    /// Threads for signature checks.
    pub threads: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            transactions: 50_000,
            devices: 500,
            batch: 512,
            verify_entries: 1_000_000,
            threads: 2,
        }
    }
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The options used.
    pub options: BenchOptions,
    /// Transactions verified, decided and appended.
    pub transactions: u64,
    /// Seconds for them.
    pub append_seconds: f64,
    /// Transactions per second.
    pub tx_per_s: f64,
    /// Entries `verify` checked.
    pub verify_entries: u64,
    /// Seconds `verify` took.
    pub verify_seconds: f64,
    /// Entries per second.
    pub verify_entries_per_s: f64,
    /// Median microseconds for one entry with its inclusion proof plus one consistency
    /// proof to the full size, in the grown ledger ([`PROOFS`] samples).
    pub proof_us_p50: f64,
    /// The slowest of those samples.
    pub proof_us_max: f64,
    /// Size of the store afterwards, bytes.
    pub store_bytes: u64,
}

/// Proof samples taken after `verify`.
pub const PROOFS: u64 = 200;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
        .expect("valid")
        .with_timezone(&Utc)
}

fn transaction(device: &DeviceId, n: u64) -> Transaction {
    Transaction {
        v: 1,
        tx_id: TxId::parse(&format!("{device}-{n}")).expect("valid id"),
        device_id: device.clone(),
        counter: n,
        slot: SlotId::parse(&format!("slot-{n}")).expect("valid id"),
        sku: Sku::parse("POD-50").expect("valid id"),
        qty: 1,
        unit_price: 1250,
        currency: Currency::parse("EUR").expect("valid"),
        amount: 1250,
        reason: ReorderReason {
            level: 4,
            threshold: 5,
        },
        created_at: t0(),
        refilled: None,
    }
}

/// Signs `per_device` transactions for every device on `threads` threads.
fn sign_all(
    devices: &[(DeviceId, KeyPair)],
    from: u64,
    per_device: u64,
    threads: usize,
) -> Vec<(DeviceId, Vec<u8>)> {
    let per = devices.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for n in from..from + per_device {
                        for (d, k) in part {
                            let t = transaction(d, n);
                            out.push((
                                d.clone(),
                                k.sign(TRANSACTION_PAYLOAD_TYPE, &t.encode()).to_json(),
                            ));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing threads do not panic"))
            .collect()
    })
}

/// Runs the benchmark in `dir` (which should be empty).
pub fn run(dir: &Path, opts: &BenchOptions) -> Result<BenchResult, BenchError> {
    let mut conn = crate::store::open_writer(dir)?;
    let cloud = KeyPair::generate();
    let topics = Topics::default();
    let mut devices = Vec::new();
    {
        let tx = conn.transaction()?;
        for i in 0..opts.devices {
            let member = format!("m{i}");
            tx.execute(
                "INSERT INTO members (id, name, created_ms) VALUES (?1, ?1, 0)",
                [&member],
            )?;
            tx.execute(
                "INSERT INTO member_policies (member_id, auto_reorder, updated_ms) VALUES (?1, 1, 0)",
                [&member],
            )?;
            let d = DeviceId::parse(&format!("dev-{i}")).expect("valid id");
            let k = KeyPair::generate();
            tx.execute(
                "INSERT INTO devices (id, member_id, public_key, registered_ms) VALUES (?1, ?2, ?3, 0)",
                rusqlite::params![d.as_str(), member, k.public().as_bytes().as_slice()],
            )?;
            devices.push((d, k));
        }
        tx.commit()?;
    }
    let infos: HashMap<DeviceId, crate::registry::DeviceInfo> = devices
        .iter()
        .enumerate()
        .map(|(i, (d, k))| {
            (
                d.clone(),
                crate::registry::DeviceInfo {
                    member_id: rollcall_shared::MemberId::parse(&format!("m{i}")).expect("valid"),
                    key: k.public(),
                },
            )
        })
        .collect();
    let rules = OrderRules {
        catalogue: HashMap::from([(
            "POD-50".to_owned(),
            crate::orders::CatalogueItem {
                unit_price: 1250,
                currency: "EUR".into(),
            },
        )]),
        price_tolerance_bp: 0,
        cancel_window: chrono::Duration::hours(24),
        fulfilment_webhook: None,
        outreach: None,
    };
    let per_device = opts.transactions.div_ceil(u64::from(opts.devices.max(1)));
    let signed = sign_all(&devices, 1, per_device, opts.threads);
    let inbound: Vec<Inbound> = signed
        .into_iter()
        .map(|(d, payload)| Inbound {
            topic: topics.tx(&d),
            payload,
            received_at: t0(),
        })
        .collect();
    let total = inbound.len() as u64;

    // 1. Append: check + commit, as the ingest writer does.
    let started = Instant::now();
    let lookup = |d: &DeviceId| infos.get(d).cloned();
    let mut accepted = 0u64;
    let mut it = inbound.into_iter();
    loop {
        let batch: Vec<Inbound> = it.by_ref().take(opts.batch.max(1)).collect();
        if batch.is_empty() {
            break;
        }
        let per = batch.len().div_ceil(opts.threads.max(1)).max(1);
        let checked: Vec<Checked> = std::thread::scope(|s| {
            let mut parts = Vec::new();
            let mut rest = batch;
            while !rest.is_empty() {
                let tail = rest.split_off(per.min(rest.len()));
                parts.push(std::mem::replace(&mut rest, tail));
            }
            let handles: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    let (topics, lookup) = (&topics, &lookup);
                    s.spawn(move || {
                        part.into_iter()
                            .map(|m| ingest::check(topics, m, lookup))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("check threads do not panic"))
                .collect()
        });
        let ctx = TxContext {
            rules: &rules,
            key: &cloud,
        };
        let out = ingest::commit(&mut conn, &checked, 4096, Some(&ctx))?;
        accepted += out
            .tx_decided
            .iter()
            .filter(|s| **s == rollcall_shared::payload::TxStatus::Accepted)
            .count() as u64;
    }
    let append_seconds = started.elapsed().as_secs_f64();
    if accepted != total {
        return Err(BenchError::Sanity(format!(
            "{accepted} of {total} transactions accepted"
        )));
    }

    // 2. Grow the ledger to `verify_entries` (not timed), then verify it.
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut have = total;
    let mut next = per_device + 1;
    while have < opts.verify_entries {
        let want = (opts.verify_entries - have).min(u64::from(opts.devices) * 20);
        let rounds = want.div_ceil(u64::from(opts.devices.max(1)));
        let signed = sign_all(&devices, next, rounds, opts.threads);
        next += rounds;
        let tx = conn.transaction()?;
        let mut a = Appender::begin(&tx)?;
        for (i, (d, env)) in signed.iter().enumerate() {
            if have + i as u64 >= opts.verify_entries {
                break;
            }
            let member = &infos[d].member_id;
            let tx_id = serde_json::from_slice::<Transaction>(
                &rollcall_shared::dsse::Envelope::from_json(env)
                    .and_then(|e| e.payload_unverified())
                    .map_err(|e| BenchError::Sanity(e.to_string()))?,
            )
            .map_err(|e| BenchError::Sanity(e.to_string()))?
            .tx_id;
            a.push(
                &tx,
                &NewEntry {
                    kind: EntryKind::Decision,
                    tx_id: tx_id.as_str(),
                    device_id: d.as_str(),
                    member_id: member.as_str(),
                    status: "accepted",
                    reason: None,
                    at: t0(),
                    envelope: Some(env),
                },
            )?;
        }
        have = a.next_index();
        a.finish(&tx, &cloud, t0())?;
        tx.commit()?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let reader = crate::store::open_reader(dir)?;
    let started = Instant::now();
    let report = verify(&reader, &cloud.public(), opts.threads, |_, _| {})?;
    let verify_seconds = started.elapsed().as_secs_f64();
    if !report.ok {
        return Err(BenchError::Sanity(format!("verify failed: {report:?}")));
    }
    let entries = report.entries.unwrap_or(0);
    // Proofs as the API serves them, at spread-out indices of the grown ledger.
    let mut proof_us: Vec<f64> = (0..PROOFS)
        .map(|i| -> Result<f64, BenchError> {
            let index = (i * 7_919 + 13) % entries.max(1);
            let started = Instant::now();
            entry_with_proof(&reader, index)?
                .ok_or_else(|| BenchError::Sanity(format!("no entry {index}")))?;
            consistency(&reader, index + 1, entries)?;
            Ok(started.elapsed().as_secs_f64() * 1e6)
        })
        .collect::<Result<_, _>>()?;
    proof_us.sort_by(f64::total_cmp);
    let store_bytes = std::fs::metadata(dir.join("rollcall.db")).map_or(0, |m| m.len())
        + std::fs::metadata(dir.join("rollcall.db-wal")).map_or(0, |m| m.len());
    Ok(BenchResult {
        options: opts.clone(),
        transactions: total,
        append_seconds,
        tx_per_s: total as f64 / append_seconds,
        verify_entries: entries,
        verify_seconds,
        verify_entries_per_s: entries as f64 / verify_seconds,
        proof_us_p50: proof_us.get(proof_us.len() / 2).copied().unwrap_or(0.0),
        proof_us_max: proof_us.last().copied().unwrap_or(0.0),
        store_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_appends_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            dir.path(),
            &BenchOptions {
                transactions: 40,
                devices: 4,
                batch: 16,
                verify_entries: 100,
                threads: 2,
            },
        )
        .unwrap();
        assert_eq!((r.transactions, r.verify_entries), (40, 100));
    }

    /// The figures for `docs/benchmarks.md`:
    /// `cargo test --release -p rollcall-cloud --lib ledger::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn ledger_benchmark_prints_its_figures() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(dir.path(), &BenchOptions::default()).unwrap();
        println!("{}", serde_json::to_string_pretty(&r).unwrap());
    }
}
