//! Capture: turning "this happened" into a durable outbox entry. Shared by the CLI
//! (`rollcall-agent record`) and the local socket, so both validate the same way.
//!
//! Rules:
//! - `kind` must parse as an [`EventKind`]; `qty` (default 1) must be in `1..=MAX_QTY`;
//!   attributes must pass [`validate_attrs`]; an explicit `at` must be RFC 3339.
//! - `at` defaults to the agent clock's now. When the time is not believable
//!   ([`UsageEvent::time_is_suspect`]: before the agent's build date, or far ahead of the
//!   device clock) the event is stored with `clock_suspect = true`: flagged, never dropped.
//!   A time outside 2000..2100, the agent's own or one the firmware gives (an
//!   unsynchronised clock reading 1970), is stored as the nearest time the protocol can
//!   carry (2000-01-01T00:00:00Z, or the last second of 2099), flagged.
//! - The event is committed to the outbox before [`Capture::record`] returns.

use crate::outbox::{NewEvent, Outbox, OutboxError};
use chrono::{DateTime, Utc};
use rollcall_shared::limits::{MAX_QTY, MAX_TIMESTAMP_S, MIN_TIMESTAMP_S};
use rollcall_shared::payload::{validate_attrs, UsageEvent};
use rollcall_shared::{Clock, EventKind, Seq};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why an event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The request itself is invalid; sending it again cannot help.
    #[error("{0}")]
    Invalid(String),
    /// The outbox refused or failed (see [`OutboxError::Full`]).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// One request to record an event, as given on the CLI or the socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// The event kind (`brew`).
    pub kind: String,
    /// How much; default 1.
    #[serde(default)]
    pub qty: Option<u64>,
    /// When it happened (RFC 3339); default now.
    #[serde(default)]
    pub at: Option<String>,
    /// Attributes.
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
}

/// What was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The event's seq.
    pub seq: Seq,
    /// The event was flagged because the device clock looked wrong.
    pub clock_suspect: bool,
}

/// Validates requests and appends them to an outbox.
#[derive(Clone)]
pub struct Capture {
    outbox: Arc<dyn Outbox>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

/// Parses an event kind with the CLI's and socket's wording.
pub fn parse_kind(s: &str) -> Result<EventKind, CaptureError> {
    EventKind::parse(s).map_err(|e| CaptureError::Invalid(e.to_string()))
}

/// Checks a quantity.
pub fn parse_qty(q: u64) -> Result<u32, CaptureError> {
    if (1..=u64::from(MAX_QTY)).contains(&q) {
        Ok(q as u32)
    } else {
        Err(CaptureError::Invalid(format!(
            "qty {q} is outside 1..={MAX_QTY}"
        )))
    }
}

/// Parses an explicit event time (RFC 3339). One outside what the protocol carries is
/// kept: [`Capture::event`] moves it into range and flags it.
pub fn parse_at(s: &str) -> Result<DateTime<Utc>, CaptureError> {
    Ok(DateTime::parse_from_rfc3339(s)
        .map_err(|e| CaptureError::Invalid(format!("at {s:?} is not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc))
}

/// Parses one `key=value` attribute and checks it against the limits.
pub fn parse_attr(s: &str) -> Result<(String, String), CaptureError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| CaptureError::Invalid(format!("attribute {s:?} is not key=value")))?;
    let one = BTreeMap::from([(k.to_owned(), v.to_owned())]);
    validate_attrs(&one).map_err(|e| CaptureError::Invalid(strip_prefix(e.to_string())))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Builds an attribute map from `key=value` pairs, refusing repeated keys.
pub fn collect_attrs(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, CaptureError> {
    let mut attrs = BTreeMap::new();
    for (k, v) in pairs {
        if attrs.insert(k.clone(), v).is_some() {
            return Err(CaptureError::Invalid(format!(
                "attribute {k:?} is given twice"
            )));
        }
    }
    validate_attrs(&attrs).map_err(|e| CaptureError::Invalid(strip_prefix(e.to_string())))?;
    Ok(attrs)
}

/// `t` moved into the range the protocol can carry (2000..2100). Device clocks that never
/// synchronised read 1970; a timestamp the cloud would refuse would lose the whole report.
pub fn protocol_time(t: DateTime<Utc>) -> DateTime<Utc> {
    let min = DateTime::from_timestamp(MIN_TIMESTAMP_S, 0).expect("valid bound");
    let max = DateTime::from_timestamp(MAX_TIMESTAMP_S - 1, 0).expect("valid bound");
    t.clamp(min, max)
}

fn strip_prefix(msg: String) -> String {
    msg.strip_prefix("malformed payload: ")
        .map(str::to_owned)
        .unwrap_or(msg)
}

impl Capture {
    /// Capture into `outbox`, judging times by `clock`.
    pub fn new(outbox: Arc<dyn Outbox>, clock: Arc<dyn Clock>) -> Self {
        Self { outbox, clock }
    }

    /// Validates a request and builds the event to store (no I/O).
    pub fn prepare(&self, req: &RecordRequest) -> Result<NewEvent, CaptureError> {
        let kind = parse_kind(&req.kind)?;
        let qty = parse_qty(req.qty.unwrap_or(1))?;
        let attrs = req.attrs.clone();
        validate_attrs(&attrs).map_err(|e| CaptureError::Invalid(strip_prefix(e.to_string())))?;
        let explicit = req.at.as_deref().map(parse_at).transpose()?;
        Ok(self.event(kind, qty, explicit, attrs))
    }

    /// Builds the event from already-validated parts, applying the clock rules.
    pub fn event(
        &self,
        kind: EventKind,
        qty: u32,
        at: Option<DateTime<Utc>>,
        attrs: BTreeMap<String, String>,
    ) -> NewEvent {
        let now = self.clock.now();
        let raw = at.unwrap_or(now);
        let occurred_at = protocol_time(raw);
        let clock_suspect = occurred_at != raw || UsageEvent::time_is_suspect(occurred_at, now);
        NewEvent {
            kind,
            qty,
            occurred_at,
            attrs,
            clock_suspect,
        }
    }

    /// Validates and durably stores one event. Blocks on the outbox: async callers use
    /// `spawn_blocking` when [`Outbox::may_block`] says so.
    pub fn record(&self, req: &RecordRequest) -> Result<Recorded, CaptureError> {
        let ev = self.prepare(req)?;
        self.store(ev)
    }

    /// Stores an already-built event.
    pub fn store(&self, ev: NewEvent) -> Result<Recorded, CaptureError> {
        let clock_suspect = ev.clock_suspect;
        let seq = self.outbox.append(ev)?;
        Ok(Recorded { seq, clock_suspect })
    }

    /// The outbox events go to.
    pub fn outbox(&self) -> &Arc<dyn Outbox> {
        &self.outbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{MemoryOutbox, OutboxLimits};
    use rollcall_shared::ManualClock;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn capture_at(now: &str) -> Capture {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t(now)));
        Capture::new(
            Arc::new(MemoryOutbox::new(OutboxLimits::default(), clock.clone())),
            clock,
        )
    }

    fn req(kind: &str) -> RecordRequest {
        RecordRequest {
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_request_is_stored_with_defaults() {
        let c = capture_at("2026-11-24T08:00:00Z");
        let r = c.record(&req("brew")).unwrap();
        assert_eq!((r.seq.get(), r.clock_suspect), (1, false));
        let ev = c.prepare(&req("brew")).unwrap();
        assert_eq!((ev.qty, ev.occurred_at), (1, t("2026-11-24T08:00:00Z")));
    }

    #[test]
    fn invalid_kinds_quantities_times_and_attrs_are_refused() {
        let c = capture_at("2026-11-24T08:00:00Z");
        for bad in [
            req("Brew"),
            RecordRequest {
                qty: Some(0),
                ..req("brew")
            },
            RecordRequest {
                qty: Some(u64::from(MAX_QTY) + 1),
                ..req("brew")
            },
            RecordRequest {
                at: Some("yesterday".into()),
                ..req("brew")
            },
            RecordRequest {
                attrs: BTreeMap::from([("bad key".into(), "v".into())]),
                ..req("brew")
            },
            RecordRequest {
                attrs: BTreeMap::from([("k".into(), "v".repeat(129))]),
                ..req("brew")
            },
        ] {
            assert!(
                matches!(c.record(&bad), Err(CaptureError::Invalid(_))),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(c.outbox().stats().unwrap().depth, 0);
    }

    #[test]
    fn suspect_times_are_flagged_not_dropped() {
        let c = capture_at("2026-11-24T08:00:00Z");
        let future = RecordRequest {
            at: Some("2026-11-25T08:00:00Z".into()),
            ..req("brew")
        };
        assert!(c.record(&future).unwrap().clock_suspect);
        let before_build = RecordRequest {
            at: Some("2020-01-01T00:00:00Z".into()),
            ..req("brew")
        };
        assert!(c.record(&before_build).unwrap().clock_suspect);
        let fine = RecordRequest {
            at: Some("2026-11-24T07:00:00+01:00".into()),
            ..req("brew")
        };
        assert!(!c.record(&fine).unwrap().clock_suspect);
        assert_eq!(c.outbox().stats().unwrap().depth, 3);
    }

    #[test]
    fn an_unsynchronised_clock_at_1970_is_flagged_and_clamped() {
        let c = capture_at("1970-01-01T00:00:05Z");
        let ev = c.prepare(&req("brew")).unwrap();
        assert!(ev.clock_suspect);
        assert_eq!(ev.occurred_at.timestamp(), MIN_TIMESTAMP_S);
    }

    #[test]
    fn a_time_the_firmware_gives_outside_the_protocols_range_is_kept_flagged_and_clamped() {
        let c = capture_at("2026-11-24T08:00:00Z");
        for (at, stored) in [
            ("1970-01-01T00:00:10Z", MIN_TIMESTAMP_S),
            ("2150-01-01T00:00:00Z", MAX_TIMESTAMP_S - 1),
        ] {
            let ev = c
                .prepare(&RecordRequest {
                    at: Some(at.into()),
                    ..req("brew")
                })
                .unwrap();
            assert!(ev.clock_suspect, "{at}");
            assert_eq!(ev.occurred_at.timestamp(), stored, "{at}");
        }
        assert!(parse_at("yesterday").is_err());
    }

    #[test]
    fn attribute_pairs_parse_and_repeats_are_refused() {
        assert_eq!(
            parse_attr("drink=latte=hot").unwrap(),
            ("drink".into(), "latte=hot".into())
        );
        assert!(parse_attr("novalue").is_err());
        assert!(parse_attr("=x").is_err());
        let pairs = vec![
            ("a".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        assert!(collect_attrs(pairs).is_err());
        let many = (0..17).map(|i| (format!("k{i}"), "v".to_owned()));
        assert!(collect_attrs(many).is_err());
    }

    #[test]
    fn socket_requests_reject_unknown_fields() {
        assert!(
            serde_json::from_str::<RecordRequest>(r#"{"kind":"brew","colour":"red"}"#).is_err()
        );
        let r: RecordRequest =
            serde_json::from_str(r#"{"kind":"brew","qty":2,"attrs":{"drink":"latte"}}"#).unwrap();
        assert_eq!(r.qty, Some(2));
    }
}
