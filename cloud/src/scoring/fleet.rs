//! The fleet as the scorer sees it: every registered member with their time zone, the
//! day their clock starts, their active days, and an offline device if any.
//!
//! [`Fleet::load`] reads everything once (the CLI and the replay). The server keeps one
//! fleet and calls [`Fleet::refresh`] before each run: members are re-read (cheap), and
//! only events committed since the last read are read (`events.commit_seq` above the last
//! number seen, the `events_commit_seq` index). The newest number is read before the
//! events, and write transactions take their numbers in commit order, so every event up
//! to it is visible: an event received long before it was committed (a held report
//! released a day later, a slow batch) is still read, and each event is read once (one
//! committed between a load's number and its events may be read again by the next
//! refresh; active days are a set, so that changes nothing).
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
    /// The newest commit sequence number whose events have been read
    /// ([`crate::store::last_commit_seq`]).
    seen_commit_seq: i64,
    /// The earliest recorded usage of any member (Unix ms), if any.
    pub observed_from_ms: Option<i64>,
}

impl Fleet {
    /// Reads every member and all their usage; a fleet loaded so is what
    /// [`Fleet::refresh`] keeps up to date.
    pub fn load(conn: &Connection, default_tz: Tz) -> Result<Fleet, ScoringError> {
        let mut f = Fleet {
            seen_commit_seq: crate::store::last_commit_seq(conn)?,
            ..Fleet::default()
        };
        f.reload_members(conn, default_tz)?;
        f.read_events(conn, None)?;
        f.read_presence(conn)?;
        f.apply_observation_start();
        Ok(f)
    }

    /// Brings the fleet up to date: members again, the events committed since the last
    /// read, device presence. When a member has gone from the registry (an erasure moves
    /// the member's usage to a new pseudonymous id without new commit numbers), the fleet
    /// is loaded afresh instead.
    pub fn refresh(&mut self, conn: &Connection, default_tz: Tz) -> Result<(), ScoringError> {
        let upto = crate::store::last_commit_seq(conn)?;
        let (changed_tz, registered) = self.reload_members(conn, default_tz)?;
        if registered < self.members.len() {
            *self = Fleet::load(conn, default_tz)?;
            return Ok(());
        }
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
        self.read_events(conn, Some((self.seen_commit_seq, upto)))?;
        self.read_presence(conn)?;
        self.seen_commit_seq = upto;
        self.apply_observation_start();
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

    /// Re-reads the members; returns those whose time zone changed (their days need
    /// rebuilding) and how many members the registry has (fewer than the fleet's when a
    /// member has gone).
    fn reload_members(
        &mut self,
        conn: &Connection,
        default_tz: Tz,
    ) -> Result<(Vec<usize>, usize), ScoringError> {
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
        let mut registered = 0;
        for row in rows {
            let (id, tz, start_ms) = row?;
            registered += 1;
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
        Ok((changed, registered))
    }

    /// Reads all events (`None`), or those whose commit sequence number is in
    /// `(after, upto]`.
    fn read_events(
        &mut self,
        conn: &Connection,
        range: Option<(i64, i64)>,
    ) -> Result<(), ScoringError> {
        let mut st;
        let mut rows = match range {
            None => {
                st = conn.prepare(
                    "SELECT member_id, CASE WHEN clock_suspect THEN received_ms ELSE occurred_ms END FROM events ORDER BY member_id",
                )?;
                st.query([])?
            }
            Some((after, upto)) => {
                st = conn.prepare(
                    "SELECT member_id, CASE WHEN clock_suspect THEN received_ms ELSE occurred_ms END FROM events WHERE commit_seq > ?1 AND commit_seq <= ?2",
                )?;
                st.query([after, upto])?
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;

    /// Commits one event of member `m1` received at `received_ms`, the way the ingest does:
    /// with the next commit sequence number of its transaction.
    fn commit_event(conn: &mut Connection, seq: i64, day: i64, received_ms: i64) {
        let tx = conn.transaction().unwrap();
        let n = crate::store::next_commit_seq(&tx).unwrap();
        tx.execute(
            "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, fingerprint, commit_seq)
             VALUES ('d1', ?1, 'm1', 'brew', 1, ?2, ?3, 0, ?4)",
            rusqlite::params![seq, day * DAY_MS + 3_600_000, received_ms, n],
        )
        .unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_refresh_reads_events_committed_late_whatever_their_receive_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO members (id, name, tz, created_ms) VALUES ('m1', 'M', 'UTC', 0)",
            [],
        )
        .unwrap();
        commit_event(&mut conn, 1, 20_000, 20_000 * DAY_MS);
        let mut fleet = Fleet::load(&conn, Tz::UTC).unwrap();
        assert_eq!(fleet.members[0].days.days().collect::<Vec<_>>(), [20_000]);

        // Received two days before the load, but committed only now (a held report
        // released late): the refresh must still see it.
        commit_event(&mut conn, 2, 19_998, 19_998 * DAY_MS);
        fleet.refresh(&conn, Tz::UTC).unwrap();
        assert_eq!(
            fleet.members[0].days.days().collect::<Vec<_>>(),
            [19_998, 20_000]
        );
        // Nothing new: a refresh reads nothing and changes nothing.
        let before = fleet.members[0].days.clone();
        fleet.refresh(&conn, Tz::UTC).unwrap();
        assert_eq!(fleet.members[0].days, before);
    }

    #[test]
    fn a_device_going_offline_and_back_rewrites_the_stored_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO members (id, name, tz, created_ms) VALUES ('m1', 'M', 'UTC', 0)",
            [],
        )
        .unwrap();
        let key = rollcall_shared::dsse::KeyPair::generate().public();
        let (d1, m1) = (
            rollcall_shared::DeviceId::parse("d1").unwrap(),
            rollcall_shared::MemberId::parse("m1").unwrap(),
        );
        crate::registry::add_device(&conn, &d1, &m1, &key, chrono::Utc::now()).unwrap();
        for (i, day) in (19_990..20_000).enumerate() {
            commit_event(&mut conn, i as i64 + 1, day, day * DAY_MS);
        }
        let cfg = crate::config::ScoringConfig::default();
        let reasons = |conn: &mut Connection, minutes: i64| -> String {
            let t = chrono::DateTime::from_timestamp_millis(20_000 * DAY_MS + 3_600_000).unwrap()
                + chrono::Duration::minutes(minutes);
            crate::scoring::score_once(conn, &cfg, t, t).unwrap();
            conn.query_row(
                "SELECT reasons FROM member_scores WHERE member_id = 'm1'",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        assert!(!reasons(&mut conn, 0).contains("offline"));
        let presence = |conn: &Connection, p: &str| {
            conn.execute(
                "UPDATE devices SET presence = ?1, presence_ms = ?2 WHERE id = 'd1'",
                rusqlite::params![p, 20_000 * DAY_MS],
            )
            .unwrap();
        };
        // Minutes later nothing else has changed; the reasons still follow the device.
        presence(&conn, "offline");
        assert!(reasons(&mut conn, 5).contains("Device d1 has been offline since"));
        presence(&conn, "online");
        assert!(!reasons(&mut conn, 10).contains("offline"));
    }

    #[test]
    fn after_an_erasure_a_refresh_knows_only_the_pseudonym_with_the_members_usage() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute_batch(
            "INSERT INTO members (id, name, tz, created_ms) VALUES ('m1', 'M', 'UTC', 0);
             INSERT INTO members (id, name, tz, created_ms) VALUES ('m2', 'N', 'UTC', 0);",
        )
        .unwrap();
        commit_event(&mut conn, 1, 20_000, 20_000 * DAY_MS);
        let mut fleet = Fleet::load(&conn, Tz::UTC).unwrap();
        let id = rollcall_shared::MemberId::parse("m1").unwrap();
        let erased = crate::profile::erase(&mut conn, &id, chrono::Utc::now())
            .unwrap()
            .unwrap();
        fleet.refresh(&conn, Tz::UTC).unwrap();
        let ids: Vec<&str> = fleet.members.iter().map(|m| m.id.as_str()).collect();
        assert!(!ids.contains(&"m1"), "{ids:?}");
        assert_eq!(fleet.len(), 2);
        let p = fleet
            .position(&erased.pseudonym)
            .expect("the pseudonym is scored");
        assert_eq!(fleet.members[p].days.days().collect::<Vec<_>>(), [20_000]);
        assert_eq!(fleet.position("m1"), None);
    }
}
