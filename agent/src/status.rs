//! `rollcall-agent status`: what the outbox holds and what the daemon last said about its
//! connection, as a table or (with `--json`) one JSON object.
//!
//! The connection state is the one the daemon last wrote (`connected`, `disconnected`,
//! `stopped`, or `never_ran` when no daemon ever wrote one); `daemon_running` is checked
//! independently through the daemon's lock, so a daemon that crashed while connected
//! shows `connected` with `daemon_running: false`.

use crate::outbox::{ConnectionState, Outbox, OutboxError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The device id, once `init` or `run` has chosen one.
    pub device_id: Option<String>,
    /// Whether a daemon holds the data directory's lock now, and its pid.
    pub daemon_running: bool,
    /// The pid holding the lock.
    pub daemon_pid: Option<i32>,
    /// The daemon's last written connection state: `connected`, `disconnected`,
    /// `stopped`, or `never_ran` when no daemon ever wrote one.
    pub connection: &'static str,
    /// The pid of the daemon that wrote `connection`.
    pub connection_pid: Option<u32>,
    /// When `connection` was written.
    pub connection_written_at: Option<DateTime<Utc>>,
    /// The connection session number then.
    pub session: Option<u64>,
    /// Events not yet acknowledged by the cloud.
    pub outbox_depth: u64,
    /// Bytes of those events.
    pub outbox_bytes: u64,
    /// Events not yet in any report.
    pub unsent_events: u64,
    /// Reports sent and awaiting the cloud's ack.
    pub inflight_reports: u64,
    /// Age of the oldest unsent event, in seconds.
    pub oldest_unsent_age_s: Option<u64>,
    /// Age of the oldest unacknowledged event, in seconds.
    pub oldest_unacked_age_s: Option<u64>,
    /// When the cloud last acknowledged a report.
    pub last_ack_at: Option<DateTime<Utc>>,
    /// Successful reconnects of the last daemon.
    pub reconnects: u64,
    /// Events evicted under `drop_oldest`.
    pub evictions: u64,
    /// Events refused because the outbox was full.
    pub rejected_full: u64,
    /// Reports the cloud rejected.
    pub rejected_by_cloud: u64,
}

/// Reads the outbox and the daemon state. `now` is the agent clock's time.
pub fn gather(
    outbox: &dyn Outbox,
    now: DateTime<Utc>,
    device_id: Option<String>,
    daemon_pid: Option<i32>,
) -> Result<StatusReport, OutboxError> {
    let s = outbox.stats()?;
    let daemon = outbox.daemon_state()?;
    let age = |t: Option<DateTime<Utc>>| t.map(|t| (now - t).num_seconds().max(0) as u64);
    let connection = match daemon.as_ref().map(|d| d.state) {
        None => "never_ran",
        Some(ConnectionState::Connected) => "connected",
        Some(ConnectionState::Disconnected) => "disconnected",
        Some(ConnectionState::Stopped) => "stopped",
    };
    Ok(StatusReport {
        device_id,
        daemon_running: daemon_pid.is_some(),
        daemon_pid,
        connection,
        connection_pid: daemon.as_ref().map(|d| d.pid),
        connection_written_at: daemon.as_ref().map(|d| d.at),
        session: daemon.as_ref().map(|d| d.session),
        outbox_depth: s.depth,
        outbox_bytes: s.bytes,
        unsent_events: s.unsent,
        inflight_reports: s.inflight_reports,
        oldest_unsent_age_s: age(s.oldest_unsent_recorded_at),
        oldest_unacked_age_s: age(s.oldest_unacked_recorded_at),
        last_ack_at: s.last_ack_at,
        reconnects: daemon.map(|d| d.reconnects).unwrap_or(0),
        evictions: s.evictions,
        rejected_full: s.rejected_full,
        rejected_by_cloud: s.rejected_by_cloud,
    })
}

impl StatusReport {
    /// The human-readable table.
    pub fn to_table(&self, now: DateTime<Utc>) -> String {
        let ago = |t: DateTime<Utc>| {
            let age = human_age((now - t).num_seconds().max(0) as u64);
            format!(
                "{} ({age} ago)",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        };
        let mut rows: Vec<(&str, String)> = vec![
            (
                "device id",
                self.device_id
                    .clone()
                    .unwrap_or_else(|| "(not initialised)".into()),
            ),
            (
                "daemon",
                match self.daemon_pid {
                    Some(pid) => format!("running (pid {pid})"),
                    None => "not running".into(),
                },
            ),
        ];
        let mut conn = self.connection.to_owned();
        if let (Some(pid), Some(at)) = (self.connection_pid, self.connection_written_at) {
            conn.push_str(&format!(", written by pid {pid} at {}", ago(at)));
        }
        rows.push(("connection", conn));
        rows.push((
            "outbox depth",
            format!("{} events ({} bytes)", self.outbox_depth, self.outbox_bytes),
        ));
        rows.push(("unsent events", self.unsent_events.to_string()));
        rows.push(("in-flight reports", self.inflight_reports.to_string()));
        rows.push((
            "oldest unsent",
            self.oldest_unsent_age_s
                .map(human_age)
                .unwrap_or_else(|| "-".into()),
        ));
        rows.push((
            "oldest unacked",
            self.oldest_unacked_age_s
                .map(human_age)
                .unwrap_or_else(|| "-".into()),
        ));
        rows.push((
            "last ack",
            self.last_ack_at.map(ago).unwrap_or_else(|| "never".into()),
        ));
        rows.push(("reconnects", self.reconnects.to_string()));
        rows.push(("evictions", self.evictions.to_string()));
        rows.push(("refused (full)", self.rejected_full.to_string()));
        rows.push(("rejected by cloud", self.rejected_by_cloud.to_string()));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

fn human_age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{DaemonState, MemoryOutbox, NewEvent, OutboxLimits};
    use rollcall_shared::{Clock, EventKind, ManualClock};
    use std::sync::Arc;

    #[test]
    fn status_shows_never_ran_then_the_written_state_and_ages() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(t0);
        let o = MemoryOutbox::new(OutboxLimits::default(), Arc::new(clock.clone()));
        let r = gather(&o, clock.now(), None, None).unwrap();
        assert_eq!(r.connection, "never_ran");
        assert!(!r.daemon_running);
        o.append(NewEvent {
            kind: EventKind::parse("brew").unwrap(),
            qty: 1,
            occurred_at: t0,
            attrs: Default::default(),
            clock_suspect: false,
        })
        .unwrap();
        o.set_daemon_state(&DaemonState {
            state: ConnectionState::Connected,
            pid: 7,
            at: t0,
            session: 3,
            reconnects: 2,
        })
        .unwrap();
        clock.advance(chrono::Duration::seconds(90));
        let r = gather(&o, clock.now(), Some("dev-1".into()), Some(7)).unwrap();
        assert_eq!((r.connection, r.connection_pid), ("connected", Some(7)));
        assert_eq!((r.outbox_depth, r.unsent_events, r.reconnects), (1, 1, 2));
        assert_eq!(r.oldest_unsent_age_s, Some(90));
        let table = r.to_table(clock.now());
        assert!(
            table.contains("outbox depth") && table.contains("1 events"),
            "{table}"
        );
        assert!(table.contains("running (pid 7)"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["connection"], "connected");
        assert_eq!(json["session"], 3);
        assert_eq!(json["outbox_depth"], 1);
    }
}
