//! Planning and policy: triggers → rules → rendered messages → policy → delivery queue.
//!
//! Policy runs in this fixed order, each step logged in `outreach_log` (and traced):
//! 1. **consent**: the rule is enabled, the channel has a target (webhook endpoint, device,
//!    e-mail address and SMTP), and for `marketing` the member has not opted out of the
//!    channel (or of every channel). Fails → `skipped`.
//! 2. **quiet_hours**: in the member's time zone (the business's, logged as
//!    `tz_fallback_business`, when unknown); inside the window → `held` until it ends
//!    (computed in local time, so DST moves the UTC instant), then re-checked from step 1.
//! 3. **caps**: messages already queued for the member on this channel and category in
//!    their calendar day / ISO week. Full → `skipped`.
//! 4. **dedup**: another message of the same rule, member, episode and channel queued (or
//!    held ahead of this one) → `skipped`; and **relevance**: a state-based message whose
//!    state the member has left → `cancelled`.
//!
//! Then the message is `queued`: its delivery row is inserted in the same transaction.
//! When a later state change makes a queued message irrelevant before it is sent, its
//! delivery is cancelled with `no_longer_relevant`.

use super::config::{OutreachConfig, RuleConfig};
use super::context::{self, MemberFacts};
use super::optout::{self, OptOutKey};
use super::templates::Templates;
use super::triggers::{self, OrderEvent, Trigger};
use super::{reasons, Category, OutreachError, TriggerKind};
use crate::delivery::{self, DeliveryChannel, IdempotencyKey, NewDelivery};
use chrono::{DateTime, Datelike, Duration, NaiveDateTime, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use std::collections::BTreeMap;

/// Transitions read per batch.
const TRANSITION_BATCH: u32 = 5_000;
/// The `outreach_cursor` of the milestone scan: the newest commit sequence number
/// ([`crate::store::next_commit_seq`]) whose events it has looked at.
const EVENTS_CURSOR: &str = "events_commit_seq";

/// The outreach planner: configuration, compiled templates and the opt-out key.
#[derive(Debug)]
pub struct Outreach {
    cfg: OutreachConfig,
    templates: Templates,
    optout: OptOutKey,
    smtp_enabled: bool,
}

/// What one [`Outreach::tick`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Triggers found.
    pub triggers: u64,
    /// Messages planned (new `outreach` rows).
    pub planned: u64,
    /// Messages queued for delivery.
    pub queued: u64,
    /// Messages held (quiet hours).
    pub held: u64,
    /// Messages skipped.
    pub skipped: u64,
    /// Messages cancelled.
    pub cancelled: u64,
}

/// A policy decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Queued as this delivery.
    Queued(i64),
    /// Held until this instant (Unix ms), for this reason.
    Held(i64, &'static str),
    /// Skipped for this reason.
    Skipped(&'static str),
    /// Cancelled for this reason.
    Cancelled(&'static str),
}

/// A rendered message that would be sent (`outreach preview`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// Member.
    pub member_id: String,
    /// Rule.
    pub rule: String,
    /// Its trigger.
    pub trigger: TriggerKind,
    /// Its channels.
    pub channels: Vec<DeliveryChannel>,
    /// Category.
    pub category: Category,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// The context the templates saw.
    pub context: serde_json::Value,
}

struct Row {
    id: i64,
    member_id: String,
    rule: String,
    trigger: TriggerKind,
    episode: String,
    channel: DeliveryChannel,
    category: Category,
    priority: i32,
    subject: String,
    body: String,
}

impl Outreach {
    /// Compiles the templates (`cfg.outreach`) and loads the opt-out key from `data_dir`.
    pub fn new(cfg: &crate::config::CloudConfig) -> Result<Self, OutreachError> {
        Ok(Self {
            templates: Templates::load(&cfg.outreach)?,
            optout: OptOutKey::load(&cfg.data_dir)?,
            cfg: cfg.outreach.clone(),
            smtp_enabled: !cfg.delivery.smtp.host.is_empty(),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &OutreachConfig {
        &self.cfg
    }

    /// The opt-out key.
    pub fn optout_key(&self) -> &OptOutKey {
        &self.optout
    }

    /// The member's opt-out link for `channel` (`*`: all) and marketing.
    pub fn optout_url(&self, member_id: &str, channel: &str) -> String {
        format!(
            "{}/api/v1/optout?token={}",
            self.cfg.public_url.trim_end_matches('/'),
            self.optout.token(member_id, channel, "marketing")
        )
    }

    /// One step: read new triggers, plan and check them, release held messages that are
    /// due, cancel what a state change made irrelevant. One transaction.
    pub fn tick(
        &self,
        conn: &mut Connection,
        now: DateTime<Utc>,
    ) -> Result<TickReport, OutreachError> {
        let now_ms = now.timestamp_millis();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut report = TickReport::default();
        let mut found = Vec::new();
        let mut cursor = get_cursor(&tx, "transitions")?.unwrap_or(0);
        loop {
            let batch = triggers::transitions_after(&tx, cursor, TRANSITION_BATCH)?;
            for t in &batch {
                cursor = t.id;
                report.cancelled += self.cancel_irrelevant(&tx, &t.member_id, &t.new_state, now)?;
                if let Some(trig) = triggers::transition_trigger(&tx, &self.cfg, t)? {
                    found.push(trig);
                }
            }
            if (batch.len() as u32) < TRANSITION_BATCH {
                break;
            }
        }
        set_cursor(&tx, "transitions", cursor)?;
        found.extend(triggers::onboarding_triggers(&tx, &self.cfg, now)?);
        // Exact, however late events commit: this transaction holds the write lock, so
        // every commit numbered up to `upto` is visible and every later one numbers higher.
        // Without a cursor (a new store) every event is looked at once.
        let after = get_cursor(&tx, EVENTS_CURSOR)?.unwrap_or(-1);
        let upto = crate::store::last_commit_seq(&tx)?;
        found.extend(triggers::milestone_triggers(
            &tx, &self.cfg, after, upto, now,
        )?);
        set_cursor(&tx, EVENTS_CURSOR, upto)?;
        report.triggers = found.len() as u64;
        // Held messages that are due; read before planning, which inserts new rows as held.
        let mut rows = due_held(&tx, now_ms)?;
        let held = rows.len();
        for t in &found {
            rows.extend(self.plan(&tx, t, now)?);
        }
        report.planned = (rows.len() - held) as u64;
        // Higher priority first, so it takes the member's cap; then oldest first.
        rows.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        for row in rows {
            match self.decide(&tx, &row, now)? {
                Decision::Queued(_) => report.queued += 1,
                Decision::Held(..) => report.held += 1,
                Decision::Skipped(_) => report.skipped += 1,
                Decision::Cancelled(_) => report.cancelled += 1,
            }
        }
        tx.commit()?;
        Ok(report)
    }

    /// For the orders code: raises `order_accepted` / `order_cancellable` for `ev` inside
    /// the caller's transaction (the one that records the order), so the message and its
    /// delivery commit with the order. Returns each planned message's decision. Takes the
    /// transaction's connection (a `&Transaction` derefs to it) and refuses to run outside
    /// a transaction.
    pub fn raise_order(
        &self,
        tx: &Connection,
        ev: &OrderEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<Decision>, OutreachError> {
        if tx.is_autocommit() {
            return Err(OutreachError::Invalid(
                "raise_order runs inside the order's transaction".into(),
            ));
        }
        let t = ev.trigger(now);
        let mut rows = self.plan(tx, &t, now)?;
        rows.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        rows.into_iter().map(|r| self.decide(tx, &r, now)).collect()
    }

    /// Renders rule `rule` for `member_id` with the real data, without sending anything.
    pub fn preview(
        &self,
        conn: &Connection,
        member_id: &str,
        rule: &str,
        now: DateTime<Utc>,
    ) -> Result<Preview, OutreachError> {
        let r = self
            .cfg
            .rules
            .get(rule)
            .ok_or_else(|| OutreachError::Invalid(format!("no rule named {rule:?}")))?;
        let facts = context::facts(conn, &self.cfg, member_id)?
            .ok_or_else(|| OutreachError::Invalid(format!("no member with id {member_id:?}")))?;
        let data = match r.trigger {
            TriggerKind::OrderAccepted | TriggerKind::OrderCancellable => OrderEvent::sample_data(),
            _ => serde_json::Value::Null,
        };
        let trigger = Trigger {
            kind: r.trigger,
            member_id: member_id.to_owned(),
            key: "preview".into(),
            episode: "preview".into(),
            at_ms: now.timestamp_millis(),
            data,
        };
        let ctx = context::build(
            conn,
            &self.cfg,
            &facts,
            &trigger,
            &self.optout_url(member_id, "*"),
            now,
        )?;
        let rendered = self.templates.render(rule, &ctx)?;
        Ok(Preview {
            member_id: member_id.to_owned(),
            rule: rule.to_owned(),
            trigger: r.trigger,
            channels: r.channels.clone(),
            category: r.category,
            subject: rendered.subject,
            body: rendered.body,
            context: ctx,
        })
    }

    /// Inserts one row per matching rule and channel (idempotent by trigger key).
    fn plan(
        &self,
        conn: &Connection,
        t: &Trigger,
        now: DateTime<Utc>,
    ) -> Result<Vec<Row>, OutreachError> {
        let rules: Vec<(&String, &RuleConfig)> = self
            .cfg
            .rules
            .iter()
            .filter(|(_, r)| r.enabled && r.trigger == t.kind)
            .collect();
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let Some(facts) = context::facts(conn, &self.cfg, &t.member_id)? else {
            return Ok(Vec::new());
        };
        let now_ms = now.timestamp_millis();
        let ctx = context::build(
            conn,
            &self.cfg,
            &facts,
            t,
            &self.optout_url(&t.member_id, "*"),
            now,
        )?;
        let mut out = Vec::new();
        for (name, rule) in rules {
            let rendered = self.templates.render(name, &ctx);
            for channel in &rule.channels {
                let (subject, body) = match &rendered {
                    Ok(r) => (r.subject.clone(), r.body.clone()),
                    Err(_) => (String::new(), String::new()),
                };
                let n = conn.execute(
                    "INSERT INTO outreach (member_id, rule, trigger, trigger_key, episode, channel, category, priority,
                        status, subject, body, trigger_data, created_ms, due_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'held', ?9, ?10, ?11, ?12, ?12, ?12)
                     ON CONFLICT(rule, member_id, trigger_key, channel) DO NOTHING",
                    params![
                        t.member_id,
                        name,
                        t.kind.name(),
                        t.key,
                        t.episode,
                        channel.name(),
                        rule.category.name(),
                        rule.priority,
                        subject,
                        body,
                        t.data.to_string(),
                        now_ms
                    ],
                )?;
                if n == 0 {
                    continue;
                }
                let id = conn.last_insert_rowid();
                if let Err(e) = &rendered {
                    tracing::warn!(member_id = %t.member_id, rule = %name, error = %e, "Template failed on the member's data");
                    finish(conn, id, &Decision::Skipped(reasons::RENDER_FAILED), now_ms)?;
                    log(
                        conn,
                        id,
                        "render",
                        "skip",
                        Some(reasons::RENDER_FAILED),
                        now_ms,
                    )?;
                    continue;
                }
                log(conn, id, "plan", "planned", None, now_ms)?;
                out.push(Row {
                    id,
                    member_id: t.member_id.clone(),
                    rule: name.clone(),
                    trigger: t.kind,
                    episode: t.episode.clone(),
                    channel: *channel,
                    category: rule.category,
                    priority: rule.priority,
                    subject,
                    body,
                });
            }
        }
        Ok(out)
    }

    /// Runs the policy on one row and records the decision.
    fn decide(
        &self,
        conn: &Connection,
        row: &Row,
        now: DateTime<Utc>,
    ) -> Result<Decision, OutreachError> {
        let now_ms = now.timestamp_millis();
        let d = self.policy(conn, row, now)?;
        finish(conn, row.id, &d, now_ms)?;
        let (decision, reason) = match &d {
            Decision::Queued(_) => ("queued", None),
            Decision::Held(_, r) => ("held", Some(*r)),
            Decision::Skipped(r) => ("skipped", Some(*r)),
            Decision::Cancelled(r) => ("cancelled", Some(*r)),
        };
        tracing::info!(
            outreach_id = row.id,
            member_id = %row.member_id,
            rule = %row.rule,
            channel = %row.channel,
            decision,
            reason = reason.unwrap_or("-"),
            "Outreach decision"
        );
        Ok(d)
    }

    fn policy(
        &self,
        conn: &Connection,
        row: &Row,
        now: DateTime<Utc>,
    ) -> Result<Decision, OutreachError> {
        let now_ms = now.timestamp_millis();
        let step = |name: &str, d: Option<Decision>| -> Result<Option<Decision>, OutreachError> {
            let (decision, reason) = match &d {
                None => ("pass", None),
                Some(Decision::Held(_, r)) => ("hold", Some(*r)),
                Some(Decision::Skipped(r)) => ("skip", Some(*r)),
                Some(Decision::Cancelled(r)) => ("cancel", Some(*r)),
                Some(Decision::Queued(_)) => ("queue", None),
            };
            log(conn, row.id, name, decision, reason, now_ms)?;
            Ok(d)
        };
        let Some(facts) = context::facts(conn, &self.cfg, &row.member_id)? else {
            let erased: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM members WHERE id = ?1 AND erased_ms IS NOT NULL)",
                [&row.member_id],
                |r| r.get(0),
            )?;
            let reason = if erased {
                reasons::MEMBER_ERASED
            } else {
                reasons::NO_ADDRESS
            };
            return Ok(Decision::Skipped(reason));
        };
        // 1. Consent and suppression.
        let (target, refused) = self.target(row, &facts);
        let refused = match refused {
            Some(r) => Some(r),
            None if row.category == Category::Marketing
                && optout::opted_out(conn, &row.member_id, row.channel.name(), "marketing")? =>
            {
                Some(reasons::OPTED_OUT)
            }
            None => None,
        };
        if let Some(d) = step("consent", refused.map(Decision::Skipped))? {
            return Ok(d);
        }
        // 2. Quiet hours, in the member's time zone.
        if facts.tz_fallback {
            log(
                conn,
                row.id,
                "timezone",
                "fallback",
                Some(reasons::TZ_FALLBACK),
                now_ms,
            )?;
        }
        let quiet = if self.cfg.quiet_hours.categories.contains(&row.category) {
            let (start, end) = self.cfg.quiet_hours.window();
            quiet_until(now, facts.tz, start, end)
                .map(|until| Decision::Held(until.timestamp_millis(), reasons::QUIET_HOURS))
        } else {
            None
        };
        if let Some(d) = step("quiet_hours", quiet)? {
            return Ok(d);
        }
        // 3. Frequency caps by the member's calendar day and week.
        let capped = match self.cfg.caps.get(&row.category) {
            Some(cap) => {
                let (day0, day1) = local_day_bounds(now, facts.tz);
                let (week0, week1) = local_week_bounds(now, facts.tz);
                let count = |from: i64, to: i64| -> Result<u32, OutreachError> {
                    Ok(conn.query_row(
                        "SELECT COUNT(*) FROM outreach WHERE member_id = ?1 AND channel = ?2 AND category = ?3
                           AND status = 'queued' AND queued_ms >= ?4 AND queued_ms < ?5 AND id != ?6",
                        params![row.member_id, row.channel.name(), row.category.name(), from, to, row.id],
                        |r| r.get(0),
                    )?)
                };
                if count(day0, day1)? >= cap.per_day {
                    Some(Decision::Skipped(reasons::CAP_DAILY))
                } else if count(week0, week1)? >= cap.per_week {
                    Some(Decision::Skipped(reasons::CAP_WEEKLY))
                } else {
                    None
                }
            }
            None => None,
        };
        if let Some(d) = step("caps", capped)? {
            return Ok(d);
        }
        // 4. Dedup per (rule, member, episode, channel), and relevance.
        let duplicate: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM outreach WHERE rule = ?1 AND member_id = ?2 AND episode = ?3
               AND channel = ?4 AND id != ?5 AND (status = 'queued' OR (status = 'held' AND id < ?5)))",
            params![row.rule, row.member_id, row.episode, row.channel.name(), row.id],
            |r| r.get(0),
        )?;
        let dedup = if duplicate {
            Some(Decision::Skipped(reasons::DUPLICATE_EPISODE))
        } else {
            match row.trigger.relevant_states() {
                Some(states) if !facts.state.as_deref().is_some_and(|s| states.contains(&s)) => {
                    Some(Decision::Cancelled(reasons::NO_LONGER_RELEVANT))
                }
                _ if row.trigger == TriggerKind::OrderCancellable
                    && window_closed(conn, row.id, now)? =>
                {
                    Some(Decision::Cancelled(reasons::NO_LONGER_RELEVANT))
                }
                _ => None,
            }
        };
        if let Some(d) = step("dedup", dedup)? {
            return Ok(d);
        }
        // Queue: the delivery row commits with this decision.
        let target = target.expect("consent passed, so there is a target");
        let key = IdempotencyKey::parse(&format!("outreach:{}", row.id))?;
        let payload = self.payload(conn, row, key.as_str(), now)?;
        let e = delivery::enqueue_in_transaction(
            conn,
            NewDelivery {
                channel: row.channel,
                target,
                idempotency_key: key,
                payload,
                not_before: now,
                purpose: "outreach".into(),
                quiet: self
                    .cfg
                    .quiet_hours
                    .categories
                    .contains(&row.category)
                    .then(|| {
                        let (start, end) = self.cfg.quiet_hours.window();
                        delivery::QuietWindow {
                            tz: facts.tz,
                            start,
                            end,
                        }
                    })
                    .filter(|q| q.start != q.end),
            },
        )?;
        log(conn, row.id, "queue", "queued", None, now_ms)?;
        Ok(Decision::Queued(e.id))
    }

    /// Where the row goes, or why it cannot go anywhere.
    fn target(&self, row: &Row, facts: &MemberFacts) -> (Option<String>, Option<&'static str>) {
        let Some(rule) = self.cfg.rules.get(&row.rule).filter(|r| r.enabled) else {
            return (None, Some(reasons::RULE_DISABLED));
        };
        match row.channel {
            DeliveryChannel::Webhook => {
                let name = rule
                    .webhook
                    .clone()
                    .or_else(|| self.cfg.webhooks.first().map(|w| w.name.clone()));
                match name {
                    Some(n) => (Some(n), None),
                    None => (None, Some(reasons::NO_ENDPOINT)),
                }
            }
            DeliveryChannel::Device => match &facts.device {
                Some(d) => (Some(d.clone()), None),
                None => (None, Some(reasons::NO_DEVICE)),
            },
            DeliveryChannel::Email => match (&facts.email, self.smtp_enabled) {
                (None, _) => (None, Some(reasons::NO_ADDRESS)),
                (_, false) => (None, Some(reasons::NO_SMTP)),
                (Some(e), true) => (Some(e.clone()), None),
            },
        }
    }

    fn payload(
        &self,
        conn: &Connection,
        row: &Row,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value, OutreachError> {
        let optout_url = self.optout_url(&row.member_id, "*");
        Ok(match row.channel {
            DeliveryChannel::Webhook => {
                let (name, email): (String, Option<String>) = conn.query_row(
                    "SELECT name, email FROM members WHERE id = ?1",
                    [&row.member_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                serde_json::json!({
                    "type": "outreach.message",
                    "id": key,
                    "outreach_id": row.id,
                    "rule": row.rule,
                    "trigger": row.trigger.name(),
                    "category": row.category.name(),
                    "member": {"id": row.member_id, "name": name, "email": email},
                    "subject": row.subject,
                    "body": row.body,
                    "optout_url": optout_url,
                    "created_at": now.to_rfc3339(),
                })
            }
            DeliveryChannel::Device => serde_json::to_value(delivery::DeviceMessagePayload {
                title: row.subject.clone(),
                body: row.body.clone(),
            })
            .expect("serialises"),
            DeliveryChannel::Email => {
                let marketing = row.category == Category::Marketing;
                let mut body = row.body.clone();
                if marketing && !body.contains(&optout_url) {
                    body.push_str(&format!(
                        "\n\n--\nTo stop these messages, open {optout_url}"
                    ));
                }
                serde_json::to_value(delivery::EmailPayload {
                    subject: row.subject.clone(),
                    body,
                    unsubscribe: marketing.then_some(optout_url),
                })
                .expect("serialises")
            }
        })
    }

    /// Cancels the member's held and queued messages that `new_state` makes irrelevant.
    fn cancel_irrelevant(
        &self,
        conn: &Connection,
        member_id: &str,
        new_state: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, OutreachError> {
        let now_ms = now.timestamp_millis();
        let mut st = conn.prepare_cached(
            "SELECT id, trigger, status, delivery_id FROM outreach
             WHERE member_id = ?1 AND status IN ('held', 'queued')",
        )?;
        let rows: Vec<(i64, String, String, Option<i64>)> = st
            .query_map([member_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for (id, trigger, status, delivery_id) in rows {
            let Some(states) = TriggerKind::parse(&trigger).and_then(|k| k.relevant_states())
            else {
                continue;
            };
            if states.contains(&new_state) {
                continue;
            }
            let cancel = match (status.as_str(), delivery_id) {
                ("held", _) => true,
                (_, Some(d)) => delivery::cancel(conn, d, reasons::NO_LONGER_RELEVANT, now)?,
                _ => false,
            };
            if cancel {
                finish(
                    conn,
                    id,
                    &Decision::Cancelled(reasons::NO_LONGER_RELEVANT),
                    now_ms,
                )?;
                log(
                    conn,
                    id,
                    "relevance",
                    "cancel",
                    Some(reasons::NO_LONGER_RELEVANT),
                    now_ms,
                )?;
                tracing::info!(
                    outreach_id = id,
                    member_id,
                    new_state,
                    "Outreach cancelled: no longer relevant"
                );
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Withdraws the messages about order `order_id` that no longer fit: the "you can still
/// cancel" message once the order is cancelled or delivered, and with `cancelled` also the
/// "your order was accepted" one. Held messages, and queued ones whose delivery has not
/// started, are cancelled (`no_longer_relevant`); returns how many. Runs inside the
/// transaction that changes the order.
pub fn withdraw_order_messages(
    conn: &Connection,
    order_id: &str,
    cancelled: bool,
    now: DateTime<Utc>,
) -> Result<u64, OutreachError> {
    let now_ms = now.timestamp_millis();
    let mut keys = vec![format!("order:{order_id}:cancellable")];
    if cancelled {
        keys.push(format!("order:{order_id}:accepted"));
    }
    let mut st = conn.prepare_cached(
        "SELECT id, status, delivery_id FROM outreach
         WHERE trigger_key = ?1 AND status IN ('held', 'queued')",
    )?;
    let mut n = 0;
    for key in keys {
        let rows: Vec<(i64, String, Option<i64>)> = st
            .query_map([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (id, status, delivery_id) in rows {
            let withdrawn = match (status.as_str(), delivery_id) {
                ("held", _) => true,
                (_, Some(d)) => delivery::cancel(conn, d, reasons::NO_LONGER_RELEVANT, now)?,
                _ => false,
            };
            if withdrawn {
                let d = Decision::Cancelled(reasons::NO_LONGER_RELEVANT);
                finish(conn, id, &d, now_ms)?;
                log(
                    conn,
                    id,
                    "order",
                    "cancel",
                    Some(reasons::NO_LONGER_RELEVANT),
                    now_ms,
                )?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// For an `order_cancellable` message: whether the cancellation window it announces has
/// closed by `now` (a message held through quiet hours may come out after it).
fn window_closed(conn: &Connection, id: i64, now: DateTime<Utc>) -> Result<bool, OutreachError> {
    let until: Option<String> = conn.query_row(
        "SELECT json_extract(trigger_data, '$.cancellable_until') FROM outreach WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(until
        .and_then(|u| chrono::NaiveDateTime::parse_from_str(&u, "%Y-%m-%d %H:%M UTC").ok())
        .is_some_and(|u| u.and_utc() <= now))
}

fn finish(conn: &Connection, id: i64, d: &Decision, now_ms: i64) -> Result<(), OutreachError> {
    match d {
        Decision::Queued(delivery_id) => conn.execute(
            "UPDATE outreach SET status = 'queued', reason = NULL, queued_ms = ?2, delivery_id = ?3, updated_ms = ?2 WHERE id = ?1",
            params![id, now_ms, delivery_id],
        )?,
        Decision::Held(until, reason) => conn.execute(
            "UPDATE outreach SET status = 'held', reason = ?2, due_ms = ?3, updated_ms = ?4 WHERE id = ?1",
            params![id, reason, until, now_ms],
        )?,
        Decision::Skipped(reason) => conn.execute(
            "UPDATE outreach SET status = 'skipped', reason = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, reason, now_ms],
        )?,
        Decision::Cancelled(reason) => conn.execute(
            "UPDATE outreach SET status = 'cancelled', reason = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, reason, now_ms],
        )?,
    };
    Ok(())
}

fn log(
    conn: &Connection,
    id: i64,
    step: &str,
    decision: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(), OutreachError> {
    conn.prepare_cached(
        "INSERT INTO outreach_log (outreach_id, at_ms, step, decision, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, now_ms, step, decision, reason])?;
    Ok(())
}

fn due_held(conn: &Connection, now_ms: i64) -> Result<Vec<Row>, OutreachError> {
    let mut st = conn.prepare_cached(
        "SELECT id, member_id, rule, trigger, episode, channel, category, priority, subject, body
         FROM outreach WHERE status = 'held' AND due_ms <= ?1 ORDER BY id",
    )?;
    let rows = st.query_map([now_ms], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, i32>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, String>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, member_id, rule, trigger, episode, channel, category, priority, subject, body) =
            row?;
        let (Some(trigger), Some(channel), Some(category)) = (
            TriggerKind::parse(&trigger),
            DeliveryChannel::parse(&channel),
            Category::parse(&category),
        ) else {
            continue;
        };
        out.push(Row {
            id,
            member_id,
            rule,
            trigger,
            episode,
            channel,
            category,
            priority,
            subject,
            body,
        });
    }
    Ok(out)
}

fn get_cursor(conn: &Connection, name: &str) -> Result<Option<i64>, OutreachError> {
    Ok(conn
        .query_row(
            "SELECT value FROM outreach_cursor WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

fn set_cursor(conn: &Connection, name: &str, value: i64) -> Result<(), OutreachError> {
    conn.execute(
        "INSERT INTO outreach_cursor (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// The UTC instant of a local wall-clock time: the earlier one when the clocks go back,
/// and the first valid minute after it when they spring forward over it.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    for minutes in 0..=180 {
        let t = local + Duration::minutes(minutes);
        if let Some(u) = tz.from_local_datetime(&t).earliest() {
            return u.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&local)
}

/// When the quiet hours around `now` end in `tz`, or `None` outside them. `start == end`
/// means no quiet hours.
pub fn quiet_until(
    now: DateTime<Utc>,
    tz: Tz,
    start: NaiveTime,
    end: NaiveTime,
) -> Option<DateTime<Utc>> {
    if start == end {
        return None;
    }
    let local = now.with_timezone(&tz);
    let t = local.time();
    let day = local.date_naive();
    let inside = if start < end {
        t >= start && t < end
    } else {
        t >= start || t < end
    };
    if !inside {
        return None;
    }
    let end_day = if start > end && t >= start {
        day.succ_opt().expect("not the end of time")
    } else {
        day
    };
    let until = local_to_utc(tz, end_day.and_time(end));
    if until > now {
        return Some(until);
    }
    // The window ends at a local time the clocks pass twice (the night they go back), and
    // `now` is in the second pass: the end is the later of the two instants. Never an
    // instant already past, which would have a caller hold a message "until" then forever.
    tz.from_local_datetime(&end_day.and_time(end))
        .latest()
        .map(|u| u.with_timezone(&Utc))
        .filter(|u| *u > now)
}

/// The member's calendar day around `now`, as Unix ms `[start, end)`.
pub fn local_day_bounds(now: DateTime<Utc>, tz: Tz) -> (i64, i64) {
    let day = now.with_timezone(&tz).date_naive();
    let next = day.succ_opt().expect("not the end of time");
    (
        local_to_utc(tz, day.and_time(NaiveTime::MIN)).timestamp_millis(),
        local_to_utc(tz, next.and_time(NaiveTime::MIN)).timestamp_millis(),
    )
}

/// The member's ISO week (Monday to Sunday) around `now`, as Unix ms `[start, end)`.
pub fn local_week_bounds(now: DateTime<Utc>, tz: Tz) -> (i64, i64) {
    let day = now.with_timezone(&tz).date_naive();
    let monday = day - Duration::days(day.weekday().num_days_from_monday() as i64);
    let next = monday + Duration::days(7);
    (
        local_to_utc(tz, monday.and_time(NaiveTime::MIN)).timestamp_millis(),
        local_to_utc(tz, next.and_time(NaiveTime::MIN)).timestamp_millis(),
    )
}

/// Counts of outreach rows per status (for metrics and the console).
pub fn counts(conn: &Connection) -> Result<BTreeMap<String, u64>, OutreachError> {
    let mut st = conn.prepare("SELECT status, COUNT(*) FROM outreach GROUP BY status")?;
    let mut out = BTreeMap::new();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        out.insert(s, n as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn hm(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    #[test]
    fn quiet_hours_that_end_in_the_hour_the_clocks_repeat_never_end_in_the_past() {
        let berlin = chrono_tz::Europe::Berlin;
        // 25 October 2026: at 03:00 CEST the clocks go back to 02:00 CET, so 02:00–02:59
        // happens twice. A window 22:00–02:30 ends at 00:30Z in the first pass...
        let first = quiet_until(t("2026-10-25T00:10:00Z"), berlin, hm("22:00"), hm("02:30"));
        assert_eq!(first, Some(t("2026-10-25T00:30:00Z")));
        // ... and, for someone asking at 02:10 CET in the second pass, at 01:30Z: not at
        // 00:30Z, which is already over (a dispatcher deferring to it would spin).
        let second = quiet_until(t("2026-10-25T01:10:00Z"), berlin, hm("22:00"), hm("02:30"));
        assert_eq!(second, Some(t("2026-10-25T01:30:00Z")));
        for m in 0..180 {
            let now = t("2026-10-24T23:00:00Z") + Duration::minutes(m);
            if let Some(u) = quiet_until(now, berlin, hm("22:00"), hm("02:30")) {
                assert!(u > now, "{now}: {u}");
            }
        }
    }

    #[test]
    fn quiet_hours_end_at_local_time_across_a_dst_change() {
        let ny = chrono_tz::America::New_York;
        // 23:00 EST on Saturday 7 March 2026; clocks spring forward at 02:00 on the 8th.
        let until = quiet_until(t("2026-03-08T04:00:00Z"), ny, hm("21:00"), hm("08:00")).unwrap();
        assert_eq!(until, t("2026-03-08T12:00:00Z")); // 08:00 EDT, not 13:00Z
                                                      // The autumn change: 08:00 EST on 1 November 2026 is 13:00Z.
        let until = quiet_until(t("2026-11-01T05:00:00Z"), ny, hm("21:00"), hm("08:00")).unwrap();
        assert_eq!(until, t("2026-11-01T13:00:00Z"));
        assert_eq!(
            quiet_until(t("2026-03-08T15:00:00Z"), ny, hm("21:00"), hm("08:00")),
            None
        );
        // A daytime window, and none at all.
        assert!(quiet_until(
            t("2026-03-08T13:00:00Z"),
            chrono_tz::UTC,
            hm("12:00"),
            hm("14:00")
        )
        .is_some());
        assert_eq!(
            quiet_until(
                t("2026-03-08T13:00:00Z"),
                chrono_tz::UTC,
                hm("12:00"),
                hm("12:00")
            ),
            None
        );
    }

    #[test]
    fn a_wall_time_in_the_spring_gap_moves_to_the_first_valid_minute() {
        let ny = chrono_tz::America::New_York;
        let gap = chrono::NaiveDate::from_ymd_opt(2026, 3, 8)
            .unwrap()
            .and_time(hm("02:30"));
        assert_eq!(local_to_utc(ny, gap), t("2026-03-08T07:00:00Z"));
    }

    use crate::scoring::summary::DAY_MS;

    #[test]
    fn calendar_days_and_weeks_are_the_members() {
        let berlin = chrono_tz::Europe::Berlin;
        let (a, b) = local_day_bounds(t("2026-06-10T23:30:00Z"), berlin); // already the 11th there
        assert_eq!(a, t("2026-06-10T22:00:00Z").timestamp_millis());
        assert_eq!(b, t("2026-06-11T22:00:00Z").timestamp_millis());
        let (w0, w1) = local_week_bounds(t("2026-06-10T12:00:00Z"), berlin);
        assert_eq!(w0, t("2026-06-07T22:00:00Z").timestamp_millis()); // Monday 8 June, 00:00 CEST
        assert_eq!(w1 - w0, 7 * DAY_MS);
    }
}
