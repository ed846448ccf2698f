//! Ingest: turns MQTT messages from devices into stored events, exactly once.
//!
//! Each message goes through two steps:
//! 1. [`check`] (pure, parallel): size limit, topic, DSSE envelope, signature by the key
//!    registered for the device named in the topic, payload decoding and limits, and the
//!    payload's device id matching the topic's. The topic is only a hint: trust comes from
//!    the signature.
//! 2. [`commit`] (the one writer, one SQLite transaction per batch): dedup against
//!    `reports (device_id, report_seq)` and `events (device_id, seq)`, the replay window,
//!    status ordering, quarantine. The caller sends the acks this returns only after
//!    the transaction has committed.
//!
//! Reason codes (the `reason` of quarantine rows and the label of
//! `rollcall_ingest_rejected_total`): `too_large`, `malformed`, `bad_signature`,
//! `unknown_device`, `unsupported_version`, `replayed`, `device_mismatch`, and for
//! transactions `conflict` (a transaction id seen before with other content).
//! Transactions on `.../tx` that pass [`check`] are decided by [`crate::orders::record`]
//! inside the same batch transaction, together with their ledger entries and checkpoint.
//! Usage reports from unknown devices are *held* and ingested by [`release_held`]
//! when the device is registered.
//!
//! The quarantine is bounded, because anyone who can publish can fill it: at most
//! [`MAX_HELD_PER_DEVICE`] held rows per device and [`MAX_HELD`] overall, at most
//! [`MAX_REJECTED`] rejected rows, and of a message whose signature did not verify only the
//! first [`MAX_UNVERIFIED_PAYLOAD_KEPT`] bytes. What is not kept is still rejected (and
//! acked, counted in `rollcall_ingest_rejected_total`), and is counted in the row
//! `dropped:{reason}` and in `rollcall_quarantine_dropped_total{reason}`. Operators make
//! room with `rollcall-cloud quarantine purge` ([`purge_quarantine`]).

use crate::ledger::{Appender, LedgerError};
use crate::orders::{OrderRules, OrdersError, TxResult, VerifiedTx};
use crate::registry::DeviceInfo;
use chrono::{DateTime, Utc};
use rollcall_shared::dsse::{
    Envelope, EnvelopeError, KeyPair, STATUS_PAYLOAD_TYPE, TRANSACTION_PAYLOAD_TYPE,
    USAGE_PAYLOAD_TYPE,
};
use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use rollcall_shared::payload::{
    Ack, AckStatus, DeviceStatus, PayloadError, Presence, Receipt, ReorderPolicy, Transaction,
    UsageReport,
};
use rollcall_shared::topics::{Channel, Topics};
use rollcall_shared::{DeviceId, MemberId};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// A message as it arrived from the broker.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The MQTT topic.
    pub topic: String,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// When the cloud received it (injected clock).
    pub received_at: DateTime<Utc>,
}

/// Why a message was rejected: the quarantine reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Larger than the protocol allows.
    TooLarge,
    /// Not a valid envelope or payload, or an unknown topic.
    Malformed,
    /// No signature verifies under the device's registered key.
    BadSignature,
    /// The device is not registered (usage reports are held until it is).
    UnknownDevice,
    /// A protocol version this build does not speak.
    UnsupportedVersion,
    /// Reuses a stored sequence with different content, or is behind the replay window.
    Replayed,
    /// Validly signed by one device but claims to be from another.
    DeviceMismatch,
    /// A transaction id seen before with different content.
    Conflict,
}

/// Why a batch could not be committed (nothing was committed; retrying is safe).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// SQLite said no.
    #[error("ingest store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Deciding or recording a transaction failed.
    #[error(transparent)]
    Orders(#[from] OrdersError),
}

impl From<LedgerError> for CommitError {
    fn from(e: LedgerError) -> Self {
        CommitError::Orders(OrdersError::Ledger(e))
    }
}

/// What committing transactions needs besides the store: the rules and the cloud's key
/// (for checkpoints).
pub struct TxContext<'a> {
    /// Catalogue, tolerance, cancellation window.
    pub rules: &'a OrderRules,
    /// Signs ledger checkpoints.
    pub key: &'a KeyPair,
}

impl Reason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [Reason; 8] = [
        Reason::TooLarge,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::UnknownDevice,
        Reason::UnsupportedVersion,
        Reason::Replayed,
        Reason::DeviceMismatch,
        Reason::Conflict,
    ];
    /// The reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownDevice => "unknown_device",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::Replayed => "replayed",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::Conflict => "conflict",
        }
    }
    /// The reason for a payload that failed to decode or validate.
    pub(crate) fn from_payload(e: &PayloadError) -> Reason {
        match e {
            PayloadError::UnsupportedVersion(_) => Reason::UnsupportedVersion,
            PayloadError::Malformed(_) => Reason::Malformed,
            PayloadError::TooLarge(_) => Reason::TooLarge,
        }
    }
}

/// A message that will go to quarantine.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// Details for staff.
    pub detail: String,
    /// The device named by the topic, when there was one.
    pub device: Option<DeviceId>,
    /// The message.
    pub inbound: Inbound,
    /// Held for later ingest (unknown device) rather than rejected for good.
    pub held: bool,
    /// The quarantine dedup key.
    pub dedup_key: String,
    /// When the message was validly signed, the report to ack as rejected so the device
    /// stops re-sending it.
    pub ack_report: Option<u64>,
    /// Its signature verified under the device's registered key. The quarantine keeps the
    /// payload of an unverified message (anyone can publish one) only up to
    /// [`MAX_UNVERIFIED_PAYLOAD_KEPT`] bytes, unless it is held.
    pub verified: bool,
}

/// A message after [`check`].
#[derive(Debug, Clone)]
pub enum Checked {
    /// A verified usage report.
    Usage {
        /// The device (verified).
        device: DeviceId,
        /// Its member when checked. The commit stores the events under the device's
        /// member as the store has it then (an erasure since the check moved the device to
        /// the member's pseudonym); this one only if the device's row is gone.
        member: MemberId,
        /// The report.
        report: UsageReport,
        /// Per-event content fingerprints.
        fingerprints: Vec<i64>,
        /// Digest of the report's events, to recognise a re-send.
        digest: i64,
        /// When it arrived.
        received_at: DateTime<Utc>,
    },
    /// A verified replenishment transaction.
    Transaction(Box<VerifiedTx>),
    /// A verified status message.
    Status {
        /// The device.
        device: DeviceId,
        /// The status.
        status: DeviceStatus,
        /// When it arrived (dates a Last Will: see [`presence_ms`]).
        received_at: DateTime<Utc>,
    },
    /// Rejected or held.
    Rejected(Box<Rejection>),
}

/// The quarantine dedup key of a message refused for its content: its SHA-256, in hex.
pub(crate) fn sha_key(payload: &[u8]) -> String {
    hex::encode(Sha256::digest(payload))
}

/// Best-effort `report_seq` from an unverified or invalid payload (for dedup and acks).
fn loose_report_seq(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("report_seq")?
        .as_u64()
}

/// Verifies and decodes one message. `lookup` finds a device's registration.
pub fn check(
    topics: &Topics,
    msg: Inbound,
    lookup: &dyn Fn(&DeviceId) -> Option<DeviceInfo>,
) -> Checked {
    match prepare(topics, msg, lookup) {
        Err(rejected) => Checked::Rejected(rejected),
        Ok(p) => {
            let verified = p.env.verify(p.expected_type, &p.info.key);
            finish(p, verified)
        }
    }
}

/// Verifies and decodes many messages, in order, as [`check`] does each. The signatures
/// of usage reports and status messages are checked as Ed25519 batches
/// ([`dsse::verify_many`]); transactions one by one with [`Envelope::verify`], because
/// the ledger keeps their envelopes and its audit re-verifies them that way.
///
/// [`dsse::verify_many`]: rollcall_shared::dsse::verify_many
pub fn check_many(
    topics: &Topics,
    msgs: Vec<Inbound>,
    lookup: &dyn Fn(&DeviceId) -> Option<DeviceInfo>,
) -> Vec<Checked> {
    let prepared: Vec<Result<Prepared, Box<Rejection>>> = msgs
        .into_iter()
        .map(|m| prepare(topics, m, lookup))
        .collect();
    let verified = {
        let items: Vec<(&Envelope, &'static str, &rollcall_shared::dsse::PublicKey)> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .filter(|p| p.channel != Channel::Tx)
            .map(|p| (&p.env, p.expected_type, &p.info.key))
            .collect();
        rollcall_shared::dsse::verify_many(&items)
    };
    let mut verified = verified.into_iter();
    prepared
        .into_iter()
        .map(|p| match p {
            Err(rejected) => Checked::Rejected(rejected),
            Ok(p) if p.channel == Channel::Tx => {
                let v = p.env.verify(p.expected_type, &p.info.key);
                finish(p, v)
            }
            Ok(p) => {
                let v = verified.next().expect("one result per batched message");
                finish(p, v)
            }
        })
        .collect()
}

/// A message whose size, topic and envelope are fine and whose device is registered:
/// what is left is its signature and payload.
struct Prepared {
    msg: Inbound,
    device: DeviceId,
    channel: Channel,
    expected_type: &'static str,
    env: Envelope,
    info: DeviceInfo,
}

fn rejection(
    reason: Reason,
    detail: String,
    device: Option<DeviceId>,
    inbound: Inbound,
    held: bool,
    dedup_key: String,
    ack_report: Option<u64>,
) -> Box<Rejection> {
    Box::new(Rejection {
        reason,
        detail,
        device,
        inbound,
        held,
        dedup_key,
        ack_report,
        verified: false,
    })
}

/// Everything [`check`] does before the signature.
fn prepare(
    topics: &Topics,
    msg: Inbound,
    lookup: &dyn Fn(&DeviceId) -> Option<DeviceInfo>,
) -> Result<Prepared, Box<Rejection>> {
    if msg.payload.len() > MAX_ENVELOPE_BYTES {
        let key = sha_key(&msg.payload);
        let detail = format!(
            "{} bytes; the limit is {MAX_ENVELOPE_BYTES}",
            msg.payload.len()
        );
        let dev = topics.parse(&msg.topic).map(|(d, _)| d);
        return Err(rejection(
            Reason::TooLarge,
            detail,
            dev,
            msg,
            false,
            key,
            None,
        ));
    }
    let Some((device, channel)) = topics.parse(&msg.topic) else {
        let key = sha_key(&msg.payload);
        return Err(rejection(
            Reason::Malformed,
            format!("unknown topic {:?}", msg.topic),
            None,
            msg,
            false,
            key,
            None,
        ));
    };
    let expected_type = match channel {
        Channel::Usage => USAGE_PAYLOAD_TYPE,
        Channel::Status => STATUS_PAYLOAD_TYPE,
        Channel::Tx => TRANSACTION_PAYLOAD_TYPE,
        Channel::Down | Channel::Receipt => {
            let key = sha_key(&msg.payload);
            return Err(rejection(
                Reason::Malformed,
                format!("ingest does not take {:?} messages", msg.topic),
                Some(device),
                msg,
                false,
                key,
                None,
            ));
        }
    };
    let env = match Envelope::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            let key = sha_key(&msg.payload);
            return Err(rejection(
                Reason::Malformed,
                e.to_string(),
                Some(device),
                msg,
                false,
                key,
                None,
            ));
        }
    };
    let Some(info) = lookup(&device) else {
        return Err(if channel == Channel::Usage {
            let seq = env
                .payload_unverified()
                .ok()
                .and_then(|b| loose_report_seq(&b));
            let key = match seq {
                Some(s) => format!("held:{device}:{s}"),
                None => format!("held:{device}:{}", sha_key(&msg.payload)),
            };
            rejection(
                Reason::UnknownDevice,
                format!("device {device} is not registered; held until it is"),
                Some(device),
                msg,
                true,
                key,
                None,
            )
        } else if channel == Channel::Tx {
            let key = sha_key(&msg.payload);
            rejection(
                Reason::UnknownDevice,
                format!("transaction from unregistered device {device}"),
                Some(device),
                msg,
                false,
                key,
                None,
            )
        } else {
            let key = format!("status:{device}");
            rejection(
                Reason::UnknownDevice,
                format!("status from unregistered device {device}"),
                Some(device),
                msg,
                false,
                key,
                None,
            )
        });
    };
    Ok(Prepared {
        msg,
        device,
        channel,
        expected_type,
        env,
        info,
    })
}

/// Everything [`check`] does from the signature on, given the signature's verdict.
fn finish(p: Prepared, verified: Result<Vec<u8>, EnvelopeError>) -> Checked {
    let Prepared {
        msg,
        device,
        channel,
        env: _,
        info,
        expected_type: _,
    } = p;
    let body = match verified {
        Ok(b) => b,
        Err(EnvelopeError::BadSignature) => {
            let key = sha_key(&msg.payload);
            return Checked::Rejected(rejection(
                Reason::BadSignature,
                format!("no signature verifies under {device}'s registered key"),
                Some(device),
                msg,
                false,
                key,
                None,
            ));
        }
        Err(e) => {
            let key = sha_key(&msg.payload);
            return Checked::Rejected(rejection(
                Reason::Malformed,
                e.to_string(),
                Some(device),
                msg,
                false,
                key,
                None,
            ));
        }
    };
    // From here on the message is the device's own: what is refused is kept whole.
    let checked = match channel {
        Channel::Usage => match UsageReport::decode(&body) {
            Ok(report) if report.device_id != device => {
                let key = sha_key(&msg.payload);
                let detail = format!(
                    "signed by {device} but claims to be from {}",
                    report.device_id
                );
                Checked::Rejected(rejection(
                    Reason::DeviceMismatch,
                    detail,
                    Some(device),
                    msg,
                    false,
                    key,
                    None,
                ))
            }
            Ok(report) => {
                let fingerprints: Vec<i64> =
                    report.events.iter().map(|e| e.fingerprint()).collect();
                let mut h = Sha256::new();
                for f in &fingerprints {
                    h.update(f.to_be_bytes());
                }
                let digest = i64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
                Checked::Usage {
                    device,
                    member: info.member_id,
                    report,
                    fingerprints,
                    digest,
                    received_at: msg.received_at,
                }
            }
            Err(e) => {
                let key = sha_key(&msg.payload);
                let ack = loose_report_seq(&body);
                Checked::Rejected(rejection(
                    Reason::from_payload(&e),
                    e.to_string(),
                    Some(device),
                    msg,
                    false,
                    key,
                    ack,
                ))
            }
        },
        Channel::Tx => match Transaction::decode(&body) {
            Ok(tx) if tx.device_id != device => {
                let key = sha_key(&msg.payload);
                let detail = format!("signed by {device} but claims to be from {}", tx.device_id);
                Checked::Rejected(rejection(
                    Reason::DeviceMismatch,
                    detail,
                    Some(device),
                    msg,
                    false,
                    key,
                    None,
                ))
            }
            Ok(tx) => Checked::Transaction(Box::new(VerifiedTx {
                device,
                member: info.member_id,
                tx,
                payload_sha256: hex::encode(Sha256::digest(&body)),
                envelope: msg.payload,
                received_at: msg.received_at,
            })),
            Err(e) => {
                let key = sha_key(&msg.payload);
                Checked::Rejected(rejection(
                    Reason::from_payload(&e),
                    e.to_string(),
                    Some(device),
                    msg,
                    false,
                    key,
                    None,
                ))
            }
        },
        _ => match DeviceStatus::decode(&body) {
            Ok(status) if status.device_id != device => {
                let key = sha_key(&msg.payload);
                let detail = format!(
                    "signed by {device} but claims to be from {}",
                    status.device_id
                );
                Checked::Rejected(rejection(
                    Reason::DeviceMismatch,
                    detail,
                    Some(device),
                    msg,
                    false,
                    key,
                    None,
                ))
            }
            Ok(status) => Checked::Status {
                device,
                status,
                received_at: msg.received_at,
            },
            Err(e) => {
                let key = sha_key(&msg.payload);
                Checked::Rejected(rejection(
                    Reason::from_payload(&e),
                    e.to_string(),
                    Some(device),
                    msg,
                    false,
                    key,
                    None,
                ))
            }
        },
    };
    match checked {
        Checked::Rejected(mut r) => {
            r.verified = true;
            Checked::Rejected(r)
        }
        c => c,
    }
}

/// What one committed batch did; the caller sends `acks` and updates metrics.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Acks to publish, per device.
    pub acks: Vec<(DeviceId, Ack)>,
    /// Reports stored now.
    pub reports_stored: u64,
    /// Reports that had been stored before (re-sends).
    pub reports_duplicate: u64,
    /// Events stored now.
    pub events_stored: u64,
    /// Status messages applied.
    pub statuses: u64,
    /// Rejections, by reason (whether kept in quarantine or not).
    pub rejected: Vec<Reason>,
    /// Rejections not kept in quarantine because it was at its limits, by reason.
    pub quarantine_dropped: Vec<Reason>,
    /// Rejections kept with their payload cut to [`MAX_UNVERIFIED_PAYLOAD_KEPT`] bytes.
    pub quarantine_truncated: u64,
    /// Transaction receipts to publish, per device.
    pub receipts: Vec<(DeviceId, Receipt)>,
    /// Member policies for devices that reported themselves online (see [`PolicyPush`]).
    pub policies: Vec<PolicyPush>,
    /// Transactions decided now, by status.
    pub tx_decided: Vec<rollcall_shared::payload::TxStatus>,
    /// Transactions recognised as re-sends.
    pub tx_duplicate: u64,
}

/// The member's reorder policy for a device that has just reported itself online. There is
/// no acknowledgement for policies, so the publisher sends it at the first online status of
/// every session (each connection of the agent) and whenever it differs from the one last
/// sent in that session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPush {
    /// The device.
    pub device: DeviceId,
    /// The device's connection counter, from its status message.
    pub session: u64,
    /// The policy.
    pub policy: ReorderPolicy,
}

/// Commits a batch of checked messages in one transaction. Transactions need `orders`;
/// without it they are left alone (the device re-sends them).
pub fn commit(
    conn: &mut Connection,
    items: &[Checked],
    replay_window: u64,
    orders: Option<&TxContext<'_>>,
) -> Result<BatchOutcome, CommitError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let commit_seq = crate::store::next_commit_seq(&tx)?;
    let mut out = BatchOutcome::default();
    let mut ledger: Option<(Appender, DateTime<Utc>)> = None;
    for item in items {
        if let (Checked::Transaction(v), Some(ctx)) = (item, orders) {
            if ledger.is_none() {
                ledger = Some((Appender::begin(&tx)?, v.received_at));
            }
            let (appender, at) = ledger.as_mut().expect("just set");
            *at = (*at).max(v.received_at);
            apply_tx(&tx, appender, ctx.rules, v, &mut out)?;
            continue;
        }
        apply(
            &tx,
            item,
            replay_window,
            orders.is_some(),
            commit_seq,
            &mut out,
        )?;
    }
    if let (Some((appender, at)), Some(ctx)) = (ledger, orders) {
        appender.finish(&tx, ctx.key, at)?;
    }
    tx.commit()?;
    Ok(out)
}

fn apply_tx(
    tx: &Connection,
    ledger: &mut Appender,
    rules: &OrderRules,
    v: &VerifiedTx,
    out: &mut BatchOutcome,
) -> Result<(), CommitError> {
    // The device's member as it is now (see `Checked::Usage::member`).
    let member: Option<String> = tx
        .prepare_cached("SELECT member_id FROM devices WHERE id = ?1")?
        .query_row([v.device.as_str()], |r| r.get(0))
        .optional()?;
    let moved = match member.map(|m| MemberId::parse(&m)) {
        Some(Ok(m)) if m != v.member => Some(VerifiedTx {
            member: m,
            ..v.clone()
        }),
        _ => None,
    };
    let v = moved.as_ref().unwrap_or(v);
    tx.execute_batch("SAVEPOINT tx")?;
    match crate::orders::record(tx, ledger, rules, v) {
        Ok(TxResult::Decided(r)) => {
            out.tx_decided.push(r.status);
            out.receipts.push((v.device.clone(), r));
        }
        Ok(TxResult::Duplicate(r)) => {
            out.tx_duplicate += 1;
            out.receipts.push((v.device.clone(), r));
        }
        Ok(TxResult::Conflict) => {
            let rej = Rejection {
                reason: Reason::Conflict,
                detail: format!(
                    "transaction {} was recorded before with different content",
                    v.tx.tx_id
                ),
                device: Some(v.device.clone()),
                dedup_key: sha_key(&v.envelope),
                inbound: Inbound {
                    topic: format!("(verified transaction {})", v.tx.tx_id),
                    payload: v.envelope.clone(),
                    received_at: v.received_at,
                },
                held: false,
                ack_report: None,
                verified: true,
            };
            quarantine(tx, &rej, out)?;
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO tx; RELEASE tx")?;
            return Err(e.into());
        }
    }
    tx.execute_batch("RELEASE tx")?;
    Ok(())
}

/// Applies one checked message inside the batch's transaction; stored events are stamped
/// with the batch's `commit_seq` ([`crate::store::next_commit_seq`]).
fn apply(
    tx: &Connection,
    item: &Checked,
    replay_window: u64,
    with_orders: bool,
    commit_seq: i64,
    out: &mut BatchOutcome,
) -> Result<(), CommitError> {
    match item {
        Checked::Usage {
            device,
            member,
            report,
            fingerprints,
            digest,
            received_at,
        } => {
            let seq = report.report_seq;
            let received_at = *received_at;
            let stored: Option<i64> = tx
                .prepare_cached(
                    "SELECT digest FROM reports WHERE device_id = ?1 AND report_seq = ?2",
                )?
                .query_row(params![device.as_str(), seq as i64], |r| r.get(0))
                .optional()?;
            let replayed = |detail: String, out: &mut BatchOutcome| -> Result<(), CommitError> {
                let payload = report.encode();
                let rej = Rejection {
                    reason: Reason::Replayed,
                    detail,
                    device: Some(device.clone()),
                    dedup_key: sha_key(&payload),
                    inbound: Inbound {
                        topic: format!("(verified report {seq})"),
                        payload,
                        received_at,
                    },
                    held: false,
                    ack_report: Some(seq),
                    verified: true,
                };
                Ok(quarantine(tx, &rej, out)?)
            };
            match stored {
                Some(d) if d == *digest => {
                    out.reports_duplicate += 1;
                    out.acks.push((
                        device.clone(),
                        Ack {
                            report_seq: seq,
                            status: AckStatus::Duplicate,
                            stored: 0,
                            reason: None,
                        },
                    ));
                    return Ok(());
                }
                Some(_) => {
                    return replayed(
                        format!("report {seq} was stored before with different content"),
                        out,
                    )
                }
                None => {}
            }
            // The device's member as it is now: an erasure since the check moved the device
            // to the member's pseudonym (devices are never deleted).
            let (max, member): (i64, String) = tx
                .prepare_cached("SELECT max_report_seq, member_id FROM devices WHERE id = ?1")?
                .query_row([device.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or_else(|| (0, member.as_str().to_owned()));
            if (seq as i64).saturating_add(replay_window as i64) <= max {
                return replayed(format!("report {seq} is behind the replay window (newest {max}, window {replay_window})"), out);
            }
            // No savepoint (a statement journal per report cost a tenth of the commit):
            // when an event turns out to conflict, the events this report inserted are
            // deleted again, which is all a rollback to a savepoint would undo here.
            let mut inserted: Vec<i64> = Vec::with_capacity(report.events.len());
            let received_ms = received_at.timestamp_millis();
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, attrs, clock_suspect, fingerprint, commit_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT(device_id, seq) DO NOTHING",
            )?;
            for (e, fp) in report.events.iter().zip(fingerprints.iter()) {
                let attrs = if e.attrs.is_empty() {
                    None
                } else {
                    Some(serde_json::to_string(&e.attrs).expect("attrs serialise"))
                };
                let n = insert.execute(params![
                    device.as_str(),
                    e.seq.get() as i64,
                    member.as_str(),
                    e.kind.as_str(),
                    e.qty,
                    e.occurred_at.timestamp_millis(),
                    received_ms,
                    attrs,
                    e.clock_suspect,
                    fp,
                    commit_seq,
                ])?;
                if n == 1 {
                    inserted.push(e.seq.get() as i64);
                    continue;
                }
                let old: i64 = tx
                    .prepare_cached(
                        "SELECT fingerprint FROM events WHERE device_id = ?1 AND seq = ?2",
                    )?
                    .query_row(params![device.as_str(), e.seq.get() as i64], |r| r.get(0))?;
                if old != *fp {
                    let mut undo =
                        tx.prepare_cached("DELETE FROM events WHERE device_id = ?1 AND seq = ?2")?;
                    for seq in &inserted {
                        undo.execute(params![device.as_str(), seq])?;
                    }
                    return replayed(
                        format!(
                            "event seq {} was stored before with different content",
                            e.seq
                        ),
                        out,
                    );
                }
            }
            let new_events = inserted.len() as u32;
            tx.prepare_cached("INSERT INTO reports (device_id, report_seq, digest, received_ms, events) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![device.as_str(), seq as i64, *digest, received_ms, report.events.len() as i64])?;
            tx.prepare_cached("UPDATE devices SET max_report_seq = MAX(max_report_seq, ?2), last_seen_ms = ?3 WHERE id = ?1")?
                .execute(params![device.as_str(), seq as i64, received_ms])?;
            out.reports_stored += 1;
            out.events_stored += new_events as u64;
            out.acks.push((
                device.clone(),
                Ack {
                    report_seq: seq,
                    status: AckStatus::Stored,
                    stored: new_events,
                    reason: None,
                },
            ));
        }
        Checked::Status {
            device,
            status,
            received_at,
        } => {
            let presence = serde_json::to_value(status.state).expect("serialises");
            let (presence_at, floor_at_last_seen) = presence_ms(status, *received_at);
            let health = status
                .health
                .as_ref()
                .map(|h| serde_json::to_string(h).expect("serialises"));
            // Keep the newest: (session, n) orders status messages; a Last Will has n = u64::MAX.
            let advanced = tx.prepare_cached(
                "UPDATE devices SET presence = ?2, status_session = ?4, status_n = ?5,
                     presence_ms = CASE WHEN ?7 THEN MAX(?3, COALESCE(last_seen_ms, ?3)) ELSE ?3 END,
                     health = COALESCE(?6, health)
                 WHERE id = ?1 AND (status_session IS NULL OR status_session < ?4 OR (status_session = ?4 AND status_n < ?5))",
            )?
            .execute(params![
                device.as_str(),
                presence.as_str(),
                presence_at,
                status.session as i64,
                // SQLite integers are signed: store u64::MAX as i64::MAX, keeping the order.
                status.n.min(i64::MAX as u64) as i64,
                health,
                floor_at_last_seen,
            ])? == 1;
            out.statuses += 1;
            // Only a device that is online now can hear receipts and its policy: the agent
            // connects with a clean session, so whatever is published while it is away is
            // lost. A Last Will, or a status older than the stored one (a replay, a retained
            // message delivered again on re-subscribing), sends nothing and marks nothing.
            if with_orders && advanced && status.state == Presence::Online {
                let reported = status.health.as_ref().map_or(&[][..], |h| &h.orders[..]);
                let (policy, receipts) = crate::orders::on_status(tx, device, reported)?;
                if let Some(policy) = policy {
                    out.policies.push(PolicyPush {
                        device: device.clone(),
                        session: status.session,
                        policy,
                    });
                }
                out.receipts
                    .extend(receipts.into_iter().map(|r| (device.clone(), r)));
            }
        }
        // Without the orders context transactions are left alone; the device re-sends.
        Checked::Transaction(_) => {}
        Checked::Rejected(rej) => quarantine(tx, rej, out)?,
    }
    Ok(())
}

/// The presence time a status gives its device (Unix ms), and whether it is to be raised
/// to the device's `last_seen_ms`. A status is dated by its own `at`, except the last word
/// of a session (offline, `n = u64::MAX`): the agent signs its Last Will when the session
/// begins, so its `at` is the connect time, possibly weeks before the drop. The broker
/// publishes it when the connection is lost, so the time the cloud received it is when the
/// device went offline, and never before the cloud last heard from the device.
fn presence_ms(status: &DeviceStatus, received_at: DateTime<Utc>) -> (i64, bool) {
    if status.state == Presence::Offline && status.n == u64::MAX {
        (received_at.timestamp_millis(), true)
    } else {
        (status.at.timestamp_millis(), false)
    }
}

fn quarantine(tx: &Connection, rej: &Rejection, out: &mut BatchOutcome) -> rusqlite::Result<()> {
    match store_rejection(tx, rej)? {
        Kept::Whole => {}
        Kept::Truncated => out.quarantine_truncated += 1,
        Kept::Dropped => out.quarantine_dropped.push(rej.reason),
    }
    out.rejected.push(rej.reason);
    if let (Some(seq), Some(dev)) = (rej.ack_report, rej.device.clone()) {
        out.acks.push((
            dev,
            Ack {
                report_seq: seq,
                status: AckStatus::Rejected,
                stored: 0,
                reason: Some(rej.reason.code().into()),
            },
        ));
    }
    Ok(())
}

/// Most `held` quarantine rows per unregistered device. An agent re-sends the reports it
/// has in flight (`uplink.max_inflight_reports`, 16 by default) until they are acked, so
/// a real device needs far fewer; a report not held is not lost either, since its agent
/// sends it again after the device is registered.
pub const MAX_HELD_PER_DEVICE: i64 = 64;

/// Most `held` quarantine rows overall: anyone can publish for made-up device ids. Held
/// payloads are kept whole (they are ingested on registration), so this bounds them to
/// about 1 GiB ([`MAX_ENVELOPE_BYTES`] each).
pub const MAX_HELD: i64 = 2_000;

/// Most `rejected` quarantine rows overall.
pub const MAX_REJECTED: i64 = 100_000;

/// Bytes of payload the quarantine keeps of a message whose signature did not verify
/// (too large, malformed, unknown device, bad signature): enough to see what it was.
pub const MAX_UNVERIFIED_PAYLOAD_KEPT: usize = 4096;

/// What [`store_rejection`] kept of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// A row with the whole payload, or one more sighting of a row kept before.
    Whole,
    /// A row with the payload cut to [`MAX_UNVERIFIED_PAYLOAD_KEPT`] bytes.
    Truncated,
    /// No row of its own: the quarantine was at one of its limits ([`MAX_HELD_PER_DEVICE`],
    /// [`MAX_HELD`], [`MAX_REJECTED`]). It is counted in the row `dropped:{reason}`.
    Dropped,
}

/// Writes a rejected or held message to the quarantine, inside the caller's write
/// transaction: a new row, or for a message seen before (same dedup key) one more
/// `seen_count`. A new row is only written within the quarantine's limits; beyond them
/// the message is counted in the row `dropped:{reason}` instead. Also used for the
/// agents' message receipts ([`crate::delivery::device`]).
pub(crate) fn store_rejection(tx: &Connection, rej: &Rejection) -> rusqlite::Result<Kept> {
    let now = rej.inbound.received_at.timestamp_millis();
    let state = if rej.held { "held" } else { "rejected" };
    let seen_before = tx
        .prepare_cached("SELECT 1 FROM quarantine WHERE dedup_key = ?1")?
        .query_row([&rej.dedup_key], |_| Ok(()))
        .optional()?
        .is_some();
    if !seen_before && quarantine_full(tx, rej)? {
        tx.prepare_cached(
            "INSERT INTO quarantine (dedup_key, received_ms, last_seen_ms, topic, device_id, reason, detail, payload, state)
             VALUES (?1, ?2, ?2, ?3, NULL, ?4, ?5, x'', 'rejected')
             ON CONFLICT(dedup_key) DO UPDATE SET seen_count = seen_count + 1,
                 last_seen_ms = excluded.last_seen_ms, topic = excluded.topic",
        )?
        .execute(params![
            format!("dropped:{}", rej.reason.code()),
            now,
            rej.inbound.topic,
            rej.reason.code(),
            format!(
                "not kept: the quarantine was at its limits ({MAX_HELD_PER_DEVICE} held per \
                 device, {MAX_HELD} held, {MAX_REJECTED} rejected); seen_count counts them, \
                 topic is the latest"
            ),
        ])?;
        return Ok(Kept::Dropped);
    }
    let whole = &rej.inbound.payload;
    let cut = !rej.held && !rej.verified && whole.len() > MAX_UNVERIFIED_PAYLOAD_KEPT;
    let (payload, detail) = if cut {
        let detail = format!(
            "{} (payload cut to its first {MAX_UNVERIFIED_PAYLOAD_KEPT} of {} bytes)",
            rej.detail,
            whole.len()
        );
        (&whole[..MAX_UNVERIFIED_PAYLOAD_KEPT], detail)
    } else {
        (&whole[..], rej.detail.clone())
    };
    tx.prepare_cached(
        "INSERT INTO quarantine (dedup_key, received_ms, last_seen_ms, topic, device_id, reason, detail, payload, state)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(dedup_key) DO UPDATE SET seen_count = seen_count + 1, last_seen_ms = excluded.last_seen_ms,
             payload = CASE WHEN quarantine.state = 'held' THEN excluded.payload ELSE quarantine.payload END",
    )?
    .execute(params![
        rej.dedup_key,
        now,
        rej.inbound.topic,
        rej.device.as_ref().map(|d| d.as_str()),
        rej.reason.code(),
        detail,
        payload,
        state,
    ])?;
    Ok(if cut && !seen_before {
        Kept::Truncated
    } else {
        Kept::Whole
    })
}

/// Whether a new row for `rej` would go over the quarantine's limits. The counts per
/// state are kept by triggers (migration 9); held rows per device come from the
/// `quarantine_held` index.
fn quarantine_full(tx: &Connection, rej: &Rejection) -> rusqlite::Result<bool> {
    let count = |state: &str| -> rusqlite::Result<i64> {
        tx.prepare_cached("SELECT n FROM quarantine_counts WHERE state = ?1")?
            .query_row([state], |r| r.get(0))
    };
    if !rej.held {
        return Ok(count("rejected")? >= MAX_REJECTED);
    }
    let of_device: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM quarantine WHERE state = 'held' AND device_id = ?1")?
        .query_row([rej.device.as_ref().map(|d| d.as_str())], |r| r.get(0))?;
    Ok(of_device >= MAX_HELD_PER_DEVICE || count("held")? >= MAX_HELD)
}

/// Ingests the reports held for `device` (now registered) and marks them released.
/// Returns how many held messages were processed. Their acks are not sent from here:
/// the agent re-sends, and the re-send is acked as a duplicate.
pub fn release_held(
    conn: &mut Connection,
    topics: &Topics,
    device: &DeviceId,
    replay_window: u64,
) -> Result<(u64, BatchOutcome), CommitError> {
    let held: Vec<(i64, String, Vec<u8>, i64)> = conn
        .prepare("SELECT id, topic, payload, received_ms FROM quarantine WHERE state = 'held' AND device_id = ?1 ORDER BY id")?
        .query_map([device.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    if held.is_empty() {
        return Ok((0, BatchOutcome::default()));
    }
    let info = crate::registry::device_info(conn, device).ok().flatten();
    let lookup = |d: &DeviceId| if d == device { info.clone() } else { None };
    let mut checked = Vec::with_capacity(held.len());
    for (_, topic, payload, received_ms) in &held {
        let received_at = DateTime::from_timestamp_millis(*received_ms).unwrap_or_default();
        let c = check(
            topics,
            Inbound {
                topic: topic.clone(),
                payload: payload.clone(),
                received_at,
            },
            &lookup,
        );
        checked.push(c);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Their events keep the time they were first received, but are stamped as committed now,
    // so what follows new events (outreach milestones) sees them.
    let commit_seq = crate::store::next_commit_seq(&tx)?;
    let mut out = BatchOutcome::default();
    for ((id, ..), c) in held.iter().zip(checked) {
        tx.execute(
            "UPDATE quarantine SET state = 'released' WHERE id = ?1",
            [id],
        )?;
        apply(&tx, &c, replay_window, false, commit_seq, &mut out)?;
    }
    tx.commit()?;
    Ok((held.len() as u64, out))
}

/// One quarantine row, as `quarantine list` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Reason code.
    pub reason: String,
    /// `held`, `rejected` or `released`.
    pub state: String,
    /// The device named by the topic, when known.
    pub device_id: Option<String>,
    /// The topic.
    pub topic: String,
    /// Details.
    pub detail: String,
    /// First received.
    pub received_at: String,
    /// Last received (re-sends of the same message update it).
    pub last_seen_at: String,
    /// How often the same message arrived.
    pub seen_count: i64,
    /// Payload size in bytes.
    pub payload_bytes: i64,
}

/// Lists quarantine rows, newest first, optionally filtered by reason.
pub fn list_quarantine(
    conn: &Connection,
    reason: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<QuarantineRow>> {
    let mut st = conn.prepare(
        "SELECT id, reason, state, device_id, topic, detail, received_ms, last_seen_ms, seen_count, length(payload)
         FROM quarantine WHERE (?1 IS NULL OR reason = ?1) ORDER BY id DESC LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![reason, limit], |r| {
        Ok(QuarantineRow {
            id: r.get(0)?,
            reason: r.get(1)?,
            state: r.get(2)?,
            device_id: r.get(3)?,
            topic: r.get(4)?,
            detail: r.get(5)?,
            received_at: crate::registry::ms_to_rfc3339(r.get(6)?),
            last_seen_at: crate::registry::ms_to_rfc3339(r.get(7)?),
            seen_count: r.get(8)?,
            payload_bytes: r.get(9)?,
        })
    })?;
    rows.collect()
}

/// Deletes the quarantine rows (of `state`, or all) last seen before `before`, and
/// returns how many: the way to make room once the limits are reached. Held reports lose
/// nothing: they are never acked, so their agents keep them and send them again.
pub fn purge_quarantine(
    conn: &Connection,
    state: Option<&str>,
    before: DateTime<Utc>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM quarantine WHERE last_seen_ms < ?2 AND (?1 IS NULL OR state = ?1)",
        params![state, before.timestamp_millis()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::payload::UsageEvent;
    use rollcall_shared::{EventKind, Seq};
    use std::collections::BTreeMap;

    fn report(report_seq: u64, seqs: std::ops::Range<u64>, qty: u32) -> UsageReport {
        let at = DateTime::parse_from_rfc3339("2026-11-30T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        UsageReport {
            v: 1,
            device_id: DeviceId::parse("d1").unwrap(),
            report_seq,
            sent_at: at,
            boot_id: "b".into(),
            events: seqs
                .map(|s| UsageEvent {
                    seq: Seq::new(s).unwrap(),
                    kind: EventKind::parse("brew").unwrap(),
                    qty,
                    occurred_at: at,
                    attrs: BTreeMap::new(),
                    clock_suspect: false,
                })
                .collect(),
        }
    }

    /// A report whose last event reuses a stored sequence with other content is
    /// quarantined whole: the new events before that one are not kept either, so the
    /// device's corrected re-send stores them all.
    #[test]
    fn a_report_that_conflicts_part_way_stores_none_of_its_events() {
        let key = KeyPair::generate();
        let (_dir, mut conn) = crate::store::test_store_with_device(&key);
        let topics = Topics::default();
        let device = DeviceId::parse("d1").unwrap();
        let info = crate::registry::device_info(&conn, &device).unwrap();
        let send = |conn: &mut Connection, r: &UsageReport| {
            let msg = Inbound {
                topic: topics.usage(&device),
                payload: key.sign(USAGE_PAYLOAD_TYPE, &r.encode()).to_json(),
                received_at: Utc::now(),
            };
            let checked = check(&topics, msg, &|_| info.clone());
            commit(conn, &[checked], 4096, None).unwrap()
        };
        let out = send(&mut conn, &report(1, 5..8, 1));
        assert_eq!(out.events_stored, 3);
        // Events 3 and 4 are new, event 5 comes back with another quantity.
        let out = send(&mut conn, &report(2, 3..6, 2));
        assert_eq!(out.rejected, vec![Reason::Replayed]);
        assert_eq!(out.acks[0].1.status, AckStatus::Rejected);
        let count = |conn: &Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
                .unwrap()
        };
        let reports = |conn: &Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!((count(&conn), reports(&conn)), (3, 1));
        // The corrected report stores the two new events and finds the third stored.
        let out = send(&mut conn, &report(3, 3..6, 1));
        assert_eq!((out.reports_stored, out.events_stored), (1, 2));
        assert_eq!((count(&conn), reports(&conn)), (5, 2));
    }

    /// The check stage knows the device's member from its cache; an erasure moves the
    /// device to the member's pseudonym, and what the device reports after that (or was
    /// checked just before) is stored under the pseudonym, never under the old id.
    #[test]
    fn a_report_checked_before_its_members_erasure_is_stored_under_the_pseudonym() {
        let key = KeyPair::generate();
        let (_dir, mut conn) = crate::store::test_store_with_device(&key);
        let topics = Topics::default();
        let device = DeviceId::parse("d1").unwrap();
        let info = crate::registry::device_info(&conn, &device)
            .unwrap()
            .unwrap();
        let member = info.member_id.clone();
        let msg = Inbound {
            topic: topics.usage(&device),
            payload: key
                .sign(USAGE_PAYLOAD_TYPE, &report(1, 1..4, 1).encode())
                .to_json(),
            received_at: Utc::now(),
        };
        // Checked with the cached registration, committed after the erasure.
        let checked = check(&topics, msg, &|_| Some(info.clone()));
        let erased = crate::profile::erase(&mut conn, &member, Utc::now())
            .unwrap()
            .unwrap();
        let out = commit(&mut conn, &[checked], 4096, None).unwrap();
        assert_eq!(out.events_stored, 3);
        let owners: Vec<String> = conn
            .prepare("SELECT DISTINCT member_id FROM events")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(owners, vec![erased.pseudonym]);
    }

    /// The agent signs its Last Will when a session begins; the broker publishes it when
    /// the connection drops. "Offline since" is when the cloud received it, not the
    /// connect time in it, and never before the cloud last heard from the device.
    #[test]
    fn a_last_will_dates_offline_by_its_arrival_not_by_the_session_start() {
        let key = KeyPair::generate();
        let (_dir, mut conn) = crate::store::test_store_with_device(&key);
        let topics = Topics::default();
        let device = DeviceId::parse("d1").unwrap();
        let info = crate::registry::device_info(&conn, &device).unwrap();
        let ms = |t: DateTime<Utc>| t.timestamp_millis();
        let connected =
            DateTime::from_timestamp_millis(ms(Utc::now() - chrono::Duration::days(30))).unwrap();
        let send = |conn: &mut Connection, state, session, n, received_at| {
            let status = DeviceStatus {
                v: rollcall_shared::PROTOCOL_VERSION,
                device_id: device.clone(),
                state,
                at: connected,
                session,
                n,
                health: None,
            };
            let msg = Inbound {
                topic: topics.status(&device),
                payload: key.sign(STATUS_PAYLOAD_TYPE, &status.encode()).to_json(),
                received_at,
            };
            let out = commit(conn, &[check(&topics, msg, &|_| info.clone())], 4096, None);
            assert_eq!(out.unwrap().statuses, 1);
        };
        let presence = |conn: &Connection| -> (String, i64) {
            conn.query_row(
                "SELECT presence, presence_ms FROM devices WHERE id = 'd1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
        };
        // An ordinary status is dated by the device.
        send(&mut conn, Presence::Online, 1, 0, connected);
        assert_eq!(presence(&conn), ("online".into(), ms(connected)));
        // Twenty days later the connection drops: the will, stamped at connect, arrives.
        let dropped = connected + chrono::Duration::days(20);
        send(&mut conn, Presence::Offline, 1, u64::MAX, dropped);
        assert_eq!(presence(&conn), ("offline".into(), ms(dropped)));
        // A will that reaches the ingest before a report the cloud received later (its
        // receive time behind the device's last_seen) is dated no earlier than that report.
        send(&mut conn, Presence::Online, 2, 0, dropped);
        let last_seen = dropped + chrono::Duration::hours(5);
        conn.execute(
            "UPDATE devices SET last_seen_ms = ?1 WHERE id = 'd1'",
            [ms(last_seen)],
        )
        .unwrap();
        send(
            &mut conn,
            Presence::Offline,
            2,
            u64::MAX,
            last_seen - chrono::Duration::hours(1),
        );
        assert_eq!(presence(&conn), ("offline".into(), ms(last_seen)));
    }

    fn quarantine_rows(conn: &Connection, state: &str) -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM quarantine WHERE state = ?1 AND dedup_key NOT LIKE 'dropped:%'",
            [state],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn dropped_row(conn: &Connection, reason: &str) -> Option<i64> {
        conn.query_row(
            "SELECT seen_count FROM quarantine WHERE dedup_key = ?1",
            [format!("dropped:{reason}")],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    #[test]
    fn held_reports_of_an_unregistered_device_stop_at_the_cap_and_the_rest_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        let (topics, key) = (Topics::default(), KeyPair::generate());
        let send = |conn: &mut Connection, device: &str, seq: u64| {
            let mut r = report(seq, seq * 10..seq * 10 + 2, 1);
            r.device_id = DeviceId::parse(device).unwrap();
            let msg = Inbound {
                topic: topics.usage(&r.device_id),
                payload: key.sign(USAGE_PAYLOAD_TYPE, &r.encode()).to_json(),
                received_at: Utc::now(),
            };
            commit(conn, &[check(&topics, msg, &|_| None)], 4096, None).unwrap()
        };
        let cap = MAX_HELD_PER_DEVICE as u64;
        for seq in 1..=cap {
            let out = send(&mut conn, "d9", seq);
            assert!(out.quarantine_dropped.is_empty());
        }
        let mut dropped = Vec::new();
        for seq in cap + 1..=cap + 3 {
            let out = send(&mut conn, "d9", seq);
            assert_eq!(out.rejected, vec![Reason::UnknownDevice], "still counted");
            dropped.extend(out.quarantine_dropped);
        }
        assert_eq!(dropped, vec![Reason::UnknownDevice; 3]);
        assert_eq!(quarantine_rows(&conn, "held"), MAX_HELD_PER_DEVICE);
        assert_eq!(dropped_row(&conn, "unknown_device"), Some(3));
        // A re-send of a held report is one more sighting, not a drop; another device
        // has room of its own.
        assert!(send(&mut conn, "d9", 1).quarantine_dropped.is_empty());
        assert!(send(&mut conn, "d8", 1).quarantine_dropped.is_empty());
        assert_eq!(quarantine_rows(&conn, "held"), MAX_HELD_PER_DEVICE + 1);
        let counted: i64 = conn
            .query_row(
                "SELECT n FROM quarantine_counts WHERE state = 'held'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counted, MAX_HELD_PER_DEVICE + 1);
    }

    #[test]
    fn rejected_messages_stop_at_the_overall_cap_and_the_rest_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO quarantine (dedup_key, received_ms, last_seen_ms, topic, reason, detail, payload, state)
             SELECT 'old:' || i, 0, 0, 't', 'malformed', '', x'', 'rejected' FROM n",
            [MAX_REJECTED - 1],
        )
        .unwrap();
        let topics = Topics::default();
        let junk = |n: u32| Inbound {
            topic: format!("rollcall/v1/devices/d{n}/usage"),
            payload: format!("junk {n}").into_bytes(),
            received_at: Utc::now(),
        };
        let out = commit(&mut conn, &[check(&topics, junk(1), &|_| None)], 4096, None).unwrap();
        assert!(out.quarantine_dropped.is_empty(), "the last row that fits");
        let out = commit(
            &mut conn,
            &[
                check(&topics, junk(2), &|_| None),
                check(&topics, junk(3), &|_| None),
                check(&topics, junk(1), &|_| None),
            ],
            4096,
            None,
        )
        .unwrap();
        assert_eq!(out.rejected, vec![Reason::Malformed; 3]);
        assert_eq!(out.quarantine_dropped, vec![Reason::Malformed; 2]);
        assert_eq!(quarantine_rows(&conn, "rejected"), MAX_REJECTED);
        assert_eq!(dropped_row(&conn, "malformed"), Some(2));
        let seen: i64 = conn
            .query_row(
                "SELECT seen_count FROM quarantine WHERE payload = CAST('junk 1' AS BLOB)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 2, "a message kept before is still counted on its row");
        let m = crate::metrics::Metrics::new();
        m.record(&out);
        assert!(m
            .encode()
            .contains("rollcall_quarantine_dropped_total{reason=\"malformed\"} 2"));

        // Purging what was last seen long ago makes room again, and the kept count follows.
        let purged = purge_quarantine(
            &conn,
            Some("rejected"),
            DateTime::from_timestamp_millis(1).unwrap(),
        )
        .unwrap();
        assert_eq!(purged as i64, MAX_REJECTED - 1);
        assert_eq!(quarantine_rows(&conn, "rejected"), 1, "junk 1, seen now");
        let all: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM quarantine WHERE state = 'rejected'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(all, 2, "and the row counting the dropped ones");
        let counted: i64 = conn
            .query_row(
                "SELECT n FROM quarantine_counts WHERE state = 'rejected'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counted, 2);
        let out = commit(&mut conn, &[check(&topics, junk(4), &|_| None)], 4096, None).unwrap();
        assert!(
            out.quarantine_dropped.is_empty(),
            "room again after the purge"
        );
    }

    #[test]
    fn payloads_that_fail_before_the_signature_check_are_kept_cut_to_a_few_kb() {
        let (key, stranger) = (KeyPair::generate(), KeyPair::generate());
        let (_dir, mut conn) = crate::store::test_store_with_device(&key);
        let topics = Topics::default();
        let d1 = DeviceId::parse("d1").unwrap();
        let info = crate::registry::device_info(&conn, &d1).unwrap();
        let big = |device: &str| {
            let mut r = report(1, 1..200, 1);
            r.device_id = DeviceId::parse(device).unwrap();
            for e in &mut r.events {
                e.attrs.insert("note".into(), "x".repeat(100));
            }
            r.encode()
        };
        let msg = |topic: String, payload: Vec<u8>| Inbound {
            topic,
            payload,
            received_at: Utc::now(),
        };
        let forged = key_sign(&stranger, big("d1"));
        let mismatched = key_sign(&key, big("d2"));
        assert!(forged.len() > 4 * MAX_UNVERIFIED_PAYLOAD_KEPT);
        let msgs = vec![
            msg(topics.usage(&d1), forged.clone()),
            msg(topics.usage(&d1), vec![b'x'; MAX_ENVELOPE_BYTES + 1]),
            msg(topics.usage(&d1), mismatched.clone()),
        ];
        let checked: Vec<Checked> = msgs
            .into_iter()
            .map(|m| check(&topics, m, &|_| info.clone()))
            .collect();
        let out = commit(&mut conn, &checked, 4096, None).unwrap();
        assert_eq!(
            out.rejected,
            vec![
                Reason::BadSignature,
                Reason::TooLarge,
                Reason::DeviceMismatch
            ]
        );
        assert_eq!(out.quarantine_truncated, 2);
        let kept: Vec<(String, i64)> = list_quarantine(&conn, None, 10)
            .unwrap()
            .into_iter()
            .map(|r| (r.reason, r.payload_bytes))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("device_mismatch".to_owned(), mismatched.len() as i64),
                ("too_large".to_owned(), MAX_UNVERIFIED_PAYLOAD_KEPT as i64),
                (
                    "bad_signature".to_owned(),
                    MAX_UNVERIFIED_PAYLOAD_KEPT as i64
                ),
            ]
        );
        let detail: String = conn
            .query_row(
                "SELECT detail FROM quarantine WHERE reason = 'bad_signature'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            detail.contains(&format!("of {} bytes", forged.len())),
            "{detail}"
        );
    }

    fn key_sign(k: &KeyPair, body: Vec<u8>) -> Vec<u8> {
        k.sign(USAGE_PAYLOAD_TYPE, &body).to_json()
    }

    /// Checking a batch at once (signatures as Ed25519 batches) decides every message as
    /// checking it alone does: good reports on both sides of a forged one, an unknown
    /// device, a report signed for another device, bad JSON and a wrong topic.
    #[test]
    fn checking_many_at_once_decides_each_message_as_checking_it_alone() {
        let topics = Topics::default();
        let (k1, k2, stranger) = (
            KeyPair::generate(),
            KeyPair::generate(),
            KeyPair::generate(),
        );
        let d1 = DeviceId::parse("d1").unwrap();
        let d2 = DeviceId::parse("d2").unwrap();
        let unknown = DeviceId::parse("d9").unwrap();
        let member = MemberId::parse("m1").unwrap();
        let lookup = |d: &DeviceId| -> Option<DeviceInfo> {
            let key = match d.as_str() {
                "d1" => k1.public(),
                "d2" => k2.public(),
                _ => return None,
            };
            Some(DeviceInfo {
                member_id: member.clone(),
                key,
            })
        };
        let at = Utc::now();
        let msg = |topic: String, payload: Vec<u8>| Inbound {
            topic,
            payload,
            received_at: at,
        };
        let signed = |k: &KeyPair, seq: u64, device: &str| {
            let mut r = report(seq, seq * 10..seq * 10 + 3, 1);
            r.device_id = DeviceId::parse(device).unwrap();
            k.sign(USAGE_PAYLOAD_TYPE, &r.encode()).to_json()
        };
        let mut msgs = Vec::new();
        for seq in 1..=150u64 {
            let m = match seq {
                40 => msg(topics.usage(&d1), signed(&stranger, seq, "d1")),
                41 => msg(topics.usage(&unknown), signed(&stranger, seq, "d9")),
                42 => msg(topics.usage(&d2), signed(&k2, seq, "d1")),
                43 => msg(topics.usage(&d1), b"{not json".to_vec()),
                44 => msg("elsewhere/d1/usage".into(), signed(&k1, seq, "d1")),
                s if s % 2 == 0 => msg(topics.usage(&d2), {
                    let mut r = report(seq, seq * 10..seq * 10 + 3, 1);
                    r.device_id = d2.clone();
                    k2.sign(USAGE_PAYLOAD_TYPE, &r.encode()).to_json()
                }),
                _ => msg(topics.usage(&d1), signed(&k1, seq, "d1")),
            };
            msgs.push(m);
        }
        let one_by_one: Vec<Checked> = msgs
            .iter()
            .cloned()
            .map(|m| check(&topics, m, &lookup))
            .collect();
        let at_once = check_many(&topics, msgs, &lookup);
        assert_eq!(format!("{at_once:?}"), format!("{one_by_one:?}"));
        let reasons: Vec<Reason> = at_once
            .iter()
            .filter_map(|c| match c {
                Checked::Rejected(r) => Some(r.reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                Reason::BadSignature,
                Reason::UnknownDevice,
                Reason::DeviceMismatch,
                Reason::Malformed,
                Reason::Malformed
            ]
        );
    }
}
