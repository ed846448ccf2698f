//! The in-memory outbox: the same rules as the SQLite one, without durability. For
//! simulating many agents in one process, and for tests.

use super::*;
use rollcall_shared::Clock;
use std::sync::{Arc, Mutex};

struct Stored {
    event: UsageEvent,
    bytes: u64,
    recorded_at: DateTime<Utc>,
    report_seq: Option<u64>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    next_report_seq: u64,
    events: BTreeMap<u64, Stored>,
    /// In-flight reports and the seqs they hold.
    reports: BTreeMap<u64, Vec<u64>>,
    bytes: u64,
    evictions: u64,
    rejected_full: u64,
    rejected_by_cloud: u64,
    last_ack_at: Option<DateTime<Utc>>,
    session: u64,
    daemon: Option<DaemonState>,
    messages: std::collections::VecDeque<super::StoredMessage>,
}

/// An outbox held in memory (lost when the process ends). Cheap to create by the thousand.
pub struct MemoryOutbox {
    state: Mutex<State>,
    limits: OutboxLimits,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOutbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits, clock: Arc<dyn Clock>) -> Self {
        let state = State {
            next_seq: 1,
            next_report_seq: 1,
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            limits,
            clock,
        }
    }

    /// An empty outbox that continues a device's numbering: the next event gets
    /// `next_seq`, the next report `next_report_seq`, and [`Outbox::next_session`] returns
    /// values above `session`. For simulated devices that restart without their memory
    /// (the cloud would refuse reused numbers as replays).
    pub fn resume(
        limits: OutboxLimits,
        clock: Arc<dyn Clock>,
        next_seq: u64,
        next_report_seq: u64,
        session: u64,
    ) -> Self {
        let state = State {
            next_seq: next_seq.max(1),
            next_report_seq: next_report_seq.max(1),
            session,
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            limits,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory outbox lock")
    }
}

impl Outbox for MemoryOutbox {
    fn append(&self, event: NewEvent) -> Result<Seq, OutboxError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let seq = Seq::new(s.next_seq).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        let (ev, body) = event.with_seq(seq);
        let size = body.len() as u64;
        while let Some((limit, max)) =
            breaks_limit(&self.limits, s.events.len() as u64, s.bytes, size)
        {
            let victim = if self.limits.when_full == FullPolicy::DropOldest
                && size <= self.limits.max_bytes
            {
                s.events
                    .iter()
                    .find(|(_, e)| e.report_seq.is_none())
                    .map(|(k, _)| *k)
            } else {
                None
            };
            let Some(victim) = victim else {
                s.rejected_full += 1;
                return Err(OutboxError::Full { limit, max });
            };
            let gone = s.events.remove(&victim).expect("victim exists");
            s.bytes -= gone.bytes;
            s.evictions += 1;
        }
        s.events.insert(
            seq.get(),
            Stored {
                event: ev,
                bytes: size,
                recorded_at: now,
                report_seq: None,
            },
        );
        s.bytes += size;
        s.next_seq += 1;
        Ok(seq)
    }

    fn build_report(
        &self,
        max_events: usize,
        max_body_bytes: usize,
    ) -> Result<Option<ReportBatch>, OutboxError> {
        let mut s = self.lock();
        let unsent: Vec<(u64, u64)> = s
            .events
            .iter()
            .filter(|(_, e)| e.report_seq.is_none())
            .take(max_events.max(1))
            .map(|(k, e)| (*k, e.bytes))
            .collect();
        let n = fit_budget(
            unsent.iter().map(|(_, b)| *b as usize),
            max_events,
            max_body_bytes,
        );
        if n == 0 {
            return Ok(None);
        }
        let report_seq = s.next_report_seq;
        s.next_report_seq += 1;
        let seqs: Vec<u64> = unsent[..n].iter().map(|(k, _)| *k).collect();
        let mut events = Vec::with_capacity(n);
        for k in &seqs {
            let e = s.events.get_mut(k).expect("unsent event exists");
            e.report_seq = Some(report_seq);
            events.push(e.event.clone());
        }
        s.reports.insert(report_seq, seqs);
        Ok(Some(ReportBatch { report_seq, events }))
    }

    fn inflight_reports(&self) -> Result<Vec<u64>, OutboxError> {
        Ok(self.lock().reports.keys().copied().collect())
    }

    fn report_events(&self, report_seq: u64) -> Result<Vec<UsageEvent>, OutboxError> {
        let s = self.lock();
        let Some(seqs) = s.reports.get(&report_seq) else {
            return Ok(Vec::new());
        };
        Ok(seqs
            .iter()
            .filter_map(|k| s.events.get(k))
            .map(|e| e.event.clone())
            .collect())
    }

    fn ack(&self, report_seq: u64, status: AckStatus) -> Result<AckOutcome, OutboxError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let Some(seqs) = s.reports.remove(&report_seq) else {
            return Ok(AckOutcome::UnknownReport);
        };
        let mut n = 0;
        for k in seqs {
            if let Some(e) = s.events.remove(&k) {
                s.bytes -= e.bytes;
                n += 1;
            }
        }
        s.last_ack_at = Some(now);
        if status == AckStatus::Rejected {
            s.rejected_by_cloud += 1;
        }
        Ok(AckOutcome::Deleted { events: n })
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let s = self.lock();
        let mut unsent = s.events.values().filter(|e| e.report_seq.is_none());
        let oldest_unsent = unsent.next().map(|e| e.recorded_at);
        Ok(OutboxStats {
            depth: s.events.len() as u64,
            bytes: s.bytes,
            unsent: u64::from(oldest_unsent.is_some()) + unsent.count() as u64,
            inflight_reports: s.reports.len() as u64,
            oldest_unsent_recorded_at: oldest_unsent,
            oldest_unacked_recorded_at: s.events.values().next().map(|e| e.recorded_at),
            evictions: s.evictions,
            rejected_full: s.rejected_full,
            rejected_by_cloud: s.rejected_by_cloud,
            last_ack_at: s.last_ack_at,
        })
    }

    fn next_session(&self) -> Result<u64, OutboxError> {
        let mut s = self.lock();
        s.session += 1;
        Ok(s.session)
    }

    fn set_daemon_state(&self, state: &DaemonState) -> Result<(), OutboxError> {
        self.lock().daemon = Some(state.clone());
        Ok(())
    }

    fn daemon_state(&self) -> Result<Option<DaemonState>, OutboxError> {
        Ok(self.lock().daemon.clone())
    }

    fn store_message(
        &self,
        m: &rollcall_shared::payload::DeviceMessage,
    ) -> Result<bool, OutboxError> {
        let now = self.clock.now();
        let mut s = self.lock();
        if s.messages.iter().any(|x| x.id == m.id) {
            return Ok(false);
        }
        s.messages.push_front(super::StoredMessage {
            id: m.id.clone(),
            title: m.title.clone(),
            body: m.body.clone(),
            received_at: now,
        });
        s.messages.truncate(super::MAX_STORED_MESSAGES);
        Ok(true)
    }

    fn messages(&self) -> Result<Vec<super::StoredMessage>, OutboxError> {
        Ok(self.lock().messages.iter().cloned().collect())
    }

    fn may_block(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::ManualClock;

    #[test]
    fn a_resumed_outbox_continues_the_numbering() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let o = MemoryOutbox::resume(OutboxLimits::default(), clock.clone(), 42, 7, 3);
        let ev = NewEvent {
            kind: rollcall_shared::EventKind::parse("brew").unwrap(),
            qty: 1,
            occurred_at: clock.now(),
            attrs: BTreeMap::new(),
            clock_suspect: false,
        };
        assert_eq!(o.append(ev).unwrap().get(), 42);
        assert_eq!(o.build_report(10, 100_000).unwrap().unwrap().report_seq, 7);
        assert_eq!(o.next_session().unwrap(), 4);
    }
}
