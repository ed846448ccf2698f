//! `model fit --from-csv`: fitting on a usage file without touching the store.
//!
//! Events after the calibration end are ignored; each subject's (member's, or device's
//! when the file is by device) clock starts at their first active day; recency and age
//! run from there to the calibration end, in whole days converted to the unit given,
//! with several events on one day counted once: the way the CDNOW summary is built.
//! Dates are taken as written; RFC 3339 instants by their UTC date.

use super::fit::{self, FitData, FitOptions, FitResult};
use super::model::ModelKind;
use super::summary::{day_number, ActiveDays, DaySummary};
use super::ScoringError;
use crate::registry::RowError;
use crate::usage::{self, Subject};
use chrono::NaiveDate;
use std::collections::BTreeMap;

/// The time unit of a fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Days.
    Days,
    /// Weeks (7 days).
    Weeks,
}

impl Unit {
    /// Days in one unit.
    pub fn days(self) -> f64 {
        match self {
            Unit::Days => 1.0,
            Unit::Weeks => 7.0,
        }
    }
    /// Parses `days` or `weeks`.
    pub fn parse(s: &str) -> Option<Unit> {
        match s {
            "days" | "day" => Some(Unit::Days),
            "weeks" | "week" => Some(Unit::Weeks),
            _ => None,
        }
    }
}

/// Subjects' summaries from a usage file.
#[derive(Debug, Clone, Default)]
pub struct CsvSummaries {
    /// Subject id (`device:` prefixed for files by device) and summary, in id order.
    pub subjects: Vec<(String, DaySummary)>,
    /// Rejected rows.
    pub rejected: Vec<RowError>,
}

/// Summarises a usage CSV as of the end of `calibration_end`.
pub fn summarise(bytes: &[u8], calibration_end: NaiveDate) -> Result<CsvSummaries, ScoringError> {
    let parsed = usage::parse(bytes)?;
    let end = day_number(calibration_end);
    let mut days: BTreeMap<String, ActiveDays> = BTreeMap::new();
    for row in &parsed.rows {
        let id = match &row.subject {
            Subject::Member(m) => m.as_str().to_owned(),
            Subject::Device(d) => format!("device:{}", d.as_str()),
        };
        let day = day_number(row.when.local_date(chrono_tz::UTC));
        days.entry(id).or_default().insert(day, day as i64);
    }
    let subjects = days
        .into_iter()
        .filter_map(|(id, d)| {
            // Day numbers stand in for instants: "as of" the end day is a prefix by day.
            let md = d.summarise(None, end, end as i64)?;
            Some((id, md.summary))
        })
        .collect();
    Ok(CsvSummaries {
        subjects,
        rejected: parsed.rejected,
    })
}

/// Fits `kind` on a usage CSV calibrated up to `calibration_end`, in `unit`.
pub fn fit_csv(
    bytes: &[u8],
    calibration_end: NaiveDate,
    unit: Unit,
    kind: ModelKind,
) -> Result<(FitResult, Vec<RowError>), ScoringError> {
    let s = summarise(bytes, calibration_end)?;
    let data = FitData::new(s.subjects.iter().map(|(_, d)| *d), unit.days());
    let r = fit::fit(&data, &FitOptions::new(kind))?;
    Ok((r, s.rejected))
}
