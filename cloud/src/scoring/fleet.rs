//! The fleet as the scorer sees it: every registered member with their time zone, the
//! day their clock starts, their active days, and an offline device if any.
//!
//! [`Fleet::load`] reads everything once (the CLI and the replay). The server keeps one
//! fleet and calls [`Fleet::refresh`] before each run: members are re-read (cheap), and
//! only events *received* since the refresh before the previous one are read again (the
//! `events_received` index), which covers any event stamped before a refresh but committed
//! after it; active days are a set, so reading an event twice changes nothing.
//!
//! Two rules about time make the summaries honest:
//!
//! - An event recorded while its device's clock was wrong (`clock_suspect`, such as a
//!   clock reset to 2000-01-01) is counted on the day the cloud received it, not on the
//!   day its clock claimed: a year-2000 "active day" would otherwise start the member's
//!   clock decades early.
//! - A member's clock never starts before the fleet's first recorded usage
//!   ([`Fleet::observed_from_ms`]): when members who joined long ago are registered, or
//!   the history imported is shorter than their membership, the store cannot have seen
//!   their usage before that, and unseen days are not silence.

use super::summary::{local_day, ActiveDays};
use super::ScoringError;
use chrono_tz::Tz;
use rusqlite::Connection;
use std::collections::HashMap;

/// One member.
#[derive(Debug, Clone)]
pub struct FleetMember {
    /// Member id.
    pub id: String,
    /// Their time zone (the default when unset).
    pub tz: Tz,
    /// Joined, else registered (Unix ms).
    pub joined_ms: i64,
    /// When their clock starts unless they were active earlier: `joined_ms`, but not
    /// before the fleet's first recorded usage (Unix ms).
    pub start_ms: i64,
    /// Active days.
    pub days: ActiveDays,
    /// A device whose latest status is offline, and since when (Unix ms).
    pub offline: Option<(String, Option<i64>)>,
}

impl FleetMember {
    /// The day their clock starts unless they were active earlier, in their zone.
    pub fn start_day(&self) -> i32 {
        local_day(self.start_ms, self.tz)
    }
}

/// Every registered member.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// Members, in id order at load (new members are appended by refresh).
    pub members: Vec<FleetMember>,
    index: HashMap<String, usize>,
    /// Start instants (clock ms) of the last two refreshes.
    refreshes: [Option<i64>; 2],
    /// The earliest recorded usage of any member (Unix ms), if any.
    pub observed_from_ms: Option<i64>,
}

impl Fleet {
    /// Reads every member and all their usage.
    pub fn load(conn: &Connection, default_tz: Tz) -> Result<Fleet, ScoringError> {
        let mut f = Fleet::default();
        f.reload_members(conn, default_tz)?;
        f.read_events(conn, None)?;
        f.read_presence(conn)?;
        f.apply_observation_start();
        Ok(f)
    }

    /// Reads everything, as [`Fleet::load`], for a fleet that [`Fleet::refresh`] will keep
    /// up to date; `now_ms` is the clock when the load started.
    pub fn load_at(conn: &Connection, default_tz: Tz, now_ms: i64) -> Result<Fleet, ScoringError> {
        let mut f = Fleet::load(conn, default_tz)?;
        f.refreshes = [Some(now_ms), Some(now_ms)];
        Ok(f)
    }

    /// Brings the fleet up to date; `now_ms` is the clock at the start of this refresh.
    pub fn refresh(
        &mut self,
        conn: &Connection,
        default_tz: Tz,
        now_ms: i64,
    ) -> Result<(), ScoringError> {
        let changed_tz = self.reload_members(conn, default_tz)?;
        for i in changed_tz {
            let m = &mut self.members[i];
            let mut st = conn.prepare_cached(
                "SELECT CASE WHEN clock_suspect THEN received_ms ELSE occurred_ms END FROM events WHERE member_id = ?1",
            )?;
            let ms: Vec<i64> = st
                .query_map([&m.id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            m.days = ActiveDays::from_instants(ms, m.tz);
        }
        let since = self.refreshes[0];
        self.read_events(conn, since)?;
        self.read_presence(conn)?;
        self.apply_observation_start();
        self.refreshes = [self.refreshes[1], Some(now_ms)];
        Ok(())
    }

    /// Sets every member's `start_ms`: joined, but not before the fleet's first usage.
    fn apply_observation_start(&mut self) {
        for m in &mut self.members {
            if let Some(first) = m.days.first_instant() {
                self.observed_from_ms = Some(self.observed_from_ms.map_or(first, |o| o.min(first)));
            }
        }
        let from = self.observed_from_ms.unwrap_or(i64::MIN);
        for m in &mut self.members {
            m.start_ms = m.joined_ms.max(from);
        }
    }

    /// The member's position, by id.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Re-reads the members; returns those whose time zone changed (their days need rebuilding).
    fn reload_members(
        &mut self,
        conn: &Connection,
        default_tz: Tz,
    ) -> Result<Vec<usize>, ScoringError> {
        let mut st = conn
            .prepare("SELECT id, tz, COALESCE(joined_ms, created_ms) FROM members ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut changed = Vec::new();
        for row in rows {
            let (id, tz, start_ms) = row?;
            let tz = tz.and_then(|t| t.parse::<Tz>().ok()).unwrap_or(default_tz);
            match self.index.get(&id) {
                Some(&i) => {
                    let m = &mut self.members[i];
                    m.joined_ms = start_ms;
                    m.start_ms = start_ms;
                    if m.tz != tz {
                        m.tz = tz;
                        changed.push(i);
                    }
                }
                None => {
                    self.index.insert(id.clone(), self.members.len());
                    self.members.push(FleetMember {
                        id,
                        tz,
                        joined_ms: start_ms,
                        start_ms,
                        days: ActiveDays::default(),
                        offline: None,
                    });
                }
            }
        }
        Ok(changed)
    }

    fn read_events(&mut self, conn: &Connection, since: Option<i64>) -> Result<(), ScoringError> {
        let (sql, arg) = match since {
            None => (
                "SELECT member_id, CASE WHEN clock_suspect THEN received_ms ELSE occurred_ms END FROM events ORDER BY member_id",
                i64::MIN,
            ),
            Some(s) => (
                "SELECT member_id, CASE WHEN clock_suspect THEN received_ms ELSE occurred_ms END FROM events WHERE received_ms >= ?1",
                s,
            ),
        };
        let mut st = conn.prepare(sql)?;
        let mut rows = if since.is_some() {
            st.query([arg])?
        } else {
            st.query([])?
        };
        let mut current: Option<(String, Option<usize>)> = None;
        while let Some(r) = rows.next()? {
            let member = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            let ms: i64 = r.get(1)?;
            let pos = match &current {
                Some((id, pos)) if id == member => *pos,
                _ => {
                    let pos = self.index.get(member).copied();
                    current = Some((member.to_owned(), pos));
                    pos
                }
            };
            if let Some(i) = pos {
                let m = &mut self.members[i];
                m.days.insert(local_day(ms, m.tz), ms);
            }
        }
        Ok(())
    }

    fn read_presence(&mut self, conn: &Connection) -> Result<(), ScoringError> {
        for m in &mut self.members {
            m.offline = None;
        }
        let mut st = conn.prepare(
            "SELECT member_id, id, presence_ms FROM devices WHERE presence = 'offline' ORDER BY member_id, id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for row in rows {
            let (member, device, since) = row?;
            if let Some(&i) = self.index.get(&member) {
                self.members[i].offline.get_or_insert((device, since));
            }
        }
        Ok(())
    }
}
