//! A member's whole record for support staff (`GET /api/v1/members/{id}`, the console's
//! member card), the data access export (`GET /api/v1/members/{id}/export`) and erasure
//! (`DELETE /api/v1/members/{id}`).
//!
//! Erasure removes personal data and keeps what the business may keep without it:
//! - **Removed**: name (replaced by `erased`), phone, e-mail, time zone and language; the
//!   rendered text of every outreach message (it holds the name) and the payload and
//!   address of every delivery made for the member (pending ones are cancelled); opt-out
//!   records (an erased member gets no outreach at all); recorded incoming calls (they
//!   hold the phone number); messages about the member in the built-in webhook sink.
//! - **Kept under a new pseudonymous id** (`x-` and 16 random hex digits): usage events,
//!   scores and state transitions, devices and their keys, orders and spending policy, so
//!   that engagement aggregates stay right.
//! - **Kept as they are**: ledger entries (append-only and signed; they hold the device
//!   id, the old member id, SKUs and amounts but no name, phone or e-mail, and rewriting
//!   them would break the proof the ledger exists for; through an order they link the
//!   pseudonym to the old id, so only `admin` reads entries over HTTP), and the audit log
//!   (who looked at the member, when; required to answer for access later), whose search
//!   terms and caller numbers for the member the API redacts right after this erasure
//!   ([`crate::audit::AuditLog::redact_member`]).

use crate::outreach::context::{summarise_usage, UsageSummary};
use crate::registry::{ms_to_rfc3339, show_member, MemberView};
use crate::scoring::summary::{date_of, local_day};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rollcall_shared::MemberId;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// Days in the usage chart.
pub const HISTORY_DAYS: i32 = 90;

/// Why a member record could not be read or erased.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
    /// Reading part of the record failed.
    #[error("{0}")]
    Part(String),
}

macro_rules! part_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ProfileError {
            fn from(e: $t) -> Self {
                ProfileError::Part(e.to_string())
            }
        }
    )*};
}
part_error!(
    crate::registry::RegistryError,
    crate::outreach::OutreachError,
    crate::orders::OrdersError,
    crate::scoring::ScoringError
);

/// One day of the usage chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayUsage {
    /// Local date of the member.
    pub day: String,
    /// Uses that day (sum of quantities).
    pub total: u64,
    /// By kind.
    pub by_kind: BTreeMap<String, u64>,
}

/// The member's daily usage over the last [`HISTORY_DAYS`] days, every day present.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// The time zone the days are in.
    pub tz: String,
    /// The kinds seen, most used first.
    pub kinds: Vec<String>,
    /// Oldest first.
    pub days: Vec<DayUsage>,
}

/// An order with whether it can still be cancelled.
#[derive(Debug, Clone, Serialize)]
pub struct OrderLine {
    /// The order.
    #[serde(flatten)]
    pub order: crate::orders::OrderView,
    /// True while the cancellation window is open.
    pub cancellable: bool,
}

/// A consumable slot: its level as the device last reported it, and its orders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consumable {
    /// Device.
    pub device_id: String,
    /// Slot on the device.
    pub slot: String,
    /// Article.
    pub sku: String,
    /// Units left, as the device last reported (null: it never reported levels).
    pub level: Option<i64>,
    /// Units when full.
    pub capacity: Option<u32>,
    /// The latest order's status.
    pub last_order_status: Option<String>,
    /// When it was decided.
    pub last_order_at: Option<String>,
    /// Orders for this slot in all.
    pub orders: u64,
}

impl Consumable {
    fn new(device_id: &str, slot: &str, sku: &str) -> Self {
        Self {
            device_id: device_id.to_owned(),
            slot: slot.to_owned(),
            sku: sku.to_owned(),
            level: None,
            capacity: None,
            last_order_status: None,
            last_order_at: None,
            orders: 0,
        }
    }
}

/// The consumable slots of a member's devices: levels from each device's last status,
/// merged with the slots' orders (oldest first in `orders`).
pub fn consumables(
    devices: &[crate::registry::DeviceView],
    orders: &[crate::orders::OrderView],
) -> Vec<Consumable> {
    let mut out: BTreeMap<(String, String), Consumable> = BTreeMap::new();
    for d in devices {
        let Some(levels) = d.health.as_ref().and_then(|h| h.get("consumables")) else {
            continue;
        };
        let Ok(levels) =
            serde_json::from_value::<Vec<rollcall_shared::payload::SlotLevel>>(levels.clone())
        else {
            continue;
        };
        for l in levels {
            let mut c = Consumable::new(&d.id, l.slot.as_str(), l.sku.as_str());
            c.level = Some(l.level);
            c.capacity = Some(l.capacity);
            out.insert((d.id.clone(), l.slot.as_str().to_owned()), c);
        }
    }
    for o in orders.iter().rev() {
        let c = out
            .entry((o.device_id.clone(), o.slot.clone()))
            .or_insert_with(|| Consumable::new(&o.device_id, &o.slot, &o.sku));
        c.orders += 1;
        c.last_order_status = Some(o.status.clone());
        c.last_order_at = Some(o.decided_at.clone());
    }
    out.into_values().collect()
}

/// What the member agreed to.
#[derive(Debug, Clone, Serialize)]
pub struct Consent {
    /// Automatic reordering and limits.
    pub auto_reorder: bool,
    /// Most per order (minor units).
    pub limit_per_order: Option<i64>,
    /// Most per 30 days (minor units).
    pub limit_30d: Option<i64>,
    /// Opt-outs of outreach: channel (`*`: all), category, when, how.
    pub opt_outs: Vec<OptOut>,
}

/// One opt-out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptOut {
    /// Channel, or `*`.
    pub channel: String,
    /// Category.
    pub category: String,
    /// When.
    pub at: String,
    /// How (`link`, `cli`, ...).
    pub source: String,
}

/// Everything about a member that support staff see.
#[derive(Debug, Clone, Serialize)]
pub struct MemberDetail {
    /// Profile, devices, usage totals, score, reasons, transitions.
    #[serde(flatten)]
    pub member: MemberView,
    /// Preferred language (for greetings).
    pub lang: Option<String>,
    /// Whether personal data was erased.
    pub erased: bool,
    /// Usage summary: this and last month, streaks, favourite, days silent.
    pub usage_summary: UsageSummary,
    /// Daily usage over the last 90 days, by kind.
    pub history: History,
    /// Orders, newest first.
    pub orders: Vec<OrderLine>,
    /// Consumable slots seen in orders.
    pub consumables: Vec<Consumable>,
    /// Outreach: sent, held, skipped, cancelled, with reasons; newest first.
    pub outreach: Vec<crate::outreach::view::OutreachView>,
    /// Consent.
    pub consent: Consent,
    /// Recent incoming calls from the member's number.
    pub calls: Vec<crate::telephony::CallView>,
}

/// Reads a member's detail as of `now`, or `None` if there is no such member.
pub fn detail(
    conn: &Connection,
    id: &MemberId,
    business_tz: Tz,
    now: DateTime<Utc>,
) -> Result<Option<MemberDetail>, ProfileError> {
    let Some(member) = show_member(conn, id)? else {
        return Ok(None);
    };
    let (lang, erased_ms): (Option<String>, Option<i64>) = conn.query_row(
        "SELECT lang, erased_ms FROM members WHERE id = ?1",
        [id.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let tz: Tz = member
        .tz
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(business_tz);
    let usage_summary = summarise_usage(conn, id.as_str(), tz, now, u64::MAX)?;
    let history = history(conn, id.as_str(), tz, now)?;
    let now_ms = now.timestamp_millis();
    let orders: Vec<OrderLine> = crate::orders::list(conn, Some(id.as_str()), None)?
        .into_iter()
        .map(|o| {
            let cancellable = o.status == "accepted"
                && o.cancel_until
                    .as_deref()
                    .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
                    .is_some_and(|c| c.timestamp_millis() > now_ms);
            OrderLine {
                order: o,
                cancellable,
            }
        })
        .collect();
    let views: Vec<crate::orders::OrderView> = orders.iter().map(|o| o.order.clone()).collect();
    let consumables = consumables(&member.devices, &views);
    let outreach = crate::outreach::view::list(conn, Some(id.as_str()), 200)?;
    let policy = crate::orders::policy(conn, id.as_str())?;
    let mut st = conn.prepare_cached(
        "SELECT channel, category, opted_out_ms, source FROM consent WHERE member_id = ?1 ORDER BY channel, category",
    )?;
    let opt_outs = st
        .query_map([id.as_str()], |r| {
            Ok(OptOut {
                channel: r.get(0)?,
                category: r.get(1)?,
                at: ms_to_rfc3339(r.get(2)?),
                source: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let calls = crate::telephony::recent_calls(conn, Some(id.as_str()), 20)?;
    Ok(Some(MemberDetail {
        member,
        lang,
        erased: erased_ms.is_some(),
        usage_summary,
        history,
        orders,
        consumables,
        outreach,
        consent: Consent {
            auto_reorder: policy.auto_reorder,
            limit_per_order: policy.limit_per_order,
            limit_30d: policy.limit_30d,
            opt_outs,
        },
        calls,
    }))
}

/// Daily usage by kind over the last [`HISTORY_DAYS`] local days up to `now`. Events
/// whose device clock was not trustworthy count on the day they were received.
pub fn history(
    conn: &Connection,
    member_id: &str,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<History, rusqlite::Error> {
    let today = local_day(now.timestamp_millis(), tz);
    let first = today - HISTORY_DAYS + 1;
    // A day before the first local day covers every time zone.
    let since_ms = (first as i64 - 1) * 86_400_000;
    let mut st = conn.prepare_cached(
        "SELECT kind, qty, CASE WHEN clock_suspect = 1 THEN received_ms ELSE occurred_ms END
         FROM events WHERE member_id = ?1
           AND ((clock_suspect = 0 AND occurred_ms >= ?2 AND occurred_ms <= ?3)
             OR (clock_suspect = 1 AND received_ms >= ?2 AND received_ms <= ?3))",
    )?;
    let mut per_day: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); HISTORY_DAYS as usize];
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = st.query(params![member_id, since_ms, now.timestamp_millis()])?;
    while let Some(r) = rows.next()? {
        let kind: String = r.get(0)?;
        let qty = r.get::<_, i64>(1)?.max(0) as u64;
        let day = local_day(r.get(2)?, tz);
        if day < first || day > today {
            continue;
        }
        *per_day[(day - first) as usize]
            .entry(kind.clone())
            .or_default() += qty;
        *kinds.entry(kind).or_default() += qty;
    }
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(History {
        tz: tz.name().to_owned(),
        kinds: kinds.into_iter().map(|(k, _)| k).collect(),
        days: per_day
            .into_iter()
            .enumerate()
            .map(|(i, by_kind)| DayUsage {
                day: date_of(first + i as i32).format("%Y-%m-%d").to_string(),
                total: by_kind.values().sum(),
                by_kind,
            })
            .collect(),
    })
}

/// Removes what a role may not see from a member record (or anything holding member
/// data) serialised as JSON: names, phone numbers, e-mail addresses, outreach texts,
/// caller numbers, greetings.
pub fn redact_personal(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for k in [
                "name", "phone", "email", "body", "subject", "from", "greeting",
            ] {
                map.remove(k);
            }
            for (_, child) in map.iter_mut() {
                redact_personal(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_personal),
        _ => {}
    }
}

/// Everything held about a member (the data access request), or `None`. `conn` reads the
/// store and `audit` the audit log ([`crate::audit::open_reader`]).
pub fn export(
    conn: &Connection,
    audit: &Connection,
    id: &MemberId,
    business_tz: Tz,
    now: DateTime<Utc>,
) -> Result<Option<serde_json::Value>, ProfileError> {
    let Some(d) = detail(conn, id, business_tz, now)? else {
        return Ok(None);
    };
    let mut st = conn.prepare_cached(
        "SELECT device_id, seq, kind, qty, occurred_ms, received_ms, attrs, clock_suspect
         FROM events WHERE member_id = ?1 ORDER BY occurred_ms, device_id, seq",
    )?;
    let events: Vec<serde_json::Value> = st
        .query_map([id.as_str()], |r| {
            let attrs: Option<String> = r.get(6)?;
            Ok(serde_json::json!({
                "device_id": r.get::<_, String>(0)?,
                "seq": r.get::<_, i64>(1)?,
                "kind": r.get::<_, String>(2)?,
                "qty": r.get::<_, i64>(3)?,
                "occurred_at": ms_to_rfc3339(r.get(4)?),
                "received_at": ms_to_rfc3339(r.get(5)?),
                "attrs": attrs.and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok()),
                "clock_suspect": r.get::<_, bool>(7)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    let transitions = crate::scoring::persist::transitions(conn, id.as_str(), u32::MAX)?;
    let audit = crate::audit::list(audit, Some(id.as_str()), u32::MAX)?;
    Ok(Some(serde_json::json!({
        "exported_at": now.to_rfc3339(),
        "member": d,
        "events": events,
        "transitions": transitions,
        "access_log": audit,
    })))
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Erased {
    /// The id the member had.
    pub id: String,
    /// The pseudonymous id their usage is kept under.
    pub pseudonym: String,
    /// Usage events kept under it.
    pub events_kept: u64,
    /// Outreach messages whose text was removed.
    pub messages_redacted: u64,
    /// Deliveries whose payload was removed (pending ones cancelled).
    pub deliveries_redacted: u64,
    /// Incoming calls removed.
    pub calls_removed: u64,
    /// Messages about the member removed from the built-in webhook sink.
    pub sink_messages_removed: u64,
    /// Audit rows whose search terms or caller number were redacted (filled in by the
    /// API after the store's erasure: the audit log is a file of its own).
    pub audit_rows_redacted: u64,
}

/// Erases a member's personal data (see the module doc); `None` if there is no such
/// member. Erasing an erased member again changes nothing and returns `None`.
pub fn erase(
    conn: &mut Connection,
    id: &MemberId,
    now: DateTime<Utc>,
) -> Result<Option<Erased>, ProfileError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let exists: Option<Option<i64>> = tx
        .query_row(
            "SELECT erased_ms FROM members WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    match exists {
        None | Some(Some(_)) => return Ok(None),
        Some(None) => {}
    }
    let mut rnd = [0u8; 8];
    getrandom::getrandom(&mut rnd).map_err(|e| ProfileError::Part(e.to_string()))?;
    let pseudonym = format!("x-{}", hex::encode(rnd));
    let now_ms = now.timestamp_millis();
    let old = id.as_str();
    // The new row first, so that the children can move to it under the foreign keys.
    tx.execute(
        "INSERT INTO members (id, name, phone, email, tz, plan, joined_ms, created_ms, lang, erased_ms)
         SELECT ?2, 'erased', NULL, NULL, NULL, plan, joined_ms, created_ms, NULL, ?3 FROM members WHERE id = ?1",
        params![old, pseudonym, now_ms],
    )?;
    let deliveries: Vec<i64> = tx
        .prepare(
            "SELECT delivery_id FROM outreach WHERE member_id = ?1 AND delivery_id IS NOT NULL",
        )?
        .query_map([old], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for d in &deliveries {
        tx.execute(
            "UPDATE deliveries SET payload = '{}', target = 'erased', quiet = NULL,
                 status = CASE WHEN status IN ('pending', 'awaiting_ack') THEN 'cancelled' ELSE status END,
                 last_error = CASE WHEN status IN ('pending', 'awaiting_ack') THEN 'member_erased' ELSE last_error END,
                 updated_ms = ?2
             WHERE id = ?1",
            params![d, now_ms],
        )?;
    }
    let messages = tx.execute(
        "UPDATE outreach SET subject = '', body = '', trigger_data = '{}', member_id = ?2,
             status = CASE WHEN status = 'held' THEN 'cancelled' ELSE status END,
             reason = CASE WHEN status = 'held' THEN 'member_erased' ELSE reason END
         WHERE member_id = ?1",
        params![old, pseudonym],
    )?;
    let calls = tx.execute("DELETE FROM calls WHERE member_id = ?1", [old])?;
    // The built-in webhook sink keeps what it received: outreach bodies name the member
    // (`member.id`, name, e-mail), fulfilment bodies carry `member_id`.
    let sink = tx.execute(
        "DELETE FROM sink_messages WHERE json_valid(body)
           AND (json_extract(body, '$.member.id') = ?1 OR json_extract(body, '$.member_id') = ?1)",
        [old],
    )?;
    tx.execute("DELETE FROM consent WHERE member_id = ?1", [old])?;
    let events = tx.execute(
        "UPDATE events SET member_id = ?2 WHERE member_id = ?1",
        params![old, pseudonym],
    )?;
    // Imported usage lives under the synthetic device `import:{member_id}`.
    tx.execute(
        "UPDATE events SET device_id = 'import:' || ?2 WHERE device_id = 'import:' || ?1",
        params![old, pseudonym],
    )?;
    for table in [
        "devices",
        "member_scores",
        "state_transitions",
        "orders",
        "member_policies",
    ] {
        tx.execute(
            &format!("UPDATE {table} SET member_id = ?2 WHERE member_id = ?1"),
            params![old, pseudonym],
        )?;
    }
    // Fulfilment webhooks of the member's orders (queued until the cancellation window
    // closes, or kept after sending) name the member: from now on by the pseudonym. A
    // pending one still goes out: erasure does not cancel a purchase.
    tx.execute(
        "UPDATE deliveries SET payload = json_set(payload, '$.member_id', ?1)
         WHERE purpose = 'fulfilment'
           AND idempotency_key IN (SELECT 'order:' || tx_id FROM orders WHERE member_id = ?1)",
        [&pseudonym],
    )?;
    tx.execute("DELETE FROM members WHERE id = ?1", [old])?;
    tx.commit()?;
    Ok(Some(Erased {
        id: old.to_owned(),
        pseudonym,
        events_kept: events as u64,
        messages_redacted: messages as u64,
        deliveries_redacted: deliveries.len() as u64,
        calls_removed: calls as u64,
        sink_messages_removed: sink as u64,
        audit_rows_redacted: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, health: serde_json::Value) -> crate::registry::DeviceView {
        crate::registry::DeviceView {
            id: id.into(),
            public_key: String::new(),
            registered_at: String::new(),
            presence: Some("online".into()),
            presence_at: None,
            last_seen_at: None,
            health: Some(health),
        }
    }

    fn order(device: &str, slot: &str, status: &str, at: &str) -> crate::orders::OrderView {
        crate::orders::OrderView {
            tx_id: format!("tx-{at}"),
            member_id: "m1".into(),
            device_id: device.into(),
            slot: slot.into(),
            sku: "POD-50".into(),
            qty: 40,
            unit_price: 25,
            amount: 1000,
            currency: "EUR".into(),
            status: status.into(),
            reason: None,
            decided_at: at.into(),
            cancel_until: None,
            fulfilment_requested_at: None,
            ledger_index: 0,
        }
    }

    #[test]
    fn consumables_join_reported_levels_with_the_latest_order_of_each_slot() {
        let devices = [
            device(
                "coffee-1",
                serde_json::json!({"outbox_depth": 0, "consumables": [
                    {"slot": "pods", "sku": "POD-50", "level": 7, "capacity": 50}
                ]}),
            ),
            device("coffee-2", serde_json::json!({"outbox_depth": 0})),
        ];
        // Newest first, as orders::list returns them.
        let orders = [
            order("coffee-1", "pods", "accepted", "2026-11-20"),
            order("coffee-1", "pods", "delivered", "2026-10-01"),
            order("coffee-2", "milk", "rejected", "2026-11-02"),
        ];
        let c = consumables(&devices, &orders);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].level, c[0].capacity, c[0].orders),
            (Some(7), Some(50), 2)
        );
        assert_eq!(c[0].last_order_status.as_deref(), Some("accepted"));
        assert_eq!(c[0].last_order_at.as_deref(), Some("2026-11-20"));
        assert_eq!((c[1].slot.as_str(), c[1].level), ("milk", None));
    }
}
