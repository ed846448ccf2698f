//! What `outreach list`, the API and the console show. The status a reader sees joins
//! the outreach decision with its delivery: `queued` (waiting or being delivered),
//! `held`, `sent`, `skipped`, `cancelled`, `dead`.

use super::OutreachError;
use crate::registry::ms_to_rfc3339;
use rusqlite::{params, Connection};
use serde::Serialize;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutreachView {
    /// Id.
    pub id: i64,
    /// Member.
    pub member_id: String,
    /// Rule.
    pub rule: String,
    /// Trigger kind.
    pub trigger: String,
    /// Episode.
    pub episode: String,
    /// Channel.
    pub channel: String,
    /// Category.
    pub category: String,
    /// `queued`, `held`, `sent`, `skipped`, `cancelled` or `dead`.
    pub status: String,
    /// Machine-readable reason for skips, holds, cancellations and dead deliveries.
    pub reason: Option<String>,
    /// Subject.
    pub subject: String,
    /// The rendered text.
    pub body: String,
    /// Planned at.
    pub created_at: String,
    /// For held messages: when they are due.
    pub due_at: Option<String>,
    /// Queued at.
    pub queued_at: Option<String>,
    /// The delivery, once queued.
    pub delivery_id: Option<i64>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Delivered at.
    pub sent_at: Option<String>,
}

/// Messages, newest first, optionally of one member.
pub fn list(
    conn: &Connection,
    member_id: Option<&str>,
    limit: u32,
) -> Result<Vec<OutreachView>, OutreachError> {
    let mut st = conn.prepare(
        "SELECT o.id, o.member_id, o.rule, o.trigger, o.episode, o.channel, o.category, o.status, o.reason,
                o.subject, o.body, o.created_ms, o.due_ms, o.queued_ms, o.delivery_id,
                d.status, d.attempts, d.delivered_ms, d.last_error
         FROM outreach o LEFT JOIN deliveries d ON d.id = o.delivery_id
         WHERE ?1 IS NULL OR o.member_id = ?1
         ORDER BY o.id DESC LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![member_id, limit], |r| {
        let status: String = r.get(7)?;
        let reason: Option<String> = r.get(8)?;
        let delivery_status: Option<String> = r.get(15)?;
        let last_error: Option<String> = r.get(18)?;
        let (status, reason) = match (status.as_str(), delivery_status.as_deref()) {
            ("queued", Some("delivered")) => ("sent".to_owned(), None),
            ("queued", Some("dead")) => ("dead".to_owned(), last_error),
            ("queued", Some("cancelled")) => ("cancelled".to_owned(), last_error),
            _ => (status, reason),
        };
        Ok(OutreachView {
            id: r.get(0)?,
            member_id: r.get(1)?,
            rule: r.get(2)?,
            trigger: r.get(3)?,
            episode: r.get(4)?,
            channel: r.get(5)?,
            category: r.get(6)?,
            due_at: (status == "held")
                .then(|| r.get::<_, i64>(12).map(ms_to_rfc3339))
                .transpose()?,
            status,
            reason,
            subject: r.get(9)?,
            body: r.get(10)?,
            created_at: ms_to_rfc3339(r.get(11)?),
            queued_at: r.get::<_, Option<i64>>(13)?.map(ms_to_rfc3339),
            delivery_id: r.get(14)?,
            attempts: r.get::<_, Option<i64>>(16)?.unwrap_or(0) as u32,
            sent_at: r.get::<_, Option<i64>>(17)?.map(ms_to_rfc3339),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One policy log entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// When.
    pub at: String,
    /// `plan`, `consent`, `timezone`, `quiet_hours`, `caps`, `dedup`, `queue`, `relevance`, `render`.
    pub step: String,
    /// `pass`, `hold`, `skip`, `cancel`, `queued`, `planned`, `fallback`.
    pub decision: String,
    /// Reason code.
    pub reason: Option<String>,
}

/// The policy log of one message, in order.
pub fn log(conn: &Connection, outreach_id: i64) -> Result<Vec<LogEntry>, OutreachError> {
    let mut st = conn.prepare(
        "SELECT at_ms, step, decision, reason FROM outreach_log WHERE outreach_id = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([outreach_id], |r| {
        Ok(LogEntry {
            at: ms_to_rfc3339(r.get(0)?),
            step: r.get(1)?,
            decision: r.get(2)?,
            reason: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
