//! Display messages on the device's MQTT downlink, and the agents' receipts.
//!
//! A device delivery is published as a signed [`Downlink`] with
//! [`DownBody::Message`] (id = the idempotency key) on `.../down`, QoS 1. Publishing only
//! says the bytes left, so the delivery waits in `awaiting_ack` until the agent's signed
//! [`MessageReceipt`] on `.../receipt` names it; without one it is sent again after
//! `delivery.device_ack_timeout_s` (the agent keeps one copy per id and acks again).
//! Receipts are verified against the device's registered key; a bad one is logged and
//! ignored.

use super::dispatcher::{mark_received, Attempt};
use super::DeviceMessagePayload;
use crate::mqtt::{client_options, BrokerUrl};
use rollcall_shared::dsse::{Envelope, KeyPair, DOWNLINK_PAYLOAD_TYPE, RECEIPT_PAYLOAD_TYPE};
use rollcall_shared::payload::{DeviceMessage, DownBody, Downlink, MessageReceipt};
use rollcall_shared::topics::{Channel, Topics};
use rollcall_shared::{Clock, DeviceId, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// Password.
    pub password: String,
    /// CA file for TLS.
    pub ca_file: Option<PathBuf>,
    /// Topic prefix.
    pub topic_prefix: String,
    /// The data directory (device keys are read, receipts written, in its store).
    pub data_dir: PathBuf,
}

impl DeviceSender {
    /// Connects to the broker and starts the task that keeps the connection and applies
    /// receipts. The task ends on `shutdown`.
    pub fn start(
        s: DeviceChannelSettings,
        key: KeyPair,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let opts = client_options(
            &format!("rollcall-delivery-{:x}", fastrand::u64(..)),
            &s.url,
            &s.username,
            &s.password,
            s.ca_file.as_deref(),
        )?;
        let (client, mut events) = AsyncClient::new(opts, 10_000);
        let topics = Topics::new(&s.topic_prefix);
        let filter = topics.filter(Channel::Receipt);
        let sub = client.clone();
        let t = topics.clone();
        let dir = s.data_dir.clone();
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
                            let (dir, t, clock) = (dir.clone(), t.clone(), clock.clone());
                            let topic = p.topic.clone();
                            let payload = p.payload.to_vec();
                            let r = tokio::task::spawn_blocking(move || apply_receipt(&dir, &t, &topic, &payload, clock.now())).await;
                            match r {
                                Ok(Ok(n)) => tracing::debug!(delivered = n, "Device receipt applied"),
                                Ok(Err(e)) => tracing::warn!(error = %e, "Ignoring device receipt"),
                                Err(e) => tracing::error!(error = %e, "Receipt task failed"),
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

/// Verifies a receipt against the device's registered key and marks its messages delivered.
fn apply_receipt(
    dir: &Path,
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let (device, channel) = topics.parse(topic).context("not a device topic")?;
    anyhow::ensure!(channel == Channel::Receipt, "not a receipt topic");
    let conn = crate::store::open_writer(dir)?;
    let info = crate::registry::device_info(&conn, &device)?
        .with_context(|| format!("receipt from unregistered device {device}"))?;
    let env = Envelope::from_json(payload)?;
    let body = env.verify(RECEIPT_PAYLOAD_TYPE, &info.key)?;
    let r = MessageReceipt::decode(&body)?;
    anyhow::ensure!(r.device_id == device, "receipt names another device");
    Ok(mark_received(&conn, device.as_str(), &r.message_ids, now)?)
}
