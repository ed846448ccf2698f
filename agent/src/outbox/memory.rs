//! The in-memory outbox: the same rules as the SQLite one, without durability. For
//! simulating many agents in one process, and for tests.

use super::*;
use crate::consumables::{must_order, new_tx_id, OrderState};
use rollcall_shared::payload::TxStatus;
use rollcall_shared::Clock;
use std::sync::{Arc, Mutex};

struct StoredOrder {
    rec: OrderRecord,
    envelope: Option<Vec<u8>>,
}

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
    next_tx_counter: u64,
    slots: BTreeMap<SlotId, SlotState>,
    /// Orders by counter (creation order).
    orders: BTreeMap<u64, StoredOrder>,
    policy: Option<bool>,
    /// When the cloud sent the policy kept (cloud time).
    policy_sent_at: Option<DateTime<Utc>>,
}

/// An outbox held in memory (lost when the process ends). Cheap to create by the thousand.
pub struct MemoryOutbox {
    state: Mutex<State>,
    limits: OutboxLimits,
    clock: Arc<dyn Clock>,
    consumables: Option<Arc<Consumables>>,
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
            next_tx_counter: 1,
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            limits,
            clock,
            consumables: None,
        }
    }

    /// An empty outbox that continues a device's numbering: the next event gets
    /// `next_seq`, the next report `next_report_seq`, the next replenishment order the
    /// counter `next_tx_counter`, and [`Outbox::next_session`] returns values above
    /// `session`. For simulated devices that restart without their memory
    /// (the cloud would refuse reused numbers as replays).
    pub fn resume(
        limits: OutboxLimits,
        clock: Arc<dyn Clock>,
        next_seq: u64,
        next_report_seq: u64,
        next_tx_counter: u64,
        session: u64,
    ) -> Self {
        let state = State {
            next_seq: next_seq.max(1),
            next_report_seq: next_report_seq.max(1),
            next_tx_counter: next_tx_counter.max(1),
            session,
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
            limits,
            clock,
            consumables: None,
        }
    }

    /// Tracks `consumables`: appends drain their slots and create orders (see
    /// [`crate::consumables`]).
    pub fn with_consumables(mut self, consumables: Arc<Consumables>) -> Self {
        self.consumables = Some(consumables);
        self
    }

    fn find_order<'a>(s: &'a mut State, tx_id: &TxId) -> Option<&'a mut StoredOrder> {
        s.orders.values_mut().find(|o| o.rec.tx_id == *tx_id)
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
        if let Some(full) = breaks_limit(&self.limits, s.events.len() as u64, s.bytes, size) {
            // Decide before touching anything: evicting only helps if the new event fits
            // once every unsent event is gone (invariant 5).
            let left = match self.limits.when_full {
                FullPolicy::Reject => Some(full),
                FullPolicy::DropOldest => {
                    let (count, bytes) = s
                        .events
                        .values()
                        .filter(|e| e.report_seq.is_some())
                        .fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.bytes));
                    breaks_limit(&self.limits, count, bytes, size)
                }
            };
            if let Some((limit, max)) = left {
                s.rejected_full += 1;
                return Err(OutboxError::Full { limit, max });
            }
            // The oldest unsent events, just enough of them for the new one to fit.
            let (mut count, mut bytes) = (s.events.len() as u64, s.bytes);
            let victims: Vec<(u64, u64)> = s
                .events
                .iter()
                .filter(|(_, e)| e.report_seq.is_none())
                .map(|(k, e)| (*k, e.bytes))
                .take_while(|(_, b)| {
                    let needed = breaks_limit(&self.limits, count, bytes, size).is_some();
                    if needed {
                        count -= 1;
                        bytes -= b;
                    }
                    needed
                })
                .collect();
            for (victim, victim_bytes) in victims {
                s.events.remove(&victim);
                s.bytes -= victim_bytes;
                s.evictions += 1;
            }
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
        if let Some(c) = &self.consumables {
            let opted_in = s.policy.unwrap_or(c.auto_reorder);
            let kind = s.events[&seq.get()].event.kind.clone();
            let qty = s.events[&seq.get()].event.qty;
            for (cfg, units) in c.drain(&kind, qty) {
                let mut st = s.slots.get(&cfg.slot).cloned().unwrap_or(SlotState {
                    slot: cfg.slot.clone(),
                    level: i64::from(cfg.capacity),
                    armed: true,
                    open_tx: None,
                    delivered_tx: None,
                });
                st.level -= units;
                if must_order(cfg, &st, opted_in) {
                    let counter = s.next_tx_counter;
                    s.next_tx_counter += 1;
                    let rec = OrderRecord {
                        tx_id: new_tx_id(),
                        counter,
                        slot: cfg.slot.clone(),
                        sku: cfg.sku.clone(),
                        qty: cfg.reorder_qty,
                        unit_price: cfg.unit_price,
                        currency: cfg.currency.clone(),
                        level: st.level,
                        threshold: i64::from(cfg.threshold),
                        created_at: now,
                        state: OrderState::Pending,
                        reason: None,
                        payload_sha256: None,
                        ledger_index: None,
                        updated_at: now,
                        refilled: st.delivered_tx.take(),
                    };
                    st.open_tx = Some(rec.tx_id.clone());
                    st.armed = false;
                    s.orders.insert(
                        counter,
                        StoredOrder {
                            rec,
                            envelope: None,
                        },
                    );
                }
                s.slots.insert(cfg.slot.clone(), st);
            }
        }
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

    fn consumables(&self) -> Option<&Consumables> {
        self.consumables.as_deref()
    }

    fn slots(&self) -> Result<Vec<SlotState>, OutboxError> {
        let Some(c) = &self.consumables else {
            return Ok(Vec::new());
        };
        let s = self.lock();
        Ok(c.slots
            .iter()
            .map(|cfg| {
                s.slots.get(&cfg.slot).cloned().unwrap_or(SlotState {
                    slot: cfg.slot.clone(),
                    level: i64::from(cfg.capacity),
                    armed: true,
                    open_tx: None,
                    delivered_tx: None,
                })
            })
            .collect())
    }

    fn refill(&self, slot: &SlotId, qty: Option<u32>) -> Result<SlotState, OutboxError> {
        let cfg = self
            .consumables
            .as_ref()
            .and_then(|c| c.slot(slot))
            .ok_or_else(|| OutboxError::UnknownSlot(slot.to_string()))?;
        let now = self.clock.now();
        let mut s = self.lock();
        let cap = i64::from(cfg.capacity);
        let mut st = s.slots.get(slot).cloned().unwrap_or(SlotState {
            slot: slot.clone(),
            level: cap,
            armed: true,
            open_tx: None,
            delivered_tx: None,
        });
        st.level = match qty {
            Some(q) => (st.level + i64::from(q)).min(cap),
            None => cap,
        };
        st.armed = true;
        if let Some(open) = st.open_tx.clone() {
            if let Some(o) = Self::find_order(&mut s, &open) {
                match o.rec.state {
                    OrderState::Accepted => {
                        o.rec.state = OrderState::Delivered;
                        o.rec.updated_at = now;
                        st.delivered_tx = st.open_tx.take();
                    }
                    OrderState::HeldForConfirmation => st.open_tx = None,
                    _ => {}
                }
            } else {
                st.open_tx = None;
            }
        }
        s.slots.insert(slot.clone(), st.clone());
        Ok(st)
    }

    fn set_policy(&self, auto_reorder: bool, sent_at: DateTime<Utc>) -> Result<bool, OutboxError> {
        let mut s = self.lock();
        if s.policy_sent_at.is_some_and(|kept| sent_at <= kept) {
            return Ok(false);
        }
        s.policy = Some(auto_reorder);
        s.policy_sent_at = Some(sent_at);
        Ok(true)
    }

    fn policy(&self) -> Result<Option<bool>, OutboxError> {
        Ok(self.lock().policy)
    }

    fn orders(&self) -> Result<Vec<OrderRecord>, OutboxError> {
        Ok(self
            .lock()
            .orders
            .values()
            .rev()
            .map(|o| o.rec.clone())
            .collect())
    }

    fn unsigned_orders(&self) -> Result<Vec<OrderRecord>, OutboxError> {
        Ok(self
            .lock()
            .orders
            .values()
            .filter(|o| o.envelope.is_none())
            .map(|o| o.rec.clone())
            .collect())
    }

    fn store_envelope(
        &self,
        tx_id: &TxId,
        envelope: &[u8],
        payload_sha256: &str,
    ) -> Result<(), OutboxError> {
        let mut s = self.lock();
        if let Some(o) = Self::find_order(&mut s, tx_id) {
            if o.envelope.is_none() {
                o.envelope = Some(envelope.to_vec());
                o.rec.payload_sha256 = Some(payload_sha256.to_owned());
            }
        }
        Ok(())
    }

    fn unreceipted(&self) -> Result<Vec<(TxId, Vec<u8>)>, OutboxError> {
        Ok(self
            .lock()
            .orders
            .values()
            .filter(|o| o.rec.state == OrderState::Pending)
            .filter_map(|o| o.envelope.clone().map(|e| (o.rec.tx_id.clone(), e)))
            .collect())
    }

    fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, OutboxError> {
        let now = self.clock.now();
        let mut s = self.lock();
        let Some(o) = Self::find_order(&mut s, &receipt.tx_id) else {
            return Ok(ReceiptOutcome::UnknownOrder);
        };
        if o.rec.payload_sha256.as_deref() != Some(receipt.tx_sha256.as_str()) {
            return Ok(ReceiptOutcome::Mismatch);
        }
        let Some(next) = o.rec.state.after_receipt(receipt.status) else {
            return Ok(ReceiptOutcome::Unchanged);
        };
        o.rec.state = next;
        o.rec.reason = receipt.reason.clone();
        o.rec.ledger_index = Some(receipt.ledger_index);
        o.rec.updated_at = now;
        let slot = o.rec.slot.clone();
        if next.is_final() {
            if let Some(st) = s.slots.get_mut(&slot) {
                if st.open_tx.as_ref() == Some(&receipt.tx_id) {
                    st.open_tx = None;
                }
            }
        }
        Ok(ReceiptOutcome::Applied(next))
    }

    fn open_orders(&self) -> Result<Vec<OpenOrder>, OutboxError> {
        Ok(self
            .lock()
            .orders
            .values()
            .filter_map(|o| {
                let status = match o.rec.state {
                    OrderState::Accepted => TxStatus::Accepted,
                    OrderState::HeldForConfirmation => TxStatus::HeldForConfirmation,
                    _ => return None,
                };
                Some(OpenOrder {
                    tx_id: o.rec.tx_id.clone(),
                    status,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::ManualClock;

    #[test]
    fn a_resumed_outbox_continues_the_numbering() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let pods = Arc::new(Consumables {
            slots: vec![crate::consumables::SlotConfig {
                slot: SlotId::parse("pods").unwrap(),
                sku: rollcall_shared::Sku::parse("POD-50").unwrap(),
                capacity: 5,
                usage: BTreeMap::from([(rollcall_shared::EventKind::parse("brew").unwrap(), 1)]),
                threshold: 2,
                reorder_qty: 50,
                unit_price: 25,
                currency: rollcall_shared::Currency::parse("EUR").unwrap(),
            }],
            auto_reorder: true,
        });
        let o = MemoryOutbox::resume(OutboxLimits::default(), clock.clone(), 42, 7, 9, 3)
            .with_consumables(pods);
        let ev = || NewEvent {
            kind: rollcall_shared::EventKind::parse("brew").unwrap(),
            qty: 1,
            occurred_at: clock.now(),
            attrs: BTreeMap::new(),
            clock_suspect: false,
        };
        assert_eq!(o.append(ev()).unwrap().get(), 42);
        assert_eq!(o.build_report(10, 100_000).unwrap().unwrap().report_seq, 7);
        assert_eq!(o.next_session().unwrap(), 4);
        for _ in 0..3 {
            o.append(ev()).unwrap();
        }
        let orders = o.orders().unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].counter, 9, "the order counter continues too");
    }
}
