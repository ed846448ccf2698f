//! Prometheus metrics, all defined here. Counters end in `_total`; labels are low-cardinality.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label for rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The quarantine reason code.
    pub reason: String,
}

/// Label for stored report outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `stored` or `duplicate`.
    pub result: String,
}

/// Label for members by engagement state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `new`, `active`, `champion`, `lapsing` or `lapsed`.
    pub state: String,
}

/// Label for delivery attempts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    /// `webhook`, `device` or `email`.
    pub channel: String,
    /// `delivered`, `published`, `retry`, `gone` or `permanent`.
    pub outcome: String,
}

/// Label for outreach decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `queued`, `held`, `skipped` or `cancelled`.
    pub decision: String,
}

/// The cloud's metrics.
pub struct Metrics {
    registry: Registry,
    /// `rollcall_ingest_reports_total{result}`: usage reports committed (stored) or re-acked (duplicate).
    pub reports: Family<ResultLabel, Counter>,
    /// `rollcall_ingest_events_total`: events newly stored.
    pub events: Counter,
    /// `rollcall_ingest_rejected_total{reason}`: messages sent to quarantine.
    pub rejected: Family<ReasonLabel, Counter>,
    /// `rollcall_ingest_status_total`: status messages applied.
    pub statuses: Counter,
    /// `rollcall_ingest_acks_total`: acks published after commit.
    pub acks: Counter,
    /// `rollcall_ingest_batch_seconds`: time to commit one checked batch.
    pub batch_seconds: Histogram,
    /// `rollcall_ingest_mqtt_connected`: 1 while the ingest client is connected.
    pub mqtt_connected: Gauge,
    /// `rollcall_ingest_held_released_total`: held reports ingested after their device was registered.
    pub released: Counter,
    /// `rollcall_scoring_members{state}`: members per engagement state at the last scoring run.
    pub scoring_members: Family<StateLabel, Gauge>,
    /// `rollcall_scoring_runs_total`: scoring runs completed.
    pub scoring_runs: Counter,
    /// `rollcall_scoring_fits_total`: model refits adopted.
    pub scoring_fits: Counter,
    /// `rollcall_scoring_run_seconds`: time of one scoring run.
    pub scoring_run_seconds: Histogram,
    /// `rollcall_audit_commit_seconds`: time the audit writer is busy with one group
    /// commit (and the write-ahead file restart that may follow it); lookups wait for it.
    pub audit_commit_seconds: Histogram,
    /// `rollcall_delivery_attempts_total{channel,outcome}`: delivery attempts made.
    pub delivery_attempts: Family<DeliveryLabel, Counter>,
    /// `rollcall_delivery_attempt_seconds`: time of one delivery attempt.
    pub delivery_latency_seconds: Histogram,
    /// `rollcall_outreach_decisions_total{decision}`: outreach policy decisions.
    pub outreach_decisions: Family<DecisionLabel, Counter>,
    /// `rollcall_orders_decided_total{status}`: transactions decided (accepted, held, rejected).
    pub orders_decided: Family<StatusLabel, Counter>,
    /// `rollcall_orders_duplicate_total`: transaction re-sends answered with the stored outcome.
    pub orders_duplicate: Counter,
    /// `rollcall_ingest_downlinks_total`: receipts and policies published after commit.
    pub downlinks: Counter,
    /// `rollcall_delivery_receipts_total`: agents' message receipts applied.
    pub receipts_applied: Counter,
    /// `rollcall_delivery_receipts_rejected_total{reason}`: agents' message receipts refused
    /// and sent to quarantine, by the ingest's reason codes.
    pub receipts_rejected: Family<ReasonLabel, Counter>,
    /// `rollcall_delivery_receipts_dropped_total`: receipts not even checked because the
    /// receipt writer was behind (the message is re-sent and confirmed again).
    pub receipts_dropped: Counter,
    /// `rollcall_quarantine_dropped_total{reason}`: rejected messages not kept in quarantine
    /// because it was at its limits.
    pub quarantine_dropped: Family<ReasonLabel, Counter>,
    /// `rollcall_quarantine_truncated_total`: messages kept with their unverified payload
    /// cut short.
    pub quarantine_truncated: Counter,
}

/// Label for order outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `accepted`, `held_for_confirmation` or `rejected`.
    pub status: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rollcall");
        let m = Metrics {
            reports: Family::default(),
            events: Counter::default(),
            rejected: Family::default(),
            statuses: Counter::default(),
            acks: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            mqtt_connected: Gauge::default(),
            released: Counter::default(),
            scoring_members: Family::default(),
            scoring_runs: Counter::default(),
            scoring_fits: Counter::default(),
            scoring_run_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            audit_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            delivery_attempts: Family::default(),
            delivery_latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            outreach_decisions: Family::default(),
            orders_decided: Family::default(),
            orders_duplicate: Counter::default(),
            downlinks: Counter::default(),
            receipts_applied: Counter::default(),
            receipts_rejected: Family::default(),
            receipts_dropped: Counter::default(),
            quarantine_dropped: Family::default(),
            quarantine_truncated: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ingest_reports",
            "Usage reports committed or re-acked",
            m.reports.clone(),
        );
        registry.register(
            "ingest_events",
            "Usage events newly stored",
            m.events.clone(),
        );
        registry.register(
            "ingest_rejected",
            "Messages sent to quarantine, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "ingest_status",
            "Device status messages applied",
            m.statuses.clone(),
        );
        registry.register("ingest_acks", "Acks published after commit", m.acks.clone());
        registry.register(
            "ingest_batch_seconds",
            "Time to commit one checked batch",
            m.batch_seconds.clone(),
        );
        registry.register(
            "ingest_mqtt_connected",
            "1 while the ingest MQTT client is connected",
            m.mqtt_connected.clone(),
        );
        registry.register(
            "ingest_held_released",
            "Held reports ingested after registration",
            m.released.clone(),
        );
        registry.register(
            "scoring_members",
            "Members per engagement state at the last scoring run",
            m.scoring_members.clone(),
        );
        registry.register(
            "scoring_runs",
            "Scoring runs completed",
            m.scoring_runs.clone(),
        );
        registry.register(
            "scoring_fits",
            "Model refits adopted",
            m.scoring_fits.clone(),
        );
        registry.register(
            "scoring_run_seconds",
            "Time of one scoring run",
            m.scoring_run_seconds.clone(),
        );
        registry.register(
            "audit_commit_seconds",
            "Time the audit writer is busy with one group commit of lookups' audit rows",
            m.audit_commit_seconds.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts, by channel and outcome",
            m.delivery_attempts.clone(),
        );
        registry.register(
            "delivery_attempt_seconds",
            "Time of one delivery attempt",
            m.delivery_latency_seconds.clone(),
        );
        registry.register(
            "outreach_decisions",
            "Outreach policy decisions",
            m.outreach_decisions.clone(),
        );
        registry.register(
            "orders_decided",
            "Device transactions decided, by status",
            m.orders_decided.clone(),
        );
        registry.register(
            "orders_duplicate",
            "Transaction re-sends answered with the stored outcome",
            m.orders_duplicate.clone(),
        );
        registry.register(
            "ingest_downlinks",
            "Receipts and policies published after commit",
            m.downlinks.clone(),
        );
        registry.register(
            "delivery_receipts",
            "Message receipts from agents applied",
            m.receipts_applied.clone(),
        );
        registry.register(
            "delivery_receipts_rejected",
            "Message receipts from agents sent to quarantine, by reason",
            m.receipts_rejected.clone(),
        );
        registry.register(
            "delivery_receipts_dropped",
            "Message receipts dropped unchecked because the receipt writer was behind",
            m.receipts_dropped.clone(),
        );
        registry.register(
            "quarantine_dropped",
            "Rejected messages not kept because the quarantine was at its limits, by reason",
            m.quarantine_dropped.clone(),
        );
        registry.register(
            "quarantine_truncated",
            "Quarantined messages kept with their unverified payload cut short",
            m.quarantine_truncated.clone(),
        );
        for st in ["accepted", "held_for_confirmation", "rejected"] {
            let _ = m
                .orders_decided
                .get_or_create(&StatusLabel { status: st.into() });
        }
        for s in crate::scoring::State::ALL {
            let _ = m.scoring_members.get_or_create(&StateLabel {
                state: s.name().into(),
            });
        }
        for r in crate::ingest::Reason::ALL {
            let _ = m.rejected.get_or_create(&ReasonLabel {
                reason: r.code().into(),
            });
        }
        for r in crate::delivery::device::RECEIPT_REASONS {
            let _ = m.receipts_rejected.get_or_create(&ReasonLabel {
                reason: r.code().into(),
            });
        }
        for r in ["stored", "duplicate"] {
            let _ = m.reports.get_or_create(&ResultLabel { result: r.into() });
        }
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }

    /// Records what a committed batch did.
    pub fn record(&self, out: &crate::ingest::BatchOutcome) {
        self.reports
            .get_or_create(&ResultLabel {
                result: "stored".into(),
            })
            .inc_by(out.reports_stored);
        self.reports
            .get_or_create(&ResultLabel {
                result: "duplicate".into(),
            })
            .inc_by(out.reports_duplicate);
        self.events.inc_by(out.events_stored);
        self.statuses.inc_by(out.statuses);
        for st in &out.tx_decided {
            self.orders_decided
                .get_or_create(&StatusLabel {
                    status: st.as_str().into(),
                })
                .inc();
        }
        self.orders_duplicate.inc_by(out.tx_duplicate);
        for r in &out.rejected {
            self.rejected
                .get_or_create(&ReasonLabel {
                    reason: r.code().into(),
                })
                .inc();
        }
        self.record_quarantine(&out.quarantine_dropped, out.quarantine_truncated);
    }

    /// Records what the quarantine did not keep, or kept cut short.
    pub fn record_quarantine(&self, dropped: &[crate::ingest::Reason], truncated: u64) {
        for r in dropped {
            self.quarantine_dropped
                .get_or_create(&ReasonLabel {
                    reason: r.code().into(),
                })
                .inc();
        }
        self.quarantine_truncated.inc_by(truncated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejection_counters_are_exposed_with_their_reason() {
        let m = Metrics::new();
        m.record(&crate::ingest::BatchOutcome {
            rejected: vec![crate::ingest::Reason::BadSignature],
            ..Default::default()
        });
        let text = m.encode();
        assert!(
            text.contains("rollcall_ingest_rejected_total{reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(text.contains("rollcall_ingest_rejected_total{reason=\"replayed\"} 0"));
        assert!(
            text.contains("rollcall_scoring_members{state=\"lapsing\"} 0"),
            "{text}"
        );
    }
}
