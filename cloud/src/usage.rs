//! Historical usage from CSV: the format shared by `usage import` and
//! `model fit --from-csv`, and the idempotent import into the store.
//!
//! The header is `member_id,occurred_at,kind,qty` or `device_id,occurred_at,kind,qty`
//! (the `qty` column may be left out, and an empty `qty` means 1). `occurred_at` is RFC
//! 3339 or `YYYY-MM-DD`; a date alone is stored as noon in the member's time zone, so it
//! lands on that calendar day wherever the member lives.
//!
//! Import invariants (see also `store`): imported rows go into `events` under the
//! synthetic device `import:{member_id}`; `seq` is derived from a SHA-256 of the row's
//! identifier column and value, its instant, kind and quantity, and how many identical
//! rows came before it in the file. Importing the same file again, or a longer file that
//! starts with it, stores nothing twice; two identical rows in one file stay two events.

use crate::domain::parse_date_or_time;
use crate::registry::RowError;
use crate::store::StoreError;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use chrono_tz::Tz;
use rollcall_shared::limits::{MAX_FUTURE_SKEW_S, MAX_QTY, MAX_TIMESTAMP_S, MIN_TIMESTAMP_S};
use rollcall_shared::{DeviceId, EventKind, MemberId};
use rusqlite::{params, Connection};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Why a usage file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The header is not one of the accepted ones.
    #[error("line 1: header must be member_id,occurred_at,kind,qty or device_id,occurred_at,kind,qty (qty optional); found {0:?}")]
    Header(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for UsageError {
    fn from(e: rusqlite::Error) -> Self {
        UsageError::Store(StoreError::Sqlite(e))
    }
}

/// Whose usage a row is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A member, by id.
    Member(MemberId),
    /// A device, by id (its member is looked up in the registry).
    Device(DeviceId),
}

/// When a row's usage happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum When {
    /// A calendar date (the member's local day).
    Date(NaiveDate),
    /// An instant.
    Instant(DateTime<Utc>),
}

impl When {
    /// The calendar day in `tz`.
    pub fn local_date(self, tz: Tz) -> NaiveDate {
        match self {
            When::Date(d) => d,
            When::Instant(t) => t.with_timezone(&tz).date_naive(),
        }
    }
    /// The instant: a date becomes noon in `tz`.
    pub fn instant(self, tz: Tz) -> DateTime<Utc> {
        match self {
            When::Instant(t) => t,
            When::Date(d) => {
                let noon = d.and_hms_opt(12, 0, 0).expect("noon exists");
                tz.from_local_datetime(&noon)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|| noon.and_utc())
            }
        }
    }
}

/// One valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// 1-based line number (the header is line 1).
    pub line: u64,
    /// Whose usage.
    pub subject: Subject,
    /// When.
    pub when: When,
    /// What.
    pub kind: EventKind,
    /// How much.
    pub qty: u32,
}

/// A parsed file: valid rows and rejected ones.
#[derive(Debug, Clone, Default)]
pub struct ParsedUsage {
    /// Valid rows in file order.
    pub rows: Vec<UsageRow>,
    /// Rejected rows, with line numbers.
    pub rejected: Vec<RowError>,
}

/// Parses a usage CSV. A bad header is an error; bad rows are collected with line numbers.
pub fn parse(bytes: &[u8]) -> Result<ParsedUsage, UsageError> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(bytes);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| UsageError::Header(e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let by_device = match headers.first().map(String::as_str) {
        Some("member_id") => false,
        Some("device_id") => true,
        _ => return Err(UsageError::Header(headers.join(","))),
    };
    let cols = headers.len();
    if !(cols == 3 || cols == 4)
        || headers[1] != "occurred_at"
        || headers[2] != "kind"
        || (cols == 4 && headers[3] != "qty")
    {
        return Err(UsageError::Header(headers.join(",")));
    }
    let mut out = ParsedUsage::default();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.rejected.push(RowError {
                    line: e.position().map(|p| p.line()).unwrap_or(0),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        match parse_row(&rec, cols, by_device) {
            Ok((subject, when, kind, qty)) => out.rows.push(UsageRow {
                line,
                subject,
                when,
                kind,
                qty,
            }),
            Err(error) => out.rejected.push(RowError { line, error }),
        }
    }
    Ok(out)
}

fn parse_row(
    rec: &csv::StringRecord,
    cols: usize,
    by_device: bool,
) -> Result<(Subject, When, EventKind, u32), String> {
    if rec.len() != cols {
        return Err(format!("expected {cols} fields, found {}", rec.len()));
    }
    let id = rec.get(0).unwrap_or("");
    let subject = if by_device {
        Subject::Device(DeviceId::parse(id).map_err(|e| e.to_string())?)
    } else {
        Subject::Member(MemberId::parse(id).map_err(|e| e.to_string())?)
    };
    let at = rec.get(1).unwrap_or("");
    let when = match NaiveDate::parse_from_str(at, "%Y-%m-%d") {
        Ok(d) => When::Date(d),
        // Not a date alone, so the zone is not used.
        Err(_) => When::Instant(
            parse_date_or_time(at, chrono_tz::UTC).map_err(|e| format!("occurred_at: {e}"))?,
        ),
    };
    let kind = EventKind::parse(rec.get(2).unwrap_or("")).map_err(|e| e.to_string())?;
    let qty = match rec.get(3).unwrap_or("") {
        "" => 1,
        q => q
            .parse::<u32>()
            .ok()
            .filter(|q| (1..=MAX_QTY).contains(q))
            .ok_or_else(|| format!("qty {q:?} is not a whole number in 1..={MAX_QTY}"))?,
    };
    Ok((subject, when, kind, qty))
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportOutcome {
    /// Data rows read.
    pub rows: u64,
    /// Events newly stored.
    pub imported: u64,
    /// Rows already stored by an earlier import.
    pub duplicates: u64,
    /// Rows refused, with line numbers.
    pub rejected: Vec<RowError>,
}

/// The synthetic device imported usage of `member` is stored under.
pub fn import_device(member: &str) -> String {
    format!("import:{member}")
}

/// Imports a usage CSV into the store in one transaction. `default_tz` applies to
/// members without a time zone; `now` (the injected clock) bounds future timestamps and
/// stamps `received_ms`; `progress` is called with the number of rows done.
pub fn import(
    conn: &mut Connection,
    bytes: &[u8],
    default_tz: Tz,
    now: DateTime<Utc>,
    mut progress: impl FnMut(u64, u64),
) -> Result<ImportOutcome, UsageError> {
    let parsed = parse(bytes)?;
    let mut out = ImportOutcome {
        rows: (parsed.rows.len() + parsed.rejected.len()) as u64,
        rejected: parsed.rejected,
        ..Default::default()
    };
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut members: HashMap<String, Tz> = HashMap::new();
    {
        let mut st = tx.prepare("SELECT id, tz FROM members")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        for row in rows {
            let (id, tz) = row?;
            let tz = tz.and_then(|t| t.parse::<Tz>().ok()).unwrap_or(default_tz);
            members.insert(id, tz);
        }
    }
    let mut devices: HashMap<String, String> = HashMap::new();
    {
        let mut st = tx.prepare("SELECT id, member_id FROM devices")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        for row in rows {
            let (d, m) = row?;
            devices.insert(d, m);
        }
    }
    let total = parsed.rows.len() as u64;
    let commit_seq = crate::store::next_commit_seq(&tx)?;
    let mut seen: HashMap<[u8; 32], u32> = HashMap::new();
    let received_ms = now.timestamp_millis();
    let latest_ok = (now.timestamp() + MAX_FUTURE_SKEW_S).min(MAX_TIMESTAMP_S);
    {
        let mut insert = tx.prepare(
            "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, attrs, clock_suspect, fingerprint, commit_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, 0, ?8, ?9) ON CONFLICT(device_id, seq) DO NOTHING",
        )?;
        for (i, row) in parsed.rows.iter().enumerate() {
            if i % 1024 == 0 {
                progress(i as u64, total);
            }
            let (column, id, member) = match &row.subject {
                Subject::Member(m) => ("member_id", m.as_str(), Some(m.as_str().to_owned())),
                Subject::Device(d) => ("device_id", d.as_str(), devices.get(d.as_str()).cloned()),
            };
            let Some(member) = member else {
                out.rejected.push(RowError {
                    line: row.line,
                    error: format!("no registered device with id {id:?}"),
                });
                continue;
            };
            let Some(&tz) = members.get(&member) else {
                out.rejected.push(RowError {
                    line: row.line,
                    error: format!("no member with id {member:?}"),
                });
                continue;
            };
            let at = row.when.instant(tz);
            if at.timestamp() < MIN_TIMESTAMP_S || at.timestamp() > latest_ok {
                out.rejected.push(RowError {
                    line: row.line,
                    error: format!(
                        "occurred_at {} is before 2000 or in the future",
                        at.to_rfc3339()
                    ),
                });
                continue;
            }
            let content = Sha256::new()
                .chain_update(column)
                .chain_update([0])
                .chain_update(id)
                .chain_update([0])
                .chain_update(at.timestamp_millis().to_be_bytes())
                .chain_update(row.kind.as_str())
                .chain_update([0])
                .chain_update(row.qty.to_be_bytes())
                .finalize();
            let content: [u8; 32] = content.into();
            let nth = seen.entry(content).or_default();
            let key = Sha256::new()
                .chain_update(content)
                .chain_update(nth.to_be_bytes())
                .finalize();
            *nth += 1;
            // Positive and non-zero, like a real sequence number.
            let seq = (i64::from_be_bytes(key[..8].try_into().expect("8 bytes")) & i64::MAX).max(1);
            let fingerprint = i64::from_be_bytes(content[..8].try_into().expect("8 bytes"));
            let n = insert.execute(params![
                import_device(&member),
                seq,
                member,
                row.kind.as_str(),
                row.qty as i64,
                at.timestamp_millis(),
                received_ms,
                fingerprint,
                commit_seq
            ])?;
            if n == 1 {
                out.imported += 1;
            } else {
                out.duplicates += 1;
            }
        }
    }
    tx.commit()?;
    progress(total, total);
    out.rejected.sort_by_key(|r| r.line);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap()
    }

    #[test]
    fn bad_rows_are_reported_by_line_and_good_ones_kept() {
        let csv = b"member_id,occurred_at,kind,qty\n\
m1,2026-01-05,brew,2\n\
m 1,2026-01-05,brew,1\n\
m1,05/01/2026,brew,1\n\
m1,2026-01-05,Brew,1\n\
m1,2026-01-05,brew,0\n\
m1,2026-01-05T08:00:00+01:00,brew,\n\
m1,2026-01-05\n";
        let p = parse(csv).unwrap();
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[1].qty, 1);
        let lines: Vec<u64> = p.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 8]);
        assert!(
            p.rejected[0].error.contains("member id"),
            "{:?}",
            p.rejected
        );
        assert!(p.rejected[1].error.contains("occurred_at"));
        assert!(p.rejected[3].error.contains("qty"));
    }

    #[test]
    fn a_wrong_header_is_refused() {
        assert!(matches!(
            parse(b"id,date,kind\nm1,2026-01-01,brew\n"),
            Err(UsageError::Header(_))
        ));
        assert!(parse(b"device_id,occurred_at,kind\nd1,2026-01-01,brew\n").is_ok());
    }

    #[test]
    fn a_date_lands_on_that_day_in_the_members_zone() {
        let d = When::Date(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        for tz in [
            chrono_tz::Pacific::Auckland,
            chrono_tz::America::Los_Angeles,
            chrono_tz::UTC,
        ] {
            assert_eq!(
                d.instant(tz).with_timezone(&tz).date_naive(),
                d.local_date(tz)
            );
        }
    }

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::store::open_writer(dir.path()).unwrap();
        let m = crate::registry::NewMember::parse(
            "m1",
            "Ann",
            None,
            None,
            Some("Europe/Berlin"),
            None,
            None,
            "US",
        )
        .unwrap();
        crate::registry::upsert_member(&c, &m, now()).unwrap();
        (dir, c)
    }

    #[test]
    fn importing_the_same_file_twice_changes_nothing() {
        let (_d, mut c) = store();
        let csv = b"member_id,occurred_at,kind,qty\n\
m1,2026-01-05,brew,1\n\
m1,2026-01-05,brew,1\n\
m1,2026-01-06T07:00:00Z,brew,3\n\
ghost,2026-01-06,brew,1\n\
m1,2031-01-01,brew,1\n\
m1,1999-12-01,brew,1\n";
        let a = import(&mut c, csv, chrono_tz::UTC, now(), |_, _| {}).unwrap();
        assert_eq!((a.rows, a.imported, a.duplicates), (6, 3, 0));
        let lines: Vec<u64> = a.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![5, 6, 7]);
        let b = import(&mut c, csv, chrono_tz::UTC, now(), |_, _| {}).unwrap();
        assert_eq!((b.imported, b.duplicates), (0, 3));
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM events WHERE member_id = 'm1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3);
        // Imported usage counts in `members show`.
        let v = crate::registry::show_member(&c, &MemberId::parse("m1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(v.usage.events, 3);
        assert_eq!(v.usage.by_kind["brew"], 5);
    }
}
