//! Domain values of the registry that parse instead of validate.

use chrono::{DateTime, NaiveDate, Offset, TimeZone as _, Utc};
use std::fmt;

/// Why a registry value was refused; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not a phone number.
    #[error("phone number {input:?}: {why}")]
    Phone {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// Not an e-mail address.
    #[error("e-mail address {input:?}: {why}")]
    Email {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not an IANA time zone.
    #[error("time zone {0:?} is not an IANA time zone name (for example Europe/Berlin)")]
    TimeZone(String),
    /// Not a date.
    #[error("date {0:?} is neither YYYY-MM-DD nor RFC 3339")]
    Date(String),
    /// A name that is empty or too long.
    #[error("name must be 1 to 200 characters")]
    Name,
    /// Not a language code.
    #[error("language {0:?} is not an ISO 639-1 code like en, es or de")]
    Language(String),
}

/// A member's preferred language: an ISO 639-1 code (`en`, `es`), lower-cased; a region
/// suffix (`es-MX`, `de_AT`) is accepted and dropped.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Language(String);

impl Language {
    /// Parses `en`, `ES`, `es-MX`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let code = input
            .trim()
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_lowercase()) {
            Ok(Self(code))
        } else {
            Err(DomainError::Language(input.to_owned()))
        }
    }
    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form (`+14155550123`). Parsed from any common format;
/// numbers without a country code are read in the configured default region.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses `input`, reading national numbers in `default_region` (ISO 3166 alpha-2, e.g. `US`).
    pub fn parse(input: &str, default_region: &str) -> Result<Self, DomainError> {
        let err = |why: String| DomainError::Phone {
            input: input.to_owned(),
            why,
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err("is empty".into()));
        }
        if trimmed.len() > 40 {
            return Err(err("is longer than 40 characters".into()));
        }
        let region: Option<phonenumber::country::Id> = match default_region.parse() {
            Ok(r) => Some(r),
            Err(_) if trimmed.starts_with('+') => None,
            Err(_) => {
                return Err(err(format!(
                    "has no country code and the default region {default_region:?} is unknown"
                )))
            }
        };
        let n = phonenumber::parse(region, trimmed)
            .map_err(|e| err(format!("cannot be read ({e})")))?;
        if !phonenumber::is_valid(&n) {
            return Err(err("is not a valid number for its country".into()));
        }
        Ok(Self(n.format().mode(phonenumber::Mode::E164).to_string()))
    }
    /// The E.164 form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.0)
    }
}

/// An e-mail address, lower-cased in its domain; checked for shape, not deliverability.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Email(String);

impl Email {
    /// Parses an address of the form `local@domain.tld`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let err = |why| DomainError::Email {
            input: input.to_owned(),
            why,
        };
        let s = input.trim();
        if s.len() > 254 {
            return Err(err("is longer than 254 characters"));
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(|| err("has no '@'"))?;
        if local.is_empty() || local.len() > 64 {
            return Err(err("needs 1 to 64 characters before the '@'"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains spaces or control characters"));
        }
        if !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(err("needs a domain like example.com after the '@'"));
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA time zone name that chrono-tz knows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TimeZone(chrono_tz::Tz);

impl TimeZone {
    /// Parses an IANA name such as `Europe/Berlin`.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        input
            .trim()
            .parse::<chrono_tz::Tz>()
            .map(TimeZone)
            .map_err(|_| DomainError::TimeZone(input.to_owned()))
    }
    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }
    /// The chrono-tz zone.
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0
    }
}

/// The instant a calendar date given without a time (a join date) is stored as, for a
/// member in `tz`: the middle of the hours that date shares in `tz` and in UTC, that is
/// noon UTC moved back by half the zone's offset (New York, UTC−5: 14:30 UTC, 09:30
/// local; Auckland, UTC+13: 05:30 UTC, 18:30 local). Whoever reads it as a date, in the
/// member's zone (scoring, greetings, outreach) or in UTC (the engagement summary, a
/// displayed RFC 3339 time), reads the date that was entered, with at least 5 hours to
/// spare on either side, so a later change of zone by up to that much keeps it too.
pub fn date_instant(date: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let noon_utc = date.and_hms_opt(12, 0, 0).expect("noon exists").and_utc();
    let offset_s = tz
        .offset_from_utc_datetime(&noon_utc.naive_utc())
        .fix()
        .local_minus_utc();
    noon_utc - chrono::Duration::seconds(i64::from(offset_s) / 2)
}

/// Parses `YYYY-MM-DD` (stored as [`date_instant`] in `tz`) or RFC 3339.
pub fn parse_date_or_time(input: &str, tz: chrono_tz::Tz) -> Result<DateTime<Utc>, DomainError> {
    let s = input.trim();
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(date_instant(d, tz));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| DomainError::Date(input.to_owned()))
}

/// A member's display name: 1–200 characters after trimming.
pub fn parse_name(input: &str) -> Result<String, DomainError> {
    let s = input.trim();
    if s.is_empty() || s.chars().count() > 200 {
        return Err(DomainError::Name);
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_in_local_and_international_formats_become_e164() {
        for input in [
            "+1 212 555 0142",
            "(212) 555-0142",
            "212.555.0142",
            "+1-212-555-0142",
            "+12125550142",
        ] {
            assert_eq!(
                PhoneNumber::parse(input, "US").unwrap().as_str(),
                "+12125550142",
                "{input}"
            );
        }
        assert_eq!(
            PhoneNumber::parse("030 901820", "DE").unwrap().as_str(),
            "+4930901820"
        );
        assert_eq!(
            PhoneNumber::parse("0049 30 901820", "DE").unwrap().as_str(),
            "+4930901820"
        );
        assert_eq!(
            PhoneNumber::parse("011 1 212 555 0142", "US")
                .unwrap()
                .as_str(),
            "+12125550142"
        );
    }

    #[test]
    fn bad_phone_numbers_say_what_is_wrong() {
        let e = PhoneNumber::parse("12", "US").unwrap_err().to_string();
        assert!(e.contains("\"12\""), "{e}");
        assert!(PhoneNumber::parse("", "US").is_err());
        assert!(PhoneNumber::parse("not a number", "US").is_err());
        assert!(PhoneNumber::parse("555 0142", "ZZ").is_err());
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain() {
        assert_eq!(
            Email::parse("Maria@Example.COM").unwrap().as_str(),
            "Maria@example.com"
        );
        for bad in [
            "maria",
            "@example.com",
            "maria@example",
            "ma ria@example.com",
            "maria@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_and_dates_parse() {
        assert_eq!(
            TimeZone::parse("Europe/Berlin").unwrap().name(),
            "Europe/Berlin"
        );
        assert!(TimeZone::parse("Mars/Olympus").is_err());
        assert_eq!(
            parse_date_or_time("2026-01-05", chrono_tz::UTC)
                .unwrap()
                .to_rfc3339(),
            "2026-01-05T12:00:00+00:00"
        );
        assert_eq!(
            parse_date_or_time("2026-01-05T08:00:00-05:00", chrono_tz::UTC)
                .unwrap()
                .to_rfc3339(),
            "2026-01-05T13:00:00+00:00"
        );
        assert!(parse_date_or_time("05/01/2026", chrono_tz::UTC).is_err());
    }

    #[test]
    fn a_date_is_stored_on_that_date_both_in_the_members_zone_and_in_utc() {
        let zones = [
            "America/New_York",
            "America/Los_Angeles",
            "Pacific/Honolulu",
            "Pacific/Pago_Pago",
            "UTC",
            "Europe/Berlin",
            "Asia/Kolkata",
            "Pacific/Auckland",
            "Pacific/Chatham",
            "Pacific/Kiritimati",
        ];
        for tz in zones.map(|z| z.parse::<chrono_tz::Tz>().unwrap()) {
            // Winter and summer: both sides of daylight saving time.
            for date in ["2026-01-15", "2026-07-15", "2026-03-08", "2026-11-01"] {
                let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
                let at = date_instant(d, tz);
                assert_eq!(at.date_naive(), d, "{tz} {date}: UTC date of {at}");
                let local = at.with_timezone(&tz);
                assert_eq!(local.date_naive(), d, "{tz} {date}: local date of {local}");
            }
        }
        let ny = "America/New_York".parse::<chrono_tz::Tz>().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        assert_eq!(
            date_instant(d, ny).to_rfc3339(),
            "2026-01-05T14:30:00+00:00"
        );
    }
}
