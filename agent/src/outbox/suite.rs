//! One test suite, run against every [`Outbox`] implementation.
//!
//! A [`Fixture`] opens handles onto one store: for SQLite each `open` is a new connection
//! to the same file (so "reopen" and "second writer" are real); for memory it is the same
//! shared instance (there is nothing to reopen).

use super::*;
use crate::consumables::{OrderState, SlotConfig};
use chrono::Duration;
use rollcall_shared::dsse::{KeyPair, TRANSACTION_PAYLOAD_TYPE};
use rollcall_shared::payload::TxStatus;
use rollcall_shared::{Clock, ManualClock};
use rollcall_shared::{Currency, DeviceId, Sku};
use std::sync::Arc;

trait Fixture {
    fn new(limits: OutboxLimits, clock: ManualClock) -> Self
    where
        Self: Sized,
    {
        Self::with_consumables(limits, clock, None)
    }
    fn with_consumables(
        limits: OutboxLimits,
        clock: ManualClock,
        consumables: Option<Arc<Consumables>>,
    ) -> Self;
    fn open(&self) -> Arc<dyn Outbox>;
}

struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
    limits: OutboxLimits,
    clock: ManualClock,
    consumables: Option<Arc<Consumables>>,
}

impl Fixture for Sqlite {
    fn with_consumables(
        limits: OutboxLimits,
        clock: ManualClock,
        consumables: Option<Arc<Consumables>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        Self {
            _dir: dir,
            path,
            limits,
            clock,
            consumables,
        }
    }
    fn open(&self) -> Arc<dyn Outbox> {
        let o = SqliteOutbox::open(&self.path, self.limits, Arc::new(self.clock.clone())).unwrap();
        Arc::new(match &self.consumables {
            Some(c) => o.with_consumables(c.clone()),
            None => o,
        })
    }
}

struct Memory(Arc<MemoryOutbox>);

impl Fixture for Memory {
    fn with_consumables(
        limits: OutboxLimits,
        clock: ManualClock,
        consumables: Option<Arc<Consumables>>,
    ) -> Self {
        let o = MemoryOutbox::new(limits, Arc::new(clock));
        Self(Arc::new(match consumables {
            Some(c) => o.with_consumables(c),
            None => o,
        }))
    }
    fn open(&self) -> Arc<dyn Outbox> {
        self.0.clone()
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn ev(kind: &str) -> NewEvent {
    NewEvent {
        kind: EventKind::parse(kind).unwrap(),
        qty: 1,
        occurred_at: t0(),
        attrs: BTreeMap::from([("drink".to_owned(), "latte".to_owned())]),
        clock_suspect: false,
    }
}

fn unlimited<F: Fixture>() -> (F, ManualClock) {
    let clock = ManualClock::new(t0());
    (F::new(OutboxLimits::default(), clock.clone()), clock)
}

fn limited<F: Fixture>(max_events: u64, when_full: FullPolicy) -> F {
    F::new(
        OutboxLimits {
            max_events,
            max_bytes: 1 << 30,
            when_full,
        },
        ManualClock::new(t0()),
    )
}

fn seqs(events: &[UsageEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq.get()).collect()
}

fn seq_is_monotonic_across_reopen_and_after_deletes<F: Fixture>() {
    let (f, _) = unlimited::<F>();
    let o = f.open();
    let got: Vec<u64> = (0..3)
        .map(|_| o.append(ev("brew")).unwrap().get())
        .collect();
    assert_eq!(got, [1, 2, 3]);
    let r = o.build_report(100, 1 << 20).unwrap().unwrap();
    assert_eq!(
        o.ack(r.report_seq, AckStatus::Stored).unwrap(),
        AckOutcome::Deleted { events: 3 }
    );
    assert_eq!(o.stats().unwrap().depth, 0);
    drop(o);
    let o = f.open();
    assert_eq!(
        o.append(ev("brew")).unwrap().get(),
        4,
        "seqs are never reused after deletes or reopen"
    );
    let r2 = o.build_report(100, 1 << 20).unwrap().unwrap();
    assert!(
        r2.report_seq > r.report_seq,
        "report seqs are never reused either"
    );
}

fn events_round_trip_exactly<F: Fixture>() {
    let (f, _) = unlimited::<F>();
    let o = f.open();
    let mut e = ev("print_page");
    e.qty = 7;
    e.clock_suspect = true;
    e.attrs.insert("size".into(), "a4".into());
    o.append(e.clone()).unwrap();
    let r = o.build_report(10, 1 << 20).unwrap().unwrap();
    let got = &r.events[0];
    assert_eq!(
        (
            got.kind.as_str(),
            got.qty,
            got.occurred_at,
            &got.attrs,
            got.clock_suspect
        ),
        ("print_page", 7, e.occurred_at, &e.attrs, true)
    );
}

fn build_report_is_stable_across_reopen<F: Fixture>() {
    let (f, _) = unlimited::<F>();
    let o = f.open();
    for _ in 0..5 {
        o.append(ev("brew")).unwrap();
    }
    let r1 = o.build_report(3, 1 << 20).unwrap().unwrap();
    assert_eq!(seqs(&r1.events), [1, 2, 3]);
    drop(o);
    let o = f.open();
    assert_eq!(o.inflight_reports().unwrap(), [r1.report_seq]);
    assert_eq!(
        o.report_events(r1.report_seq).unwrap(),
        r1.events,
        "same events under the same report_seq"
    );
    let r2 = o.build_report(3, 1 << 20).unwrap().unwrap();
    assert_eq!(seqs(&r2.events), [4, 5]);
    assert_eq!(r2.report_seq, r1.report_seq + 1);
    assert!(o.build_report(3, 1 << 20).unwrap().is_none());
    assert_eq!(
        o.inflight_reports().unwrap(),
        [r1.report_seq, r2.report_seq],
        "oldest first"
    );
    assert!(o.report_events(999).unwrap().is_empty());
}

fn reports_respect_the_byte_budget<F: Fixture>() {
    let (f, _) = unlimited::<F>();
    let o = f.open();
    for _ in 0..10 {
        o.append(ev("brew")).unwrap();
    }
    let one = serde_json::to_string(&o.build_report(1, 1 << 20).unwrap().unwrap().events[0])
        .unwrap()
        .len();
    // Room for exactly three bodies and the two commas between them.
    let r = o.build_report(100, 3 * one + 2).unwrap().unwrap();
    assert_eq!(r.events.len(), 3);
    let body = serde_json::to_string(&r.events).unwrap();
    assert_eq!(
        body.len(),
        3 * one + 2 + 2,
        "the budget is the array's content"
    );
    // A budget smaller than one event still makes progress with one event.
    assert_eq!(o.build_report(100, 1).unwrap().unwrap().events.len(), 1);
}

fn ack_deletes_only_that_report<F: Fixture>() {
    let (f, clock) = unlimited::<F>();
    let o = f.open();
    for _ in 0..4 {
        o.append(ev("brew")).unwrap();
    }
    let r1 = o.build_report(2, 1 << 20).unwrap().unwrap();
    let r2 = o.build_report(2, 1 << 20).unwrap().unwrap();
    clock.advance(Duration::seconds(5));
    assert_eq!(
        o.ack(r2.report_seq, AckStatus::Stored).unwrap(),
        AckOutcome::Deleted { events: 2 }
    );
    let s = o.stats().unwrap();
    assert_eq!((s.depth, s.inflight_reports, s.unsent), (2, 1, 0));
    assert_eq!(s.last_ack_at, Some(t0() + Duration::seconds(5)));
    assert_eq!(o.report_events(r1.report_seq).unwrap(), r1.events);
    // Acking again, or a report that never existed, changes nothing.
    assert_eq!(
        o.ack(r2.report_seq, AckStatus::Stored).unwrap(),
        AckOutcome::UnknownReport
    );
    assert_eq!(
        o.ack(4242, AckStatus::Rejected).unwrap(),
        AckOutcome::UnknownReport
    );
    assert_eq!(o.stats().unwrap().rejected_by_cloud, 0);
    assert_eq!(
        o.ack(r1.report_seq, AckStatus::Rejected).unwrap(),
        AckOutcome::Deleted { events: 2 }
    );
    let s = o.stats().unwrap();
    assert_eq!(
        (s.depth, s.bytes, s.inflight_reports, s.rejected_by_cloud),
        (0, 0, 0, 1)
    );
}

fn full_outbox_rejects_under_reject<F: Fixture>() {
    let f = limited::<F>(3, FullPolicy::Reject);
    let o = f.open();
    for _ in 0..3 {
        o.append(ev("brew")).unwrap();
    }
    let e = o.append(ev("brew")).unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::Full {
                limit: "outbox.max_events",
                max: 3
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("outbox.max_events = 3"), "{e}");
    let s = f.open().stats().unwrap();
    assert_eq!(
        (s.depth, s.rejected_full, s.evictions),
        (3, 1, 0),
        "the refusal is counted durably"
    );
    // Acks make room again, and the refused event did not use up a seq.
    let r = o.build_report(1, 1 << 20).unwrap().unwrap();
    o.ack(r.report_seq, AckStatus::Stored).unwrap();
    assert_eq!(o.append(ev("brew")).unwrap().get(), 4);
}

fn drop_oldest_evicts_unsent_events_but_never_inflight_ones<F: Fixture>() {
    let f = limited::<F>(3, FullPolicy::DropOldest);
    let o = f.open();
    o.append(ev("brew")).unwrap();
    o.append(ev("brew")).unwrap();
    let r = o.build_report(1, 1 << 20).unwrap().unwrap();
    assert_eq!(seqs(&r.events), [1]);
    o.append(ev("brew")).unwrap();
    assert_eq!(o.append(ev("brew")).unwrap().get(), 4);
    let s = o.stats().unwrap();
    assert_eq!((s.depth, s.evictions), (3, 1));
    assert_eq!(
        o.report_events(r.report_seq).unwrap(),
        r.events,
        "the in-flight event survives"
    );
    let rest = o.build_report(10, 1 << 20).unwrap().unwrap();
    assert_eq!(
        seqs(&rest.events),
        [3, 4],
        "seq 2, the oldest unsent, was evicted"
    );
    // Everything is in flight now: nothing may be evicted, so the new event is refused.
    let e = o.append(ev("brew")).unwrap_err();
    assert!(matches!(e, OutboxError::Full { .. }), "{e}");
    let s = o.stats().unwrap();
    assert_eq!((s.depth, s.evictions, s.rejected_full), (3, 1, 1));
}

fn drop_oldest_evicts_nothing_when_the_new_event_would_not_fit_anyway<F: Fixture>() {
    let clock = ManualClock::new(t0());
    let big = || {
        let mut e = ev("brew");
        e.attrs.insert("note".into(), "x".repeat(120));
        e
    };
    let probe = F::new(OutboxLimits::default(), clock.clone());
    let p = probe.open();
    p.append(big()).unwrap();
    let big_size = p.stats().unwrap().bytes;
    p.append(ev("brew")).unwrap();
    let small_size = p.stats().unwrap().bytes - big_size;
    let f = F::new(
        OutboxLimits {
            max_events: 100,
            // A big in-flight event and a small unsent one fit; a second big one never
            // does, even with every unsent event evicted.
            max_bytes: big_size + small_size + 1,
            when_full: FullPolicy::DropOldest,
        },
        clock,
    );
    let o = f.open();
    o.append(big()).unwrap();
    let r = o.build_report(1, 1 << 20).unwrap().unwrap();
    assert_eq!(seqs(&r.events), [1]);
    o.append(ev("brew")).unwrap(); // seq 2, unsent
    let e = o.append(big()).unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::Full {
                limit: "outbox.max_bytes",
                ..
            }
        ),
        "{e}"
    );
    let s = o.stats().unwrap();
    assert_eq!(
        (s.depth, s.unsent, s.evictions, s.rejected_full),
        (2, 1, 0, 1),
        "the refused event cost no other event: {s:?}"
    );
    // A small event still fits by evicting the unsent one, as before.
    assert_eq!(o.append(ev("brew")).unwrap().get(), 3);
    let s = o.stats().unwrap();
    assert_eq!((s.depth, s.unsent, s.evictions), (2, 1, 1), "{s:?}");
}

fn the_byte_limit_is_enforced<F: Fixture>() {
    let clock = ManualClock::new(t0());
    let probe = F::new(OutboxLimits::default(), clock.clone());
    probe.open().append(ev("brew")).unwrap();
    let size = probe.open().stats().unwrap().bytes;
    let f = F::new(
        OutboxLimits {
            max_events: 100,
            max_bytes: size * 2 + 1,
            when_full: FullPolicy::Reject,
        },
        clock,
    );
    let o = f.open();
    o.append(ev("brew")).unwrap();
    o.append(ev("brew")).unwrap();
    let e = o.append(ev("brew")).unwrap_err();
    assert!(
        matches!(
            e,
            OutboxError::Full {
                limit: "outbox.max_bytes",
                ..
            }
        ),
        "{e}"
    );
}

fn concurrent_writers_get_distinct_seqs<F: Fixture>() {
    let (f, _) = unlimited::<F>();
    let handles: Vec<Arc<dyn Outbox>> = (0..2).map(|_| f.open()).collect();
    let per_writer = 100;
    let threads: Vec<_> = handles
        .into_iter()
        .map(|o| {
            std::thread::spawn(move || {
                (0..per_writer)
                    .map(|_| o.append(ev("brew")).unwrap().get())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (1..=2 * per_writer).collect();
    assert_eq!(all, expected, "every seq exactly once");
    assert_eq!(f.open().stats().unwrap().depth, 2 * per_writer);
}

fn stats_report_unsent_inflight_and_ages<F: Fixture>() {
    let (f, clock) = unlimited::<F>();
    let o = f.open();
    assert_eq!(o.stats().unwrap(), OutboxStats::default());
    o.append(ev("brew")).unwrap();
    clock.advance(Duration::seconds(10));
    o.append(ev("brew")).unwrap();
    o.append(ev("brew")).unwrap();
    o.build_report(1, 1 << 20).unwrap();
    let s = o.stats().unwrap();
    assert_eq!((s.depth, s.unsent, s.inflight_reports), (3, 2, 1));
    assert_eq!(s.oldest_unacked_recorded_at, Some(t0()));
    assert_eq!(
        s.oldest_unsent_recorded_at,
        Some(t0() + Duration::seconds(10))
    );
    assert!(s.bytes > 0);
    assert_eq!(s.last_ack_at, None);
}

fn session_counter_and_daemon_state_persist<F: Fixture>() {
    let (f, clock) = unlimited::<F>();
    let o = f.open();
    assert_eq!(o.daemon_state().unwrap(), None);
    assert_eq!(o.next_session().unwrap(), 1);
    assert_eq!(o.next_session().unwrap(), 2);
    let st = DaemonState {
        state: ConnectionState::Connected,
        pid: 42,
        at: clock.now(),
        session: 2,
        reconnects: 1,
    };
    o.set_daemon_state(&st).unwrap();
    drop(o);
    let o = f.open();
    assert_eq!(o.next_session().unwrap(), 3);
    assert_eq!(o.daemon_state().unwrap(), Some(st));
}

fn display_messages_are_kept_once_newest_first_and_bounded<F: Fixture>() {
    let (f, _clock) = unlimited::<F>();
    let o = f.open();
    let msg = |i: usize| rollcall_shared::payload::DeviceMessage {
        id: format!("outreach:{i}"),
        title: format!("t{i}"),
        body: "hello".into(),
    };
    assert!(o.store_message(&msg(1)).unwrap());
    assert!(
        !o.store_message(&msg(1)).unwrap(),
        "a re-sent message is kept once"
    );
    assert!(o.store_message(&msg(2)).unwrap());
    drop(o);
    let o = f.open();
    let kept = o.messages().unwrap();
    assert_eq!(
        kept.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["outreach:2", "outreach:1"]
    );
    for i in 3..=(MAX_STORED_MESSAGES + 10) {
        o.store_message(&msg(i)).unwrap();
    }
    let kept = o.messages().unwrap();
    assert_eq!(kept.len(), MAX_STORED_MESSAGES);
    assert_eq!(kept[0].id, format!("outreach:{}", MAX_STORED_MESSAGES + 10));
}

fn pods(auto_reorder: bool) -> Arc<Consumables> {
    Arc::new(Consumables {
        slots: vec![SlotConfig {
            slot: SlotId::parse("pods").unwrap(),
            sku: Sku::parse("POD-50").unwrap(),
            capacity: 5,
            usage: BTreeMap::from([(EventKind::parse("brew").unwrap(), 1)]),
            threshold: 2,
            reorder_qty: 50,
            unit_price: 25,
            currency: Currency::parse("EUR").unwrap(),
        }],
        auto_reorder,
    })
}

fn with_pods<F: Fixture>(auto_reorder: bool, limits: OutboxLimits) -> (F, ManualClock) {
    let clock = ManualClock::new(t0());
    (
        F::with_consumables(limits, clock.clone(), Some(pods(auto_reorder))),
        clock,
    )
}

fn brew(o: &dyn Outbox, n: usize) {
    for _ in 0..n {
        o.append(ev("brew")).unwrap();
    }
}

fn slot(name: &str) -> SlotId {
    SlotId::parse(name).unwrap()
}

/// Signs the order as the uplink does; returns the payload's hex SHA-256.
fn sign(o: &dyn Outbox, rec: &crate::consumables::OrderRecord) -> String {
    use sha2::{Digest, Sha256};
    let body = rec.transaction(&DeviceId::parse("dev-1").unwrap()).encode();
    let sha = hex::encode(Sha256::digest(&body));
    let env = KeyPair::from_seed([7; 32])
        .sign(TRANSACTION_PAYLOAD_TYPE, &body)
        .to_json();
    o.store_envelope(&rec.tx_id, &env, &sha).unwrap();
    sha
}

fn receipt(rec_id: &TxId, sha: &str, status: TxStatus, reason: Option<&str>) -> Receipt {
    Receipt {
        tx_id: rec_id.clone(),
        tx_sha256: sha.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        ledger_index: 7,
        cancel_until: None,
        at: t0(),
    }
}

fn usage_drains_a_slot_and_orders_exactly_once<F: Fixture>() {
    let (f, _) = with_pods::<F>(true, OutboxLimits::default());
    let o = f.open();
    assert_eq!(o.slots().unwrap()[0].level, 5, "a slot starts full");
    brew(o.as_ref(), 3);
    assert_eq!(o.slots().unwrap()[0].level, 2);
    assert!(
        o.orders().unwrap().is_empty(),
        "2 is not below the threshold 2"
    );
    brew(o.as_ref(), 1);
    let orders = o.orders().unwrap();
    assert_eq!(orders.len(), 1);
    let rec = &orders[0];
    assert_eq!(
        (rec.counter, rec.qty, rec.level, rec.threshold, rec.state),
        (1, 50, 1, 2, OrderState::Pending)
    );
    assert_eq!(rec.transaction(&DeviceId::parse("d").unwrap()).amount, 1250);
    brew(o.as_ref(), 5);
    let o = f.open();
    assert_eq!(
        o.orders().unwrap().len(),
        1,
        "one open order per slot, across reopen"
    );
    let st = &o.slots().unwrap()[0];
    assert_eq!((st.level, st.armed), (-4, false));
    assert_eq!(st.open_tx.as_ref(), Some(&rec.tx_id));
    assert_eq!(o.unsigned_orders().unwrap().len(), 1);
    assert!(
        o.unreceipted().unwrap().is_empty(),
        "unsigned orders are not sent"
    );
}

fn no_order_without_opt_in_and_a_pushed_policy_wins<F: Fixture>() {
    let (f, _) = with_pods::<F>(false, OutboxLimits::default());
    let o = f.open();
    assert_eq!(o.policy().unwrap(), None);
    brew(o.as_ref(), 4);
    assert!(o.orders().unwrap().is_empty());
    assert!(o.set_policy(true, t0()).unwrap());
    let o = f.open();
    assert_eq!(o.policy().unwrap(), Some(true));
    brew(o.as_ref(), 1);
    assert_eq!(
        o.orders().unwrap().len(),
        1,
        "the still-armed low slot orders on the next use"
    );

    let (f, _) = with_pods::<F>(true, OutboxLimits::default());
    let o = f.open();
    assert!(o.set_policy(false, t0()).unwrap());
    brew(o.as_ref(), 5);
    assert!(
        o.orders().unwrap().is_empty(),
        "the cloud's opt-out beats the config"
    );
}

fn a_policy_sent_no_later_than_the_kept_one_is_ignored_even_after_reopen<F: Fixture>() {
    let (f, _) = with_pods::<F>(false, OutboxLimits::default());
    let o = f.open();
    let at = |s: i64| t0() + Duration::seconds(s);
    assert!(o.set_policy(false, at(20)).unwrap());
    let o = f.open();
    assert!(!o.set_policy(true, at(10)).unwrap(), "older");
    assert!(!o.set_policy(true, at(20)).unwrap(), "same time");
    assert_eq!(o.policy().unwrap(), Some(false));
    assert!(o
        .set_policy(true, at(20) + Duration::microseconds(1))
        .unwrap());
    assert_eq!(f.open().policy().unwrap(), Some(true));
}

fn receipts_move_orders_forward_and_a_refill_rearms<F: Fixture>() {
    let (f, _) = with_pods::<F>(true, OutboxLimits::default());
    let o = f.open();
    brew(o.as_ref(), 4);
    let rec = o.orders().unwrap().remove(0);
    let sha = sign(o.as_ref(), &rec);
    let first = o.unreceipted().unwrap();
    assert_eq!(first.len(), 1);
    // Signing again never replaces the stored bytes.
    o.store_envelope(&rec.tx_id, b"other", "00").unwrap();
    assert_eq!(o.unreceipted().unwrap(), first);
    assert!(o.unsigned_orders().unwrap().is_empty());
    assert_eq!(
        o.apply_receipt(&receipt(&rec.tx_id, "ff", TxStatus::Accepted, None))
            .unwrap(),
        ReceiptOutcome::Mismatch
    );
    assert_eq!(
        o.apply_receipt(&receipt(
            &TxId::parse("tx-x").unwrap(),
            &sha,
            TxStatus::Accepted,
            None
        ))
        .unwrap(),
        ReceiptOutcome::UnknownOrder
    );
    assert_eq!(
        o.apply_receipt(&receipt(&rec.tx_id, &sha, TxStatus::Accepted, None))
            .unwrap(),
        ReceiptOutcome::Applied(OrderState::Accepted)
    );
    assert_eq!(
        o.apply_receipt(&receipt(&rec.tx_id, &sha, TxStatus::Accepted, None))
            .unwrap(),
        ReceiptOutcome::Unchanged
    );
    assert!(o.unreceipted().unwrap().is_empty());
    brew(o.as_ref(), 1);
    assert_eq!(
        o.orders().unwrap().len(),
        1,
        "accepted and undelivered is still open"
    );
    let st = o.refill(&slot("pods"), None).unwrap();
    assert_eq!((st.level, st.armed, st.open_tx), (5, true, None));
    let o = f.open();
    assert_eq!(o.orders().unwrap()[0].state, OrderState::Delivered);
    brew(o.as_ref(), 3);
    assert_eq!(o.orders().unwrap().len(), 1);
    brew(o.as_ref(), 1);
    let orders = o.orders().unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].counter, 2, "newest first, counters grow");
    assert_eq!(
        orders[0].refilled.as_ref(),
        Some(&rec.tx_id),
        "the next order reports the refill"
    );
    assert_eq!(
        orders[0]
            .transaction(&DeviceId::parse("d").unwrap())
            .refilled,
        Some(rec.tx_id.clone())
    );
    assert!(matches!(
        o.refill(&slot("ink"), None),
        Err(OutboxError::UnknownSlot(_))
    ));
    let st = o.refill(&slot("pods"), Some(1)).unwrap();
    assert_eq!(st.level, 2);
    assert_eq!(
        st.open_tx,
        Some(orders[0].tx_id.clone()),
        "a pending order stays open"
    );
}

fn a_rejection_frees_the_slot_but_it_orders_again_only_after_a_refill<F: Fixture>() {
    let (f, _) = with_pods::<F>(true, OutboxLimits::default());
    let o = f.open();
    brew(o.as_ref(), 4);
    let rec = o.orders().unwrap().remove(0);
    let sha = sign(o.as_ref(), &rec);
    o.apply_receipt(&receipt(
        &rec.tx_id,
        &sha,
        TxStatus::Rejected,
        Some("over_order_limit"),
    ))
    .unwrap();
    let got = o.orders().unwrap().remove(0);
    assert_eq!(
        (got.state, got.reason.as_deref(), got.ledger_index),
        (OrderState::Rejected, Some("over_order_limit"), Some(7))
    );
    assert_eq!(o.slots().unwrap()[0].open_tx, None);
    brew(o.as_ref(), 2);
    assert_eq!(o.orders().unwrap().len(), 1, "not re-ordered on every use");
    o.refill(&slot("pods"), None).unwrap();
    brew(o.as_ref(), 4);
    assert_eq!(o.orders().unwrap().len(), 2);
}

fn open_orders_are_those_with_a_receipt_and_no_final_status_oldest_first<F: Fixture>() {
    let (f, _) = with_pods::<F>(true, OutboxLimits::default());
    let o = f.open();
    let listed = |o: &dyn Outbox| -> Vec<(TxId, TxStatus)> {
        o.open_orders()
            .unwrap()
            .into_iter()
            .map(|x| (x.tx_id, x.status))
            .collect()
    };
    brew(o.as_ref(), 4);
    let first = o.orders().unwrap().remove(0);
    assert!(listed(o.as_ref()).is_empty(), "pending: its tx is re-sent");
    let first_sha = sign(o.as_ref(), &first);
    assert!(listed(o.as_ref()).is_empty(), "signed, still no receipt");
    o.apply_receipt(&receipt(
        &first.tx_id,
        &first_sha,
        TxStatus::HeldForConfirmation,
        Some("price_changed"),
    ))
    .unwrap();
    let o = f.open();
    assert_eq!(
        listed(o.as_ref()),
        vec![(first.tx_id.clone(), TxStatus::HeldForConfirmation)]
    );
    // A refill frees the slot from a held order, but the order is still open.
    o.refill(&slot("pods"), None).unwrap();
    brew(o.as_ref(), 4);
    let second = o.orders().unwrap().remove(0);
    assert_ne!(second.tx_id, first.tx_id);
    let second_sha = sign(o.as_ref(), &second);
    o.apply_receipt(&receipt(
        &second.tx_id,
        &second_sha,
        TxStatus::Accepted,
        None,
    ))
    .unwrap();
    assert_eq!(
        listed(f.open().as_ref()),
        vec![
            (first.tx_id.clone(), TxStatus::HeldForConfirmation),
            (second.tx_id.clone(), TxStatus::Accepted),
        ]
    );
    // The held one confirmed, then cancelled; the accepted one delivered by a refill.
    o.apply_receipt(&receipt(&first.tx_id, &first_sha, TxStatus::Accepted, None))
        .unwrap();
    assert_eq!(
        listed(o.as_ref()),
        vec![
            (first.tx_id.clone(), TxStatus::Accepted),
            (second.tx_id.clone(), TxStatus::Accepted),
        ]
    );
    o.apply_receipt(&receipt(
        &first.tx_id,
        &first_sha,
        TxStatus::Cancelled,
        None,
    ))
    .unwrap();
    assert_eq!(
        listed(o.as_ref()),
        vec![(second.tx_id.clone(), TxStatus::Accepted)]
    );
    o.refill(&slot("pods"), None).unwrap();
    assert!(listed(f.open().as_ref()).is_empty());
}

fn orders_are_never_evicted_and_not_counted_against_limits<F: Fixture>() {
    let (f, _) = with_pods::<F>(
        true,
        OutboxLimits {
            max_events: 2,
            max_bytes: 1 << 30,
            when_full: FullPolicy::DropOldest,
        },
    );
    let o = f.open();
    brew(o.as_ref(), 10);
    assert_eq!(o.stats().unwrap().depth, 2);
    assert_eq!(o.orders().unwrap().len(), 1);
    assert_eq!(o.slots().unwrap()[0].level, -5);
}

macro_rules! outbox_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test::<super::Sqlite>() })*
        }
        mod memory {
            $(#[test] fn $test() { super::$test::<super::Memory>() })*
        }
    };
}

outbox_suite!(
    seq_is_monotonic_across_reopen_and_after_deletes,
    events_round_trip_exactly,
    build_report_is_stable_across_reopen,
    reports_respect_the_byte_budget,
    ack_deletes_only_that_report,
    full_outbox_rejects_under_reject,
    drop_oldest_evicts_unsent_events_but_never_inflight_ones,
    drop_oldest_evicts_nothing_when_the_new_event_would_not_fit_anyway,
    the_byte_limit_is_enforced,
    concurrent_writers_get_distinct_seqs,
    stats_report_unsent_inflight_and_ages,
    session_counter_and_daemon_state_persist,
    display_messages_are_kept_once_newest_first_and_bounded,
    usage_drains_a_slot_and_orders_exactly_once,
    no_order_without_opt_in_and_a_pushed_policy_wins,
    a_policy_sent_no_later_than_the_kept_one_is_ignored_even_after_reopen,
    receipts_move_orders_forward_and_a_refill_rearms,
    a_rejection_frees_the_slot_but_it_orders_again_only_after_a_refill,
    orders_are_never_evicted_and_not_counted_against_limits,
    open_orders_are_those_with_a_receipt_and_no_final_status_oldest_first,
);
