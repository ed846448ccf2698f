//! Orders and fulfilment through the real path: signed transactions committed by the
//! ingest, `orders::change`, the delivery queue and the dispatcher posting to a local
//! webhook receiver that verifies Standard Webhooks signatures. Time is a `ManualClock`.

mod support;

use chrono::Duration;
use rollcall_cloud::delivery::dispatcher::{Channels, Dispatcher, Outcome};
use rollcall_cloud::delivery::webhook::WebhookSender;
use rollcall_cloud::ingest::{self, Checked, Inbound, TxContext};
use rollcall_cloud::metrics::Metrics;
use rollcall_cloud::orders::{self, Action, CatalogueItem, OrderRules, OrdersError, Policy};
use rollcall_shared::dsse::{KeyPair, TRANSACTION_PAYLOAD_TYPE};
use rollcall_shared::payload::{ReorderReason, Transaction, TxStatus};
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, Currency, DeviceId, ManualClock, MemberId, Sku, SlotId, TxId};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use support::*;

struct Shop {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    conn: Connection,
    device: KeyPair,
    cloud: KeyPair,
    rules: OrderRules,
    dispatcher: Dispatcher,
    receiver: Receiver,
    counter: u64,
}

const START: &str = "2026-11-24T08:00:00Z";

async fn shop() -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t(START));
    let receiver = Receiver::start(vec![], Arc::new(clock.clone())).await;
    let mut cfg = config(dir.path(), vec![receiver.webhook("shop")]);
    cfg.outreach.enabled = false;
    cfg.orders.fulfilment_webhook = Some("shop".into());
    cfg.orders.cancel_window_h = 24;
    let conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    add_member(&conn, "m1", "Maria Lopez", Some("UTC"), None, "2025-01-10");
    let device = KeyPair::generate();
    rollcall_cloud::registry::add_device(
        &conn,
        &DeviceId::parse("d1").unwrap(),
        &MemberId::parse("m1").unwrap(),
        &device.public(),
        clock.now(),
    )
    .unwrap();
    let member = MemberId::parse("m1").unwrap();
    let policy = Policy {
        auto_reorder: true,
        ..Policy::default()
    };
    orders::set_policy(&conn, &member, &policy, clock.now()).unwrap();
    let mut rules = OrderRules::from_config(&cfg.orders);
    rules.catalogue = HashMap::from([(
        "POD".to_owned(),
        CatalogueItem {
            unit_price: 100,
            currency: "EUR".into(),
        },
    )]);
    let dispatcher = Dispatcher::new(
        rollcall_cloud::store::open_writer(dir.path()).unwrap(),
        cfg.delivery.clone(),
        Arc::new(clock.clone()),
        Channels {
            webhook: Some(WebhookSender::new(&cfg.delivery, &cfg.outreach.webhooks).unwrap()),
            ..Channels::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    Shop {
        _dir: dir,
        clock,
        conn,
        device,
        cloud: KeyPair::generate(),
        rules,
        dispatcher,
        receiver,
        counter: 0,
    }
}

impl Shop {
    /// The device orders for `slot`; the ingest decides.
    fn order(&mut self, tx_id: &str, slot: &str) -> TxStatus {
        self.order_after(tx_id, slot, None)
    }

    /// As [`Shop::order`], saying the slot's previous order `refilled` arrived since.
    fn order_after(&mut self, tx_id: &str, slot: &str, refilled: Option<&str>) -> TxStatus {
        self.counter += 1;
        let device = DeviceId::parse("d1").unwrap();
        let t = Transaction {
            v: 1,
            tx_id: TxId::parse(tx_id).unwrap(),
            device_id: device.clone(),
            counter: self.counter,
            slot: SlotId::parse(slot).unwrap(),
            sku: Sku::parse("POD").unwrap(),
            qty: 2,
            unit_price: 100,
            currency: Currency::parse("EUR").unwrap(),
            amount: 200,
            reason: ReorderReason {
                level: 1,
                threshold: 2,
            },
            created_at: self.clock.now(),
            refilled: refilled.map(|r| TxId::parse(r).unwrap()),
        };
        let topics = Topics::default();
        let info = rollcall_cloud::registry::device_info(&self.conn, &device).unwrap();
        let msg = Inbound {
            topic: topics.tx(&device),
            payload: self
                .device
                .sign(TRANSACTION_PAYLOAD_TYPE, &t.encode())
                .to_json(),
            received_at: self.clock.now(),
        };
        let checked = ingest::check(&topics, msg, &|_| info.clone());
        assert!(matches!(checked, Checked::Transaction(_)));
        let ctx = TxContext {
            rules: &self.rules,
            key: &self.cloud,
        };
        let out = ingest::commit(&mut self.conn, &[checked], 4096, Some(&ctx)).unwrap();
        out.receipts.last().expect("a receipt").1.status
    }

    fn cancel(&mut self, tx_id: &str) -> Result<String, OrdersError> {
        let now = self.clock.now();
        orders::change(
            &mut self.conn,
            &self.cloud,
            &self.rules,
            tx_id,
            Action::Cancel,
            Some("member asked"),
            now,
        )
        .map(|o| o.status)
    }

    async fn dispatch(&self) {
        while let Outcome::Worked(_) = self.dispatcher.dispatch_once().await.unwrap() {}
    }

    /// `(type, tx_id)` of every fulfilment webhook the shop accepted.
    fn shop_heard(&self) -> Vec<(String, String)> {
        self.receiver
            .accepted()
            .into_iter()
            .map(|r| {
                (
                    r.body["type"].as_str().unwrap().to_owned(),
                    r.body["tx_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn delivery(&self, tx_id: &str) -> (String, Option<String>) {
        self.conn
            .query_row(
                "SELECT status, last_error FROM deliveries WHERE idempotency_key = ?1",
                [format!("order:{tx_id}")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }
}

#[tokio::test]
async fn an_order_cancelled_within_its_window_never_reaches_the_shop() {
    let mut s = shop().await;
    assert_eq!(s.order("tx-a", "pods"), TxStatus::Accepted);
    assert_eq!(s.order("tx-b", "milk"), TxStatus::Accepted);

    // An hour later: nothing has gone to the shop yet, and the member cancels one order.
    s.clock.advance(Duration::hours(1));
    s.dispatch().await;
    assert_eq!(s.shop_heard(), vec![]);
    assert_eq!(s.cancel("tx-a").unwrap(), "cancelled");
    assert_eq!(
        s.delivery("tx-a"),
        ("cancelled".into(), Some("order_cancelled".into()))
    );

    // The window closes: the shop hears of the order that stands, once, and of no other.
    s.clock.advance(Duration::hours(23));
    s.dispatch().await;
    assert_eq!(s.shop_heard(), vec![]);
    s.clock.advance(Duration::seconds(1));
    s.dispatch().await;
    s.clock.advance(Duration::days(3));
    s.dispatch().await;
    assert_eq!(
        s.shop_heard(),
        vec![("order.accepted".to_owned(), "tx-b".to_owned())]
    );
    assert_eq!(s.delivery("tx-b").0, "delivered");
    assert!(matches!(
        s.cancel("tx-b"),
        Err(OrdersError::WindowClosed { .. })
    ));
}

#[tokio::test]
async fn a_cancellation_after_the_shop_was_told_is_refused_and_changes_nothing() {
    let mut s = shop().await;
    assert_eq!(s.order("tx-c", "pods"), TxStatus::Accepted);
    // The dispatcher's clock is past the window's end when it sends; the canceller's is
    // still at the end of the window (clocks of two processes a moment apart).
    s.clock
        .advance(Duration::hours(24) + Duration::milliseconds(1));
    s.dispatch().await;
    assert_eq!(s.shop_heard().len(), 1);
    s.clock.set(t(START) + Duration::hours(24));
    let e = s.cancel("tx-c").unwrap_err();
    assert!(
        matches!(&e, OrdersError::HandedOver { status, .. } if status == "delivered"),
        "{e}"
    );
    let o = orders::list(&s.conn, None, Some("tx-c")).unwrap();
    assert_eq!(
        o[0].status, "accepted",
        "the refused cancellation left no trace"
    );
    let v = rollcall_cloud::ledger::verify(&s.conn, &s.cloud.public(), 1, |_, _| {}).unwrap();
    assert_eq!((v.ok, v.entries), (true, Some(1)));
}

#[tokio::test]
async fn an_order_delivered_or_refilled_before_the_shop_was_told_is_not_shipped_as_well() {
    let mut s = shop().await;
    assert_eq!(s.order("tx-d", "pods"), TxStatus::Accepted);
    assert_eq!(s.order("tx-e", "milk"), TxStatus::Accepted);
    s.clock.advance(Duration::hours(1));
    // Staff mark one order delivered (the goods came from elsewhere) ...
    let now = s.clock.now();
    let o = orders::change(
        &mut s.conn,
        &s.cloud,
        &s.rules,
        "tx-d",
        Action::Deliver,
        None,
        now,
    )
    .unwrap();
    assert_eq!(o.status, "delivered");
    // ... and the device says the other slot was refilled, with its next order.
    s.clock.advance(Duration::hours(1));
    assert_eq!(
        s.order_after("tx-f", "milk", Some("tx-e")),
        TxStatus::Accepted
    );
    for tx in ["tx-d", "tx-e"] {
        assert_eq!(
            s.delivery(tx),
            ("cancelled".into(), Some("order_delivered".into())),
            "{tx}"
        );
    }
    s.clock.advance(Duration::days(2));
    s.dispatch().await;
    assert_eq!(
        s.shop_heard(),
        vec![("order.accepted".to_owned(), "tx-f".to_owned())],
        "only the order still open reaches the shop"
    );
}

#[tokio::test]
async fn an_erased_members_pending_order_still_ships_but_under_the_pseudonym() {
    let mut s = shop().await;
    assert_eq!(s.order("tx-g", "pods"), TxStatus::Accepted);
    s.clock.advance(Duration::hours(1));
    let now = s.clock.now();
    let erased = rollcall_cloud::profile::erase(&mut s.conn, &MemberId::parse("m1").unwrap(), now)
        .unwrap()
        .expect("the member existed");
    s.clock.advance(Duration::days(2));
    s.dispatch().await;
    let heard = s.receiver.accepted();
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].body["tx_id"], "tx-g");
    assert_eq!(heard[0].body["member_id"], erased.pseudonym.as_str());
    let stored: String = s
        .conn
        .query_row(
            "SELECT payload FROM deliveries WHERE idempotency_key = 'order:tx-g'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!stored.contains("\"m1\""), "{stored}");
}
