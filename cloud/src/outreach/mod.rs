//! Personalised outreach: when usage shows that a member is drifting, starting or
//! excelling, the right message goes to the right member, once, at a decent hour. The
//! design note is `docs/outreach.md`.
//!
//! ```text
//! triggers (state transitions, onboarding, milestones, orders)
//!    └─► rules ([outreach.rules]) ─► render (minijinja, strict) ─► policy ─► delivery queue
//!                                                                    │
//!          1 consent/suppression · 2 quiet hours · 3 caps · 4 dedup + relevance
//! ```
//!
//! # Invariants
//! - One `outreach` row per (rule, member, trigger occurrence, channel): re-scanning the
//!   same triggers changes nothing. At most one row per (rule, member, episode, channel) is
//!   ever queued; later ones are `skipped` with `duplicate_episode`.
//! - Policy runs in a fixed order and every decision is appended to `outreach_log` with a
//!   machine-readable reason ([`reasons`]); a held message is re-checked in full when due.
//! - A queued message and its delivery row are written in the same transaction.
//! - Time comes from the caller (the injected clock); calendar days, weeks and quiet hours
//!   are the member's, in their IANA time zone, or explicitly the business's when unknown.
//!
//! # Layout
//! - [`config`]: `[outreach]` keys and the default rules.
//! - [`templates`]: minijinja with strict undefined; every template is rendered against a
//!   sample context at load.
//! - [`context`]: the member's profile and usage summary a template sees.
//! - [`triggers`]: finding triggers (transitions, onboarding, milestones) and episodes;
//!   [`OrderEvent`] for the orders code.
//! - [`engine`]: planning, policy, release of held messages, cancellation; [`Outreach::tick`].
//! - [`optout`]: signed opt-out tokens.
//! - [`view`]: `outreach list`, `outreach preview`, the HTTP view.

pub mod config;
pub mod context;
pub mod engine;
pub mod optout;
pub mod templates;
pub mod triggers;
pub mod view;

pub use engine::{Outreach, TickReport};
pub use triggers::{OrderEvent, Trigger};

use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why outreach could not run.
#[derive(Debug, thiserror::Error)]
pub enum OutreachError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The delivery queue refused a row.
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
    /// A template failed.
    #[error(transparent)]
    Template(#[from] templates::TemplateError),
    /// The opt-out key could not be read or created.
    #[error("opt-out key: {0}")]
    Key(std::io::Error),
    /// A request that makes no sense (unknown member or rule).
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for OutreachError {
    fn from(e: rusqlite::Error) -> Self {
        OutreachError::Store(StoreError::Sqlite(e))
    }
}

/// What raises outreach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// Scoring moved the member into `lapsing` (from `new`, `active` or `champion`).
    ToLapsing,
    /// Scoring moved the member into `lapsed`.
    ToLapsed,
    /// Back to `active` or `champion` from `lapsing` or `lapsed`.
    WelcomeBack,
    /// Became a `champion`.
    Champion,
    /// Day 1: the member joined.
    OnboardingWelcome,
    /// Day 7, and the member has barely started.
    OnboardingNudge,
    /// The Nth use (`outreach.milestone_uses`).
    MilestoneUses,
    /// N consecutive active days (`outreach.milestone_streak_days`).
    MilestoneStreak,
    /// A device order was accepted (raised by the orders code through [`OrderEvent`]).
    OrderAccepted,
    /// A device order can still be cancelled (raised by the orders code).
    OrderCancellable,
}

impl TriggerKind {
    /// Every kind.
    pub const ALL: [TriggerKind; 10] = [
        TriggerKind::ToLapsing,
        TriggerKind::ToLapsed,
        TriggerKind::WelcomeBack,
        TriggerKind::Champion,
        TriggerKind::OnboardingWelcome,
        TriggerKind::OnboardingNudge,
        TriggerKind::MilestoneUses,
        TriggerKind::MilestoneStreak,
        TriggerKind::OrderAccepted,
        TriggerKind::OrderCancellable,
    ];
    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            TriggerKind::ToLapsing => "to_lapsing",
            TriggerKind::ToLapsed => "to_lapsed",
            TriggerKind::WelcomeBack => "welcome_back",
            TriggerKind::Champion => "champion",
            TriggerKind::OnboardingWelcome => "onboarding_welcome",
            TriggerKind::OnboardingNudge => "onboarding_nudge",
            TriggerKind::MilestoneUses => "milestone_uses",
            TriggerKind::MilestoneStreak => "milestone_streak",
            TriggerKind::OrderAccepted => "order_accepted",
            TriggerKind::OrderCancellable => "order_cancellable",
        }
    }
    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
    /// The engagement states in which a message for this trigger is still relevant
    /// (`None`: always relevant).
    pub fn relevant_states(self) -> Option<&'static [&'static str]> {
        match self {
            TriggerKind::ToLapsing => Some(&["lapsing", "lapsed"]),
            TriggerKind::ToLapsed => Some(&["lapsed"]),
            TriggerKind::WelcomeBack => Some(&["active", "champion"]),
            TriggerKind::Champion => Some(&["champion"]),
            _ => None,
        }
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message's category: consent, caps and quiet hours depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// About something the member did (an order): sent even after a marketing opt-out.
    Transactional,
    /// Everything else: needs consent.
    Marketing,
}

impl Category {
    /// The category's name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Transactional => "transactional",
            Category::Marketing => "marketing",
        }
    }
    /// Parses a category name.
    pub fn parse(s: &str) -> Option<Self> {
        [Category::Transactional, Category::Marketing]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// The machine-readable reasons recorded for skips, holds and cancellations.
pub mod reasons {
    /// Consent: the member opted out of this channel and category.
    pub const OPTED_OUT: &str = "opted_out";
    /// Consent: no e-mail address for the e-mail channel.
    pub const NO_ADDRESS: &str = "no_address";
    /// Consent: no registered device for the device channel.
    pub const NO_DEVICE: &str = "no_device";
    /// Consent: no webhook endpoint configured.
    pub const NO_ENDPOINT: &str = "no_endpoint";
    /// Consent: no SMTP server configured.
    pub const NO_SMTP: &str = "no_smtp";
    /// Quiet hours in the member's time zone: held until they end.
    pub const QUIET_HOURS: &str = "quiet_hours";
    /// The member's time zone is unknown: the business's was used (logged, not a skip).
    pub const TZ_FALLBACK: &str = "tz_fallback_business";
    /// Frequency cap: the member's calendar day is full.
    pub const CAP_DAILY: &str = "frequency_cap_daily";
    /// Frequency cap: the member's calendar week is full.
    pub const CAP_WEEKLY: &str = "frequency_cap_weekly";
    /// Dedup: the same rule already reached the member on this channel in this episode.
    pub const DUPLICATE_EPISODE: &str = "duplicate_episode";
    /// The member's state changed: the message no longer fits.
    pub const NO_LONGER_RELEVANT: &str = "no_longer_relevant";
    /// The template failed on this member's data.
    pub const RENDER_FAILED: &str = "render_failed";
    /// The rule was disabled or removed while the message was held.
    pub const RULE_DISABLED: &str = "rule_disabled";
    /// The member's personal data was erased: no outreach reaches an erased member.
    pub const MEMBER_ERASED: &str = "member_erased";
}
