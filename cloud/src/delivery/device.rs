//! Display messages on the device's MQTT downlink, and the agents' receipts.
//!
//! A device delivery is published as a signed [`Downlink`] with
//! [`DownBody::Message`] (id = the idempotency key) on `.../down`, QoS 1. Publishing only
//! says the bytes left, so the delivery waits in `awaiting_ack` until the agent's signed
//! [`MessageReceipt`] on `.../receipt` names it; without one it is sent again after
//! `delivery.device_ack_timeout_s` (the agent keeps one copy per id and acks again).
//!
//! # Receipts
//!
//! Anyone who can publish on the broker can publish on `.../receipt`, so the MQTT task only
//! hands each message to the receipt writer (a thread with one long-lived store
//! connection) through a bounded queue, and never waits for it: the connection's
//! keep-alives go on whatever the writer is doing. When the queue is full the receipt is
//! dropped and counted (`rollcall_delivery_receipts_dropped_total`); the message is sent
//! again and confirmed again. The writer checks, before writing anything, in this order:
//! size ([`MAX_ENVELOPE_BYTES`]), topic, DSSE envelope, the device's registration, the
//! signature by its registered key, the receipt's payload, and that the receipt names the
//! device of its topic. A receipt that passes marks its messages delivered; one that fails
//! is kept in the ingest's quarantine table with the ingest's reason code
//! ([`RECEIPT_REASONS`]), within the quarantine's limits and with an unverified payload cut
//! short as there ([`crate::ingest::MAX_REJECTED`]), and counted in
//! `rollcall_delivery_receipts_rejected_total{reason}`.
//! Each batch of queued receipts is written in one transaction.

use super::dispatcher::{mark_received, Attempt};
use super::{DeliveryError, DeviceMessagePayload};
use crate::ingest::{sha_key, store_rejection, Inbound, Kept, Reason, Rejection};
use crate::metrics::{Metrics, ReasonLabel};
use crate::mqtt::{client_options, BrokerUrl};
use rollcall_shared::dsse::{
    Envelope, EnvelopeError, KeyPair, DOWNLINK_PAYLOAD_TYPE, RECEIPT_PAYLOAD_TYPE,
};
use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use rollcall_shared::payload::{DeviceMessage, DownBody, Downlink, MessageReceipt};
use rollcall_shared::topics::{Channel, Topics};
use rollcall_shared::{Clock, DeviceId, Secret, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Receipts waiting for the receipt writer; more are dropped (and counted).
const RECEIPT_QUEUE: usize = 1024;
/// Most receipts written in one transaction.
const RECEIPT_BATCH: usize = 256;

/// The reason codes a receipt can be refused with (a subset of the ingest's).
pub const RECEIPT_REASONS: [Reason; 6] = [
    Reason::TooLarge,
    Reason::Malformed,
    Reason::UnknownDevice,
    Reason::BadSignature,
    Reason::UnsupportedVersion,
    Reason::DeviceMismatch,
];

/// Publishes display messages for the dispatcher.
#[derive(Clone)]
pub struct DeviceSender {
    client: AsyncClient,
    key: Arc<KeyPair>,
    topics: Topics,
}

impl std::fmt::Debug for DeviceSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSender").finish_non_exhaustive()
    }
}

/// Broker settings for the device channel's own MQTT connection.
#[derive(Debug, Clone)]
pub struct DeviceChannelSettings {
    /// Broker.
    pub url: BrokerUrl,
    /// Username.
    pub username: String,
    /// Password (never shown by `Debug`).
    pub password: Secret,
    /// CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// The data directory (device keys are read, receipts written, in its store).
    pub data_dir: PathBuf,
}

impl DeviceSender {
    /// Connects to the broker and starts the task that keeps the connection, and the
    /// receipt writer (see the module doc) with its own store connection. The task ends on
    /// `shutdown`, after the receipt writer has written what was queued.
    pub fn start(
        s: DeviceChannelSettings,
        key: KeyPair,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let opts = client_options(
            &format!("rollcall-delivery-{:x}", fastrand::u64(..)),
            &s.url,
            &s.username,
            s.password.expose(),
            s.ca_file.as_deref(),
        )?;
        let (client, mut events) = AsyncClient::new(opts, 10_000);
        let topics = Topics::new(&s.topic_prefix);
        let filter = topics.filter(Channel::Receipt);
        let sub = client.clone();
        let conn = crate::store::open_writer(&s.data_dir)?;
        let (queue, queued) = sync_channel::<Inbound>(RECEIPT_QUEUE);
        let writer = {
            let (topics, metrics) = (topics.clone(), metrics.clone());
            std::thread::Builder::new()
                .name("delivery-receipts".into())
                .spawn(move || write_receipts(conn, &topics, queued, &metrics))?
        };
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = events.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            failures = 0;
                            if let Err(e) = sub.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                                tracing::error!(error = %e, "Subscribing to receipts failed");
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let msg = Inbound { topic: p.topic.clone(), payload: p.payload.to_vec(), received_at: clock.now() };
                            match queue.try_send(msg) {
                                Ok(()) => {}
                                Err(TrySendError::Full(_)) => {
                                    metrics.receipts_dropped.inc();
                                    tracing::debug!("Receipt writer behind; dropped a receipt (the message is sent again)");
                                }
                                Err(TrySendError::Disconnected(_)) => {
                                    metrics.receipts_dropped.inc();
                                    tracing::error!("The receipt writer has stopped; a receipt was dropped (device messages are sent again, then end dead)");
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, "Delivery MQTT connection lost; reconnecting");
                            let cap = 200u64.saturating_mul(1 << failures.min(6)).min(10_000);
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=cap))).await;
                        }
                    }
                }
            }
            let _ = sub.try_disconnect();
            drop(queue);
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        });
        Ok((
            Self {
                client,
                key: Arc::new(key),
                topics,
            },
            task,
        ))
    }

    /// Publishes the message (a [`DeviceMessagePayload`]) for `device` with id `key`.
    pub async fn send(
        &self,
        device: &str,
        key: &str,
        payload: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Attempt {
        let (device, p) = match (
            DeviceId::parse(device),
            serde_json::from_str::<DeviceMessagePayload>(payload),
        ) {
            (Ok(d), Ok(p)) => (d, p),
            (d, p) => {
                return Attempt::Permanent {
                    error: format!(
                        "bad device message: {:?} {:?}",
                        d.err().map(|e| e.to_string()),
                        p.err().map(|e| e.to_string())
                    ),
                }
            }
        };
        let msg = DeviceMessage {
            id: key.to_owned(),
            title: p.title,
            body: p.body,
        };
        if let Err(e) = msg.validate() {
            return Attempt::Permanent {
                error: e.to_string(),
            };
        }
        let down = Downlink {
            v: PROTOCOL_VERSION,
            device_id: device.clone(),
            sent_at: now,
            body: DownBody::Message(msg),
        };
        let env = self.key.sign(DOWNLINK_PAYLOAD_TYPE, &down.encode());
        match self
            .client
            .publish(
                self.topics.down(&device),
                QoS::AtLeastOnce,
                false,
                env.to_json(),
            )
            .await
        {
            Ok(()) => Attempt::Published,
            Err(e) => Attempt::Retry {
                code: None,
                error: format!("mqtt: {e}"),
            },
        }
    }
}

/// The receipt writer: applies queued receipts in batches until the queue is closed.
fn write_receipts(
    mut conn: Connection,
    topics: &Topics,
    queued: Receiver<Inbound>,
    metrics: &Metrics,
) {
    while let Ok(first) = queued.recv() {
        let mut batch = vec![first];
        while batch.len() < RECEIPT_BATCH {
            match queued.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        match apply_receipts(&mut conn, topics, batch) {
            Ok(out) => {
                metrics.receipts_applied.inc_by(out.applied);
                for r in &out.rejected {
                    metrics
                        .receipts_rejected
                        .get_or_create(&ReasonLabel {
                            reason: r.code().into(),
                        })
                        .inc();
                }
                metrics.record_quarantine(&out.quarantine_dropped, out.quarantine_truncated);
                tracing::debug!(
                    applied = out.applied,
                    delivered = out.delivered,
                    rejected = out.rejected.len(),
                    "Device receipts written"
                );
            }
            // Nothing of the batch was written: its messages are sent again after
            // `delivery.device_ack_timeout_s` and confirmed again.
            Err(e) => tracing::error!(error = %e, "Writing device receipts failed"),
        }
    }
}

/// What [`apply_receipts`] did with a batch of receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptsOutcome {
    /// Receipts that passed every check.
    pub applied: u64,
    /// Deliveries they marked delivered (a repeated receipt marks none).
    pub delivered: u64,
    /// Receipts refused, by reason (kept in quarantine within its limits).
    pub rejected: Vec<Reason>,
    /// Refused receipts not kept because the quarantine was at its limits, by reason.
    pub quarantine_dropped: Vec<Reason>,
    /// Refused receipts kept with their unverified payload cut short.
    pub quarantine_truncated: u64,
}

/// Checks each message from `.../receipt` (see the module doc) before anything is written,
/// then, in one transaction, marks the messages named by good receipts delivered and keeps
/// the refused ones in quarantine.
pub fn apply_receipts(
    conn: &mut Connection,
    topics: &Topics,
    msgs: Vec<Inbound>,
) -> Result<ReceiptsOutcome, DeliveryError> {
    let checked: Vec<_> = msgs
        .into_iter()
        .map(|m| check_receipt(conn, topics, m))
        .collect();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut out = ReceiptsOutcome::default();
    for c in checked {
        match c {
            Ok((device, receipt, at)) => {
                out.applied += 1;
                out.delivered += mark_received(&tx, device.as_str(), &receipt.message_ids, at)?;
            }
            Err(rej) => {
                match store_rejection(&tx, &rej)? {
                    Kept::Whole => {}
                    Kept::Truncated => out.quarantine_truncated += 1,
                    Kept::Dropped => out.quarantine_dropped.push(rej.reason),
                }
                out.rejected.push(rej.reason);
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

type CheckedReceipt =
    Result<(DeviceId, MessageReceipt, chrono::DateTime<chrono::Utc>), Box<Rejection>>;

/// A refused receipt, for the quarantine; `verified`: its signature verified.
fn refused(
    reason: Reason,
    detail: String,
    device: Option<DeviceId>,
    msg: Inbound,
    verified: bool,
) -> CheckedReceipt {
    Err(Box::new(Rejection {
        reason,
        detail,
        device,
        dedup_key: sha_key(&msg.payload),
        inbound: msg,
        held: false,
        ack_report: None,
        verified,
    }))
}

/// Checks one receipt, without writing anything.
fn check_receipt(conn: &Connection, topics: &Topics, msg: Inbound) -> CheckedReceipt {
    let refuse = |reason, detail, device, msg| refused(reason, detail, device, msg, false);
    if msg.payload.len() > MAX_ENVELOPE_BYTES {
        let detail = format!(
            "receipt of {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
            msg.payload.len()
        );
        let device = topics.parse(&msg.topic).map(|(d, _)| d);
        return refuse(Reason::TooLarge, detail, device, msg);
    }
    let device = match topics.parse(&msg.topic) {
        Some((d, Channel::Receipt)) => d,
        _ => {
            let detail = format!("not a receipt topic: {:?}", msg.topic);
            return refuse(Reason::Malformed, detail, None, msg);
        }
    };
    let env = match Envelope::from_json(&msg.payload) {
        Ok(e) => e,
        Err(e) => return refuse(Reason::Malformed, e.to_string(), Some(device), msg),
    };
    let info = match crate::registry::device_info(conn, &device) {
        Ok(Some(info)) => info,
        Ok(None) => {
            let detail = format!("receipt from unregistered device {device}");
            return refuse(Reason::UnknownDevice, detail, Some(device), msg);
        }
        // As the ingest does: a device that cannot be looked up is taken as unknown.
        Err(e) => {
            tracing::warn!(device_id = %device, error = %e, "Device lookup failed");
            let detail = format!("device {device} could not be looked up: {e}");
            return refuse(Reason::UnknownDevice, detail, Some(device), msg);
        }
    };
    let body = match env.verify(RECEIPT_PAYLOAD_TYPE, &info.key) {
        Ok(b) => b,
        Err(EnvelopeError::BadSignature) => {
            let detail = format!("no signature verifies under {device}'s registered key");
            return refuse(Reason::BadSignature, detail, Some(device), msg);
        }
        Err(e) => return refuse(Reason::Malformed, e.to_string(), Some(device), msg),
    };
    // Signed by the device: what is refused from here on is kept whole.
    let receipt = match MessageReceipt::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            let reason = Reason::from_payload(&e);
            return refused(reason, e.to_string(), Some(device), msg, true);
        }
    };
    if receipt.device_id != device {
        let detail = format!(
            "signed by {device} but claims to be from {}",
            receipt.device_id
        );
        return refused(Reason::DeviceMismatch, detail, Some(device), msg, true);
    }
    Ok((device, receipt, msg.received_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{DeliveryChannel, IdempotencyKey, NewDelivery};
    use chrono::Utc;

    fn receipt(device: &str, ids: &[&str]) -> Vec<u8> {
        MessageReceipt {
            v: PROTOCOL_VERSION,
            device_id: DeviceId::parse(device).unwrap(),
            message_ids: ids.iter().map(|s| s.to_string()).collect(),
            at: Utc::now(),
        }
        .encode()
    }

    #[test]
    fn receipts_are_checked_before_anything_is_written_and_refused_ones_are_quarantined_by_reason()
    {
        let (key, stranger) = (KeyPair::generate(), KeyPair::generate());
        let (_dir, mut conn) = crate::store::test_store_with_device(&key);
        let now = Utc::now();
        let tx = conn.transaction().unwrap();
        let queued = crate::delivery::enqueue(
            &tx,
            NewDelivery {
                channel: DeliveryChannel::Device,
                target: "d1".into(),
                idempotency_key: IdempotencyKey::parse("outreach:1").unwrap(),
                payload: serde_json::json!({"title": "t", "body": "b"}),
                not_before: now,
                purpose: "outreach".into(),
                quiet: None,
            },
        )
        .unwrap();
        tx.commit().unwrap();

        let topics = Topics::default();
        let (d1, d9) = (
            DeviceId::parse("d1").unwrap(),
            DeviceId::parse("d9").unwrap(),
        );
        let msg = |topic: String, payload: Vec<u8>| Inbound {
            topic,
            payload,
            received_at: now,
        };
        let signed = |k: &KeyPair, body: Vec<u8>| k.sign(RECEIPT_PAYLOAD_TYPE, &body).to_json();
        let msgs = vec![
            msg(
                topics.receipt(&d1),
                signed(&key, receipt("d1", &["outreach:1"])),
            ),
            msg(topics.receipt(&d1), vec![b' '; MAX_ENVELOPE_BYTES + 1]),
            msg(
                topics.usage(&d1),
                signed(&key, receipt("d1", &["outreach:1"])),
            ),
            msg(topics.receipt(&d1), b"{not json".to_vec()),
            msg(
                topics.receipt(&d9),
                signed(&stranger, receipt("d9", &["x"])),
            ),
            msg(
                topics.receipt(&d1),
                signed(&stranger, receipt("d1", &["outreach:1"])),
            ),
            msg(
                topics.receipt(&d1),
                signed(&key, receipt("d2", &["outreach:1"])),
            ),
        ];
        let out = apply_receipts(&mut conn, &topics, msgs).unwrap();
        assert_eq!((out.applied, out.delivered), (1, 1));
        assert_eq!(
            out.rejected,
            vec![
                Reason::TooLarge,
                Reason::Malformed,
                Reason::Malformed,
                Reason::UnknownDevice,
                Reason::BadSignature,
                Reason::DeviceMismatch,
            ]
        );
        let d = crate::delivery::get(&conn, queued.id).unwrap().unwrap();
        assert_eq!(d.status, "delivered");
        let kept = crate::ingest::list_quarantine(&conn, None, 100).unwrap();
        let mut reasons: Vec<&str> = kept.iter().map(|r| r.reason.as_str()).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            vec![
                "bad_signature",
                "device_mismatch",
                "malformed",
                "malformed",
                "too_large",
                "unknown_device"
            ]
        );
        assert!(kept.iter().all(|r| r.state == "rejected"));
        // The same junk again is one more sighting of the same row, not another row.
        let again = vec![msg(topics.receipt(&d1), b"{not json".to_vec())];
        apply_receipts(&mut conn, &topics, again).unwrap();
        assert_eq!(
            crate::ingest::list_quarantine(&conn, None, 100)
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn the_mqtt_password_never_shows_in_debug_output() {
        let url: BrokerUrl = "mqtt://broker:1883".parse().unwrap();
        let device = DeviceChannelSettings {
            url: url.clone(),
            username: "rollcall".into(),
            password: Secret::new("hunter2"),
            ca_file: None,
            topic_prefix: "rollcall".into(),
            data_dir: "data".into(),
        };
        let worker = crate::worker::WorkerSettings {
            url,
            username: "rollcall".into(),
            password: Secret::new("hunter2"),
            ca_file: None,
            shared_group: String::new(),
        };
        let shown = format!("{device:?} {worker:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("rollcall"), "{shown}");
    }
}
