//! Finding a member: by phone number (any common format, normalised to E.164), e-mail,
//! device id, member id or part of the name. What the support console's search box and
//! `GET /api/v1/lookup` use. Erased members are never found by personal data.

use crate::domain::{DomainError, Email, PhoneNumber};
use rollcall_shared::{DeviceId, MemberId};
use rusqlite::Connection;
use serde::Serialize;

/// Most members one lookup returns.
pub const MAX_HITS: u32 = 50;

/// What to look for; each variant holds an already parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Exact phone number.
    Phone(PhoneNumber),
    /// Exact e-mail address (case-insensitive).
    Email(Email),
    /// The member who owns this device.
    Device(DeviceId),
    /// The member with this id.
    Member(MemberId),
    /// Part of the name (case-insensitive, at least 2 characters).
    Name(String),
}

/// Why a lookup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A phone number or e-mail address did not parse.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A device id did not parse.
    #[error("device id: {0}")]
    Device(rollcall_shared::IdError),
    /// The name fragment is too short or too long.
    #[error("name search needs 2 to 100 characters")]
    Name,
    /// No search term was given, or several.
    #[error("give exactly one of phone, email, device, id or q")]
    Terms,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
}

impl Query {
    /// A query from free text, as typed into a search box: an e-mail address if it has
    /// an `@`, a phone number if it is mostly digits, otherwise the device and member with
    /// that id (if it is a valid id) and a name search.
    pub fn parse_free_text(text: &str, default_region: &str) -> Result<Vec<Query>, LookupError> {
        let t = text.trim();
        if t.contains('@') {
            return Ok(vec![Query::Email(Email::parse(t)?)]);
        }
        let digits = t.chars().filter(char::is_ascii_digit).count();
        let phoneish = t
            .chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c));
        if phoneish && digits >= 5 {
            return Ok(vec![Query::Phone(PhoneNumber::parse(t, default_region)?)]);
        }
        Query::guesses(t)
    }

    /// For text that is not a phone or e-mail: the device and member with that id (if it
    /// is a valid id) and the name search.
    fn guesses(t: &str) -> Result<Vec<Query>, LookupError> {
        let mut out = Vec::new();
        if let Ok(d) = DeviceId::parse(t) {
            out.push(Query::Device(d));
        }
        if let Ok(m) = MemberId::parse(t) {
            out.push(Query::Member(m));
        }
        match Query::name(t) {
            Ok(q) => out.push(q),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => {}
        }
        Ok(out)
    }

    /// A name search.
    pub fn name(fragment: &str) -> Result<Query, LookupError> {
        let f = fragment.trim();
        let n = f.chars().count();
        if !(2..=100).contains(&n) {
            return Err(LookupError::Name);
        }
        Ok(Query::Name(f.to_owned()))
    }

    /// Whether this query searches by personal data (phone, e-mail, name), which the
    /// `analyst` role may not do.
    pub fn uses_personal_data(&self) -> bool {
        matches!(self, Query::Phone(_) | Query::Email(_) | Query::Name(_))
    }

    /// The query for the audit log. Phone numbers and e-mails are what was searched for;
    /// the log is as sensitive as the registry and kept with it.
    pub fn describe(&self) -> String {
        match self {
            Query::Phone(p) => format!("phone={p}"),
            Query::Email(e) => format!("email={}", e.as_str()),
            Query::Device(d) => format!("device={d}"),
            Query::Member(m) => format!("id={m}"),
            Query::Name(n) => format!("name~{n}"),
        }
    }
}

/// A member found by a lookup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Member id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Phone (E.164).
    pub phone: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// Engagement state (null before scoring).
    pub state: Option<String>,
    /// Score 0–100.
    pub score: Option<u8>,
    /// The member's devices.
    pub devices: Vec<String>,
}

fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs the queries and returns the distinct members found, in the order found (exact
/// matches first, then names alphabetically), at most [`MAX_HITS`].
pub fn lookup(conn: &Connection, queries: &[Query]) -> Result<Vec<Hit>, LookupError> {
    let mut ids: Vec<String> = Vec::new();
    for q in queries {
        let found: Vec<String> = match q {
            Query::Phone(p) => select_ids(
                conn,
                "SELECT id FROM members WHERE phone = ?1 AND erased_ms IS NULL ORDER BY id LIMIT 50",
                p.as_str(),
            )?,
            Query::Email(e) => select_ids(
                conn,
                "SELECT id FROM members WHERE email = ?1 COLLATE NOCASE AND erased_ms IS NULL ORDER BY id LIMIT 50",
                e.as_str(),
            )?,
            Query::Device(d) => select_ids(
                conn,
                "SELECT member_id FROM devices WHERE id = ?1 LIMIT 50",
                d.as_str(),
            )?,
            Query::Member(m) => select_ids(
                conn,
                "SELECT id FROM members WHERE id = ?1 LIMIT 50",
                m.as_str(),
            )?,
            Query::Name(n) => select_ids(
                conn,
                "SELECT id FROM members WHERE name LIKE '%' || ?1 || '%' ESCAPE '\\' AND erased_ms IS NULL
                 ORDER BY name, id LIMIT 50",
                &escape_like(n),
            )?,
        };
        for id in found {
            if !ids.contains(&id) && ids.len() < MAX_HITS as usize {
                ids.push(id);
            }
        }
    }
    ids.iter().map(|id| hit(conn, id)).collect()
}

// The queries above spell the limit out: SQLite re-prepares a statement each time a
// parameter used as a LIMIT is bound again, which cost more than the lookup itself.
const _: () = assert!(MAX_HITS == 50);

fn select_ids(conn: &Connection, sql: &str, arg: &str) -> Result<Vec<String>, LookupError> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st.query_map([arg], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn hit(conn: &Connection, id: &str) -> Result<Hit, LookupError> {
    let mut h = conn
        .prepare_cached(
            "SELECT m.id, m.name, m.phone, m.email, s.state, s.score
             FROM members m LEFT JOIN member_scores s ON s.member_id = m.id WHERE m.id = ?1",
        )?
        .query_row([id], |r| {
            Ok(Hit {
                id: r.get(0)?,
                name: r.get(1)?,
                phone: r.get(2)?,
                email: r.get(3)?,
                state: r.get(4)?,
                score: r.get::<_, Option<i64>>(5)?.map(|s| s as u8),
                devices: vec![],
            })
        })?;
    let mut st = conn.prepare_cached("SELECT id FROM devices WHERE member_id = ?1 ORDER BY id")?;
    h.devices = st
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{upsert_member, NewMember};
    use chrono::Utc;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::store::open_writer(dir.path()).unwrap();
        for (id, name, phone, email) in [
            ("m1", "Maria Rossi", "+1 212 555 0142", "Maria@Example.com"),
            (
                "m2",
                "Mario Bianchi",
                "+44 20 7946 0018",
                "mario@example.org",
            ),
            ("m3", "Ann 100%_Lee", "+1 312 555 0199", "ann@example.net"),
        ] {
            let m = NewMember::parse(id, name, Some(phone), Some(email), None, None, None, "US")
                .unwrap();
            upsert_member(&c, &m, Utc::now()).unwrap();
        }
        (dir, c)
    }

    fn ids(hits: Vec<Hit>) -> Vec<String> {
        hits.into_iter().map(|h| h.id).collect()
    }

    #[test]
    fn a_phone_written_in_a_local_format_finds_the_member() {
        let (_d, c) = store();
        for written in [
            "(212) 555-0142",
            "212.555.0142",
            "+1 212-555-0142",
            "12125550142",
        ] {
            let q = Query::parse_free_text(written, "US").unwrap();
            assert_eq!(ids(lookup(&c, &q).unwrap()), ["m1"], "{written}");
        }
        let q = Query::parse_free_text("020 7946 0018", "GB").unwrap();
        assert_eq!(ids(lookup(&c, &q).unwrap()), ["m2"]);
    }

    #[test]
    fn names_match_in_part_and_ignore_case_and_wildcards_are_literal() {
        let (_d, c) = store();
        let q = Query::parse_free_text("mari", "US").unwrap();
        assert_eq!(ids(lookup(&c, &q).unwrap()), ["m1", "m2"]);
        assert_eq!(
            ids(lookup(&c, &[Query::name("100%_").unwrap()]).unwrap()),
            ["m3"]
        );
        assert!(lookup(&c, &[Query::Name("%%".into())]).unwrap().is_empty());
    }

    #[test]
    fn emails_match_without_regard_to_case() {
        let (_d, c) = store();
        let q = Query::parse_free_text("maria@EXAMPLE.com", "US").unwrap();
        assert_eq!(ids(lookup(&c, &q).unwrap()), ["m1"]);
    }

    #[test]
    fn unparseable_terms_say_what_is_wrong() {
        let e = Query::parse_free_text("555-12", "US")
            .unwrap_err()
            .to_string();
        assert!(e.contains("phone"), "{e}");
        assert!(matches!(Query::name("x"), Err(LookupError::Name)));
        assert!(Query::parse_free_text("not an@email", "US").is_err());
    }
}
