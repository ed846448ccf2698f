//! The member and device registry: who the subscribers are and which device keys
//! speak for them. Used by the CLI (`members …`, `devices …`) and the API.

use crate::domain::{
    date_instant, parse_date_or_time, parse_name, DomainError, Email, Language, PhoneNumber,
    TimeZone,
};
use crate::store::StoreError;
use chrono::{DateTime, TimeZone as _, Utc};
use rollcall_shared::dsse::{KeyError, PublicKey};
use rollcall_shared::{DeviceId, IdError, MemberId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// Why a registry change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A value did not parse.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// An id did not parse.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A public key did not parse.
    #[error("public key: {0}")]
    Key(#[from] KeyError),
    /// The member does not exist.
    #[error("no member with id {0:?}")]
    NoSuchMember(String),
    /// The device is registered with another key or member.
    #[error("device {0:?} is already registered with a different key or member; devices keep their key for life")]
    DeviceConflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the member's score failed.
    #[error(transparent)]
    Scoring(#[from] crate::scoring::ScoringError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(StoreError::Sqlite(e))
    }
}

/// A member as entered: every field already parsed.
#[derive(Debug, Clone)]
pub struct NewMember {
    /// Identifier.
    pub id: MemberId,
    /// Display name.
    pub name: String,
    /// Phone in E.164.
    pub phone: Option<PhoneNumber>,
    /// E-mail.
    pub email: Option<Email>,
    /// IANA time zone.
    pub tz: Option<TimeZone>,
    /// Plan name.
    pub plan: Option<String>,
    /// When the subscription began.
    pub joined: Option<DateTime<Utc>>,
    /// The join date when it was given without a time: an update that names no zone
    /// places it in the member's stored zone ([`upsert_member`]).
    pub joined_date: Option<chrono::NaiveDate>,
    /// Preferred language (greetings); `None` keeps what is stored.
    pub lang: Option<Language>,
}

impl NewMember {
    /// Parses raw strings (from flags or a CSV row); empty optional fields mean "none".
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        id: &str,
        name: &str,
        phone: Option<&str>,
        email: Option<&str>,
        tz: Option<&str>,
        plan: Option<&str>,
        joined: Option<&str>,
        default_region: &str,
    ) -> Result<Self, RegistryError> {
        let nonempty = |s: Option<&str>| {
            s.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let tz = nonempty(tz).map(|t| TimeZone::parse(&t)).transpose()?;
        // A date alone is the member's local date (see `domain::date_instant`); without a
        // zone, UTC's.
        let zone = tz.map_or(chrono_tz::UTC, |t| t.tz());
        Ok(Self {
            id: MemberId::parse(id.trim())?,
            name: parse_name(name)?,
            phone: nonempty(phone)
                .map(|p| PhoneNumber::parse(&p, default_region))
                .transpose()?,
            email: nonempty(email).map(|e| Email::parse(&e)).transpose()?,
            tz,
            plan: nonempty(plan),
            joined: nonempty(joined)
                .map(|j| parse_date_or_time(&j, zone))
                .transpose()?,
            joined_date: nonempty(joined)
                .and_then(|j| chrono::NaiveDate::parse_from_str(&j, "%Y-%m-%d").ok()),
            lang: None,
        })
    }

    /// Sets the preferred language from an optional string (empty: none given).
    pub fn with_lang(mut self, lang: Option<&str>) -> Result<Self, RegistryError> {
        self.lang = lang
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(Language::parse)
            .transpose()?;
        Ok(self)
    }
}

/// A member field that can be removed ([`clear_member_fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClearableField {
    /// The phone number.
    Phone,
    /// The e-mail address.
    Email,
    /// The time zone (the business's is used).
    Tz,
    /// The plan.
    Plan,
    /// The preferred language (English greetings).
    Lang,
}

impl ClearableField {
    fn column(self) -> &'static str {
        match self {
            ClearableField::Phone => "phone",
            ClearableField::Email => "email",
            ClearableField::Tz => "tz",
            ClearableField::Plan => "plan",
            ClearableField::Lang => "lang",
        }
    }
}

/// Removes `fields` of member `id` (set to none); false when there is no such member.
pub fn clear_member_fields(
    conn: &Connection,
    id: &MemberId,
    fields: &[ClearableField],
) -> Result<bool, RegistryError> {
    let exists = conn
        .query_row("SELECT 1 FROM members WHERE id = ?1", [id.as_str()], |_| {
            Ok(())
        })
        .optional()?
        .is_some();
    for f in fields {
        conn.execute(
            &format!("UPDATE members SET {} = NULL WHERE id = ?1", f.column()),
            [id.as_str()],
        )?;
    }
    Ok(exists)
}

/// Inserts or updates a member (idempotent by id). An update changes the name and the
/// fields given; a field not given (or empty) keeps its stored value ([`clear_member_fields`]
/// removes one). Returns true when the member is new.
pub fn upsert_member(
    conn: &Connection,
    m: &NewMember,
    now: DateTime<Utc>,
) -> Result<bool, RegistryError> {
    let stored: Option<Option<String>> = conn
        .query_row(
            "SELECT tz FROM members WHERE id = ?1",
            [m.id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let existed = stored.is_some();
    // A date alone, on an update that names no zone: the member's local date in the zone
    // the update keeps.
    let joined = match (m.tz, m.joined_date, stored.flatten()) {
        (None, Some(date), Some(tz)) => tz
            .parse::<chrono_tz::Tz>()
            .ok()
            .map(|tz| date_instant(date, tz))
            .or(m.joined),
        _ => m.joined,
    };
    conn.execute(
        "INSERT INTO members (id, name, phone, email, tz, plan, joined_ms, created_ms, lang)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(id) DO UPDATE SET name = excluded.name,
             phone = COALESCE(excluded.phone, members.phone),
             email = COALESCE(excluded.email, members.email),
             tz = COALESCE(excluded.tz, members.tz),
             plan = COALESCE(excluded.plan, members.plan),
             joined_ms = COALESCE(excluded.joined_ms, members.joined_ms),
             lang = COALESCE(excluded.lang, members.lang)",
        params![
            m.id.as_str(),
            m.name,
            m.phone.as_ref().map(|p| p.as_str()),
            m.email.as_ref().map(|e| e.as_str()),
            m.tz.map(|t| t.name()),
            m.plan,
            joined.map(|j| j.timestamp_millis()),
            now.timestamp_millis(),
            m.lang.as_ref().map(|l| l.as_str()),
        ],
    )?;
    Ok(!existed)
}

/// Store migration 12: join times stored at exactly midnight UTC, which is how a join
/// date given without a time was stored before, move to [`date_instant`] of that date in
/// the member's zone (UTC for a member without one), where every reader sees the date that
/// was entered. Returns the members moved.
pub(crate) fn move_date_only_joins(conn: &Connection) -> rusqlite::Result<usize> {
    const DAY_MS: i64 = 86_400_000;
    let rows: Vec<(String, Option<String>, i64)> = conn
        .prepare(
            "SELECT id, tz, joined_ms FROM members WHERE joined_ms IS NOT NULL AND joined_ms % ?1 = 0",
        )?
        .query_map([DAY_MS], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = conn.prepare("UPDATE members SET joined_ms = ?2 WHERE id = ?1")?;
    let mut moved = 0;
    for (id, tz, joined_ms) in rows {
        let Some(midnight) = DateTime::from_timestamp_millis(joined_ms) else {
            continue;
        };
        let zone = tz
            .and_then(|t| t.parse::<chrono_tz::Tz>().ok())
            .unwrap_or(chrono_tz::UTC);
        let at = date_instant(midnight.date_naive(), zone);
        moved += update.execute(params![id, at.timestamp_millis()])?;
    }
    Ok(moved)
}

/// One rejected CSV row.
#[derive(Debug, Clone, Serialize)]
pub struct RowError {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// What is wrong.
    pub error: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportSummary {
    /// Members created.
    pub created: u64,
    /// Members updated (same id imported again).
    pub updated: u64,
    /// Rows refused, with line numbers.
    pub rejected: Vec<RowError>,
}

/// Imports members from CSV with the header `id,name,phone,email,tz,plan,joined`, optionally
/// followed by `lang`.
/// Valid rows are committed in one transaction; invalid rows are reported by line.
pub fn import_members(
    conn: &mut Connection,
    csv_text: &[u8],
    default_region: &str,
    now: DateTime<Utc>,
) -> Result<ImportSummary, RegistryError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(csv_text);
    let mut summary = ImportSummary::default();
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            summary.rejected.push(RowError {
                line: 1,
                error: format!("cannot read the header: {e}"),
            });
            return Ok(summary);
        }
    };
    let expected = ["id", "name", "phone", "email", "tz", "plan", "joined"];
    let found: Vec<&str> = headers.iter().collect();
    let with_lang = found.len() == 8 && found[7] == "lang";
    if found[..found.len().min(7)] != expected || !(found.len() == 7 || with_lang) {
        summary.rejected.push(RowError {
            line: 1,
            error: format!(
                "header must be {:?} (optionally followed by \",lang\"), found {:?}",
                expected.join(","),
                headers.iter().collect::<Vec<_>>().join(",")
            ),
        });
        return Ok(summary);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                summary.rejected.push(RowError {
                    line,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let f = |i: usize| rec.get(i);
        match NewMember::parse(
            f(0).unwrap_or(""),
            f(1).unwrap_or(""),
            f(2),
            f(3),
            f(4),
            f(5),
            f(6),
            default_region,
        )
        .and_then(|m| m.with_lang(if with_lang { f(7) } else { None }))
        {
            Ok(m) => {
                if upsert_member(&tx, &m, now)? {
                    summary.created += 1;
                } else {
                    summary.updated += 1;
                }
            }
            Err(e) => summary.rejected.push(RowError {
                line,
                error: e.to_string(),
            }),
        }
    }
    tx.commit()?;
    Ok(summary)
}

/// Registers a device key for a member. Registering the same device with the same key and
/// member again is a no-op (returns false); a different key or member is refused.
pub fn add_device(
    conn: &Connection,
    device: &DeviceId,
    member: &MemberId,
    key: &PublicKey,
    now: DateTime<Utc>,
) -> Result<bool, RegistryError> {
    let exists: bool = conn
        .query_row(
            "SELECT 1 FROM members WHERE id = ?1",
            [member.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Err(RegistryError::NoSuchMember(member.to_string()));
    }
    let current: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT member_id, public_key FROM devices WHERE id = ?1",
            [device.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match current {
        Some((m, k)) if m == member.as_str() && k == key.as_bytes() => Ok(false),
        Some(_) => Err(RegistryError::DeviceConflict(device.to_string())),
        None => {
            conn.execute(
                "INSERT INTO devices (id, member_id, public_key, registered_ms) VALUES (?1, ?2, ?3, ?4)",
                params![device.as_str(), member.as_str(), key.as_bytes().as_slice(), now.timestamp_millis()],
            )?;
            Ok(true)
        }
    }
}

/// A registered device as the ingest sees it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// The member it belongs to.
    pub member_id: MemberId,
    /// Its public key.
    pub key: PublicKey,
}

/// Looks a device up by id.
pub fn device_info(
    conn: &Connection,
    device: &DeviceId,
) -> Result<Option<DeviceInfo>, RegistryError> {
    let row: Option<(String, Vec<u8>)> = conn
        .query_row(
            "SELECT member_id, public_key FROM devices WHERE id = ?1",
            [device.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(m, k)| {
        Ok(DeviceInfo {
            member_id: MemberId::parse(&m)?,
            key: PublicKey::from_bytes(&k)?,
        })
    })
    .transpose()
}

/// Milliseconds to RFC 3339.
pub fn ms_to_rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// A device in a member view.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// Device id.
    pub id: String,
    /// Public key (base64).
    pub public_key: String,
    /// When registered.
    pub registered_at: String,
    /// `online`, `offline`, or null if it never reported a status.
    pub presence: Option<String>,
    /// When the presence last changed (device time).
    pub presence_at: Option<String>,
    /// When the cloud last stored a report from it.
    pub last_seen_at: Option<String>,
    /// The agent's last reported health.
    pub health: Option<serde_json::Value>,
}

/// Usage totals in a member view.
#[derive(Debug, Clone, Serialize)]
pub struct UsageView {
    /// Distinct events stored.
    pub events: u64,
    /// First event time.
    pub first_at: Option<String>,
    /// Last event time.
    pub last_at: Option<String>,
    /// Kind → total quantity.
    pub by_kind: BTreeMap<String, u64>,
    /// Events recorded while the device's clock was not trustworthy.
    pub clock_suspect_events: u64,
}

/// Everything `members show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// Member id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Phone (E.164).
    pub phone: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// IANA time zone.
    pub tz: Option<String>,
    /// Plan.
    pub plan: Option<String>,
    /// Subscription start.
    pub joined: Option<String>,
    /// Preferred language for greetings (ISO 639-1), if set.
    pub lang: Option<String>,
    /// Devices.
    pub devices: Vec<DeviceView>,
    /// Usage totals.
    pub usage: UsageView,
    /// Score 0–100 at the latest scoring run (null before the first).
    pub score: Option<u8>,
    /// Engagement state at the latest scoring run.
    pub state: Option<String>,
    /// Plain-language reasons for the state.
    pub reasons: Vec<String>,
    /// The latest scoring run's numbers in full.
    pub scoring: Option<crate::scoring::persist::ScoreView>,
    /// Recent state changes, newest first.
    pub transitions: Vec<crate::scoring::persist::TransitionView>,
}

/// How many recent transitions `members show` lists.
pub const RECENT_TRANSITIONS: u32 = 10;

/// Reads a member with devices and usage totals.
pub fn show_member(conn: &Connection, id: &MemberId) -> Result<Option<MemberView>, RegistryError> {
    let Some(mut view) = conn
        .query_row(
            "SELECT id, name, phone, email, tz, plan, joined_ms, lang FROM members WHERE id = ?1",
            [id.as_str()],
            |r| {
                Ok(MemberView {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    phone: r.get(2)?,
                    email: r.get(3)?,
                    tz: r.get(4)?,
                    plan: r.get(5)?,
                    joined: r.get::<_, Option<i64>>(6)?.map(ms_to_rfc3339),
                    lang: r.get(7)?,
                    devices: vec![],
                    usage: UsageView {
                        events: 0,
                        first_at: None,
                        last_at: None,
                        by_kind: BTreeMap::new(),
                        clock_suspect_events: 0,
                    },
                    score: None,
                    state: None,
                    reasons: vec![],
                    scoring: None,
                    transitions: vec![],
                })
            },
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut st = conn.prepare(
        "SELECT id, public_key, registered_ms, presence, presence_ms, last_seen_ms, health FROM devices WHERE member_id = ?1 ORDER BY id",
    )?;
    view.devices = st
        .query_map([id.as_str()], |r| {
            let key: Vec<u8> = r.get(1)?;
            Ok(DeviceView {
                id: r.get(0)?,
                public_key: PublicKey::from_bytes(&key)
                    .map(|k| k.to_base64())
                    .unwrap_or_default(),
                registered_at: ms_to_rfc3339(r.get(2)?),
                presence: r.get(3)?,
                presence_at: r.get::<_, Option<i64>>(4)?.map(ms_to_rfc3339),
                last_seen_at: r.get::<_, Option<i64>>(5)?.map(ms_to_rfc3339),
                health: r
                    .get::<_, Option<String>>(6)?
                    .and_then(|h| serde_json::from_str(&h).ok()),
            })
        })?
        .collect::<Result<_, _>>()?;
    let (events, first, last, suspect): (i64, Option<i64>, Option<i64>, i64) = conn.query_row(
        "SELECT COUNT(*), MIN(occurred_ms), MAX(occurred_ms), COALESCE(SUM(clock_suspect), 0) FROM events WHERE member_id = ?1",
        [id.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    view.usage.events = events as u64;
    view.usage.first_at = first.map(ms_to_rfc3339);
    view.usage.last_at = last.map(ms_to_rfc3339);
    view.usage.clock_suspect_events = suspect as u64;
    let mut st = conn.prepare(
        "SELECT kind, SUM(qty) FROM events WHERE member_id = ?1 GROUP BY kind ORDER BY kind",
    )?;
    for row in st.query_map([id.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (k, q) = row?;
        view.usage.by_kind.insert(k, q as u64);
    }
    if let Some(sv) = crate::scoring::persist::score_view(conn, id.as_str())? {
        view.score = Some(sv.score);
        view.state = Some(sv.state.clone());
        view.reasons = sv.reasons.clone();
        view.scoring = Some(sv);
    }
    view.transitions = crate::scoring::persist::transitions(conn, id.as_str(), RECENT_TRANSITIONS)?;
    Ok(Some(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::dsse::KeyPair;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::store::open_writer(dir.path()).unwrap();
        (dir, c)
    }

    #[test]
    fn members_are_stored_with_e164_phones_and_updated_by_id() {
        let (_d, c) = store();
        let m = NewMember::parse(
            "m1",
            "Maria Rossi",
            Some("(212) 555-0142"),
            Some("maria@example.com"),
            Some("America/New_York"),
            Some("pods"),
            Some("2026-01-03"),
            "US",
        )
        .unwrap();
        assert!(upsert_member(&c, &m, now()).unwrap());
        assert!(!upsert_member(&c, &m, now()).unwrap());
        let v = show_member(&c, &m.id).unwrap().unwrap();
        assert_eq!(v.phone.as_deref(), Some("+12125550142"));
        // 2026-01-03 in New York: 09:30 local, 14:30 UTC (`domain::date_instant`).
        assert_eq!(v.joined.as_deref(), Some("2026-01-03T14:30:00+00:00"));
        assert_eq!(v.usage.events, 0);
    }

    /// A join date alone is the member's local date: west of UTC (New York) it used to
    /// become the day before in their zone, so tenure counted a day more and the
    /// onboarding rules fired a day early.
    #[test]
    fn a_join_date_is_the_members_local_date_east_and_west_of_utc() {
        let (_d, mut c) = store();
        let zones = ["America/New_York", "Pacific/Auckland", "Pacific/Honolulu"];
        for (i, tz) in zones.iter().enumerate() {
            let m = NewMember::parse(
                &format!("m{i}"),
                "Someone",
                None,
                None,
                Some(tz),
                None,
                Some("2026-03-02"),
                "US",
            )
            .unwrap();
            upsert_member(&c, &m, now()).unwrap();
            let shown = show_member(&c, &m.id).unwrap().unwrap().joined.unwrap();
            assert!(shown.starts_with("2026-03-02T"), "{tz}: joined {shown}");
            // An update that gives the date again without the zone keeps the same instant.
            let again = NewMember::parse(
                &format!("m{i}"),
                "Someone",
                None,
                None,
                None,
                None,
                Some("2026-03-02"),
                "US",
            )
            .unwrap();
            upsert_member(&c, &again, now()).unwrap();
            let after = show_member(&c, &m.id).unwrap().unwrap().joined.unwrap();
            assert_eq!(after, shown, "{tz}: an update without --tz moved the join");
        }
        let entered = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
        let fleet = crate::scoring::fleet::Fleet::load(&c, chrono_tz::UTC).unwrap();
        assert_eq!(fleet.members.len(), zones.len());
        for m in &fleet.members {
            assert_eq!(
                m.start_day(),
                crate::scoring::summary::day_number(entered),
                "{}: the scorer's first day",
                m.tz
            );
        }
        // Ten days later, in the evening of each member's own day: tenure 10.
        let cfg = crate::config::ScoringConfig::default();
        for (i, tz) in zones.iter().enumerate() {
            let tz: chrono_tz::Tz = tz.parse().unwrap();
            let evening = tz
                .with_ymd_and_hms(2026, 3, 12, 20, 0, 0)
                .unwrap()
                .with_timezone(&Utc);
            let run = crate::scoring::score_once(&mut c, &cfg, evening, evening).unwrap();
            let me = run
                .members
                .iter()
                .find(|s| s.id == format!("m{i}"))
                .unwrap();
            assert_eq!(me.tenure_days, 10, "{tz}: {me:?}");
        }
    }

    #[test]
    fn an_update_keeps_the_fields_it_does_not_give_and_clear_removes_one() {
        let (_d, c) = store();
        let full = NewMember::parse(
            "m1",
            "Maria Rossi",
            Some("(212) 555-0142"),
            Some("maria@example.com"),
            Some("America/New_York"),
            Some("pods"),
            None,
            "US",
        )
        .unwrap();
        upsert_member(&c, &full, now()).unwrap();
        // A new name only (flags not given, or a CSV row with empty cells).
        let renamed = NewMember::parse(
            "m1",
            "Maria Bianchi",
            None,
            Some(""),
            None,
            None,
            None,
            "US",
        )
        .unwrap();
        assert!(!upsert_member(&c, &renamed, now()).unwrap());
        let v = show_member(&c, &full.id).unwrap().unwrap();
        assert_eq!(v.name, "Maria Bianchi");
        assert_eq!(v.phone.as_deref(), Some("+12125550142"));
        assert_eq!(v.email.as_deref(), Some("maria@example.com"));
        assert_eq!(v.tz.as_deref(), Some("America/New_York"));
        assert_eq!(v.plan.as_deref(), Some("pods"));
        assert!(
            clear_member_fields(&c, &full.id, &[ClearableField::Phone, ClearableField::Plan])
                .unwrap()
        );
        let v = show_member(&c, &full.id).unwrap().unwrap();
        assert_eq!((v.phone, v.plan), (None, None));
        assert_eq!(v.email.as_deref(), Some("maria@example.com"));
        let nobody = MemberId::parse("m9").unwrap();
        assert!(!clear_member_fields(&c, &nobody, &[ClearableField::Email]).unwrap());
    }

    #[test]
    fn bad_member_fields_say_what_is_wrong() {
        let e = NewMember::parse("m1", "X", Some("12"), None, None, None, None, "US")
            .unwrap_err()
            .to_string();
        assert!(e.contains("phone"), "{e}");
        let e = NewMember::parse("m 1", "X", None, None, None, None, None, "US")
            .unwrap_err()
            .to_string();
        assert!(e.contains("member id"), "{e}");
        assert!(NewMember::parse(
            "m1",
            "X",
            None,
            None,
            Some("Nowhere/City"),
            None,
            None,
            "US"
        )
        .is_err());
    }

    #[test]
    fn csv_import_reports_bad_rows_by_line_and_is_idempotent() {
        let (_d, mut c) = store();
        let csv = b"id,name,phone,email,tz,plan,joined\nm1,Ann,+1 212 555 0101,ann@example.com,Europe/Berlin,basic,2026-01-01\nm2,Bob,12,,,,\nm3,Cy,,,,,\n";
        let s = import_members(&mut c, csv, "US", now()).unwrap();
        assert_eq!((s.created, s.updated), (2, 0));
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].line, 3);
        let s = import_members(&mut c, csv, "US", now()).unwrap();
        assert_eq!((s.created, s.updated), (0, 2));
        let s = import_members(&mut c, b"id,name\nm1,x\n", "US", now()).unwrap();
        assert_eq!(s.rejected[0].line, 1);
    }

    #[test]
    fn devices_keep_their_key_for_life() {
        let (_d, c) = store();
        let m = NewMember::parse("m1", "Ann", None, None, None, None, None, "US").unwrap();
        upsert_member(&c, &m, now()).unwrap();
        let d = DeviceId::parse("d1").unwrap();
        let k = KeyPair::generate().public();
        assert!(add_device(&c, &d, &m.id, &k, now()).unwrap());
        assert!(!add_device(&c, &d, &m.id, &k, now()).unwrap());
        let other = KeyPair::generate().public();
        assert!(matches!(
            add_device(&c, &d, &m.id, &other, now()),
            Err(RegistryError::DeviceConflict(_))
        ));
        let nobody = MemberId::parse("nobody").unwrap();
        assert!(matches!(
            add_device(&c, &DeviceId::parse("d2").unwrap(), &nobody, &k, now()),
            Err(RegistryError::NoSuchMember(_))
        ));
        assert_eq!(device_info(&c, &d).unwrap().unwrap().key, k);
    }
}
