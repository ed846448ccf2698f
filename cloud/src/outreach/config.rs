//! `[outreach]`: rules, templates, policy and webhook endpoints.

use super::{Category, TriggerKind};
use crate::config::Secret;
use crate::delivery::DeliveryChannel;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[outreach]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutreachConfig {
    /// Run the outreach planner in `serve`.
    pub enabled: bool,
    /// How often `serve` looks for triggers and releases held messages (real seconds).
    pub tick_interval_s: u64,
    /// The business's name, for templates (`business.name`).
    pub business_name: String,
    /// The business's IANA time zone: used, explicitly, for members without a known one.
    pub business_tz: String,
    /// Base URL of this cloud as members reach it, for opt-out links.
    pub public_url: String,
    /// Directory of the templates (`NAME.txt.j2`), relative to the config file; unset: the
    /// built-in templates.
    pub templates_dir: Option<PathBuf>,
    /// Device model named in templates when the device reported none (`model` attribute).
    pub default_device_model: String,
    /// Another trigger of the same kind within this many days belongs to the same episode
    /// (a member flapping in and out of `lapsing` gets one message).
    pub episode_gap_days: u32,
    /// Members who joined within this many days get the day-1 welcome (older members are
    /// not welcomed when outreach is first switched on).
    pub onboarding_lookback_days: u32,
    /// The day-7 nudge goes to members with at most this many active days by then.
    pub nudge_max_active_days: u32,
    /// The usage milestone (the Nth use).
    pub milestone_uses: u64,
    /// The streak milestone, in consecutive active days.
    pub milestone_streak_days: u32,
    /// Milestones reached more than this many days ago are not celebrated late.
    pub milestone_lookback_days: u32,
    /// Quiet hours in the member's time zone.
    pub quiet_hours: QuietHours,
    /// Frequency caps per category (`[outreach.caps.marketing]`, `[outreach.caps.transactional]`).
    pub caps: BTreeMap<Category, CapConfig>,
    /// Webhook endpoints (`[[outreach.webhooks]]`), by name.
    pub webhooks: Vec<WebhookConfig>,
    /// The rules, by name (`[outreach.rules.win_back]`).
    pub rules: BTreeMap<String, RuleConfig>,
}

impl Default for OutreachConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_interval_s: 60,
            business_name: "Rollcall".into(),
            business_tz: "UTC".into(),
            public_url: "http://127.0.0.1:8080".into(),
            templates_dir: None,
            default_device_model: "machine".into(),
            episode_gap_days: 30,
            onboarding_lookback_days: 3,
            nudge_max_active_days: 1,
            milestone_uses: 100,
            milestone_streak_days: 30,
            milestone_lookback_days: 7,
            quiet_hours: QuietHours::default(),
            caps: BTreeMap::from([
                (
                    Category::Marketing,
                    CapConfig {
                        per_day: 1,
                        per_week: 3,
                    },
                ),
                (
                    Category::Transactional,
                    CapConfig {
                        per_day: 20,
                        per_week: 100,
                    },
                ),
            ]),
            webhooks: Vec::new(),
            rules: default_rules(),
        }
    }
}

/// `[outreach.quiet_hours]`: no message in these categories between `start` and `end`,
/// local time; messages are held until `end`, never dropped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuietHours {
    /// Start, `HH:MM` (local).
    pub start: String,
    /// End, `HH:MM` (local); may be earlier than `start` (the window spans midnight).
    pub end: String,
    /// Categories the quiet hours apply to.
    pub categories: Vec<Category>,
}

impl Default for QuietHours {
    fn default() -> Self {
        Self {
            start: "21:00".into(),
            end: "08:00".into(),
            categories: vec![Category::Marketing, Category::Transactional],
        }
    }
}

impl QuietHours {
    /// `(start, end)` as times of day (validated at load).
    pub fn window(&self) -> (chrono::NaiveTime, chrono::NaiveTime) {
        let p = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M").unwrap_or_default();
        (p(&self.start), p(&self.end))
    }
}

/// Caps for one category, per member and channel, by the member's calendar day and ISO week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    /// Most messages per local calendar day.
    pub per_day: u32,
    /// Most messages per local calendar week (Monday to Sunday).
    pub per_week: u32,
}

/// `[[outreach.webhooks]]`: an endpoint that receives Standard Webhooks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Name that rules (`webhook = "crm"`) and queued deliveries refer to.
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Signing secrets (`whsec_` + base64); every one signs each message, so a receiver
    /// can rotate keys. Secret: never logged.
    pub secrets: Vec<Secret>,
}

/// `[outreach.rules.NAME]`: when a trigger fires, which message goes where.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The trigger.
    pub trigger: TriggerKind,
    /// Channels, each gets its own message: `webhook`, `device`, `email`.
    pub channels: Vec<DeliveryChannel>,
    /// Body template: `{templates_dir}/{template}.txt.j2` (or the built-in one).
    pub template: String,
    /// Subject/title, itself a template.
    #[serde(default)]
    pub subject: String,
    /// `transactional` or `marketing` (consent, caps and quiet hours depend on it).
    pub category: Category,
    /// Higher first when several messages compete for a member's cap.
    #[serde(default)]
    pub priority: i32,
    /// Disabled rules do nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The webhook endpoint for the `webhook` channel (default: the first configured).
    #[serde(default)]
    pub webhook: Option<String>,
}

fn yes() -> bool {
    true
}

fn rule(
    trigger: TriggerKind,
    template: &str,
    subject: &str,
    category: Category,
    priority: i32,
) -> RuleConfig {
    RuleConfig {
        trigger,
        channels: vec![DeliveryChannel::Webhook],
        template: template.into(),
        subject: subject.into(),
        category,
        priority,
        enabled: true,
        webhook: None,
    }
}

/// The rules used when `[outreach.rules]` is absent: one per trigger.
pub fn default_rules() -> BTreeMap<String, RuleConfig> {
    use Category::*;
    use TriggerKind::*;
    BTreeMap::from([
        (
            "welcome".into(),
            rule(
                OnboardingWelcome,
                "welcome",
                "Welcome to {{ business.name }}, {{ member.first_name }}",
                Marketing,
                40,
            ),
        ),
        (
            "first_week_nudge".into(),
            rule(
                OnboardingNudge,
                "first_week_nudge",
                "Getting started with your {{ member.device_model }}",
                Marketing,
                45,
            ),
        ),
        (
            "win_back".into(),
            rule(
                ToLapsing,
                "win_back",
                "We miss you, {{ member.first_name }}",
                Marketing,
                50,
            ),
        ),
        (
            "last_call".into(),
            rule(
                ToLapsed,
                "last_call",
                "Is everything all right, {{ member.first_name }}?",
                Marketing,
                55,
            ),
        ),
        (
            "welcome_back".into(),
            rule(
                WelcomeBack,
                "welcome_back",
                "Welcome back, {{ member.first_name }}",
                Marketing,
                30,
            ),
        ),
        (
            "champion".into(),
            rule(
                Champion,
                "champion",
                "You are one of our top members, {{ member.first_name }}",
                Marketing,
                20,
            ),
        ),
        (
            "hundredth_use".into(),
            rule(
                MilestoneUses,
                "hundredth_use",
                "{{ milestone.uses }} uses and counting",
                Marketing,
                25,
            ),
        ),
        (
            "streak".into(),
            rule(
                MilestoneStreak,
                "streak",
                "{{ milestone.streak_days }} days in a row!",
                Marketing,
                25,
            ),
        ),
        (
            "order_accepted".into(),
            rule(
                OrderAccepted,
                "order_accepted",
                "Your order {{ order.id }} is on its way",
                Transactional,
                90,
            ),
        ),
        (
            "order_cancellable".into(),
            rule(
                OrderCancellable,
                "order_cancellable",
                "Your {{ order.sku }} reorder: cancel until {{ order.cancellable_until }}",
                Transactional,
                95,
            ),
        ),
    ])
}

impl OutreachConfig {
    /// The business time zone (validated at load).
    pub fn business_tz(&self) -> chrono_tz::Tz {
        self.business_tz.parse().unwrap_or(chrono_tz::UTC)
    }

    /// The webhook named `name`.
    pub fn webhook(&self, name: &str) -> Option<&WebhookConfig> {
        self.webhooks.iter().find(|w| w.name == name)
    }

    /// Checks every key, then compiles every template and renders it against a full sample
    /// context (strict: an undefined variable is an error here, not at send time).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.business_tz.parse::<chrono_tz::Tz>().is_err() {
            return Err((
                "outreach.business_tz",
                format!("{:?} is not an IANA time zone", self.business_tz),
            ));
        }
        if self.tick_interval_s == 0 || self.tick_interval_s > 86_400 {
            return Err((
                "outreach.tick_interval_s",
                format!("{} is outside 1..=86400", self.tick_interval_s),
            ));
        }
        for (k, v) in [
            ("outreach.quiet_hours.start", &self.quiet_hours.start),
            ("outreach.quiet_hours.end", &self.quiet_hours.end),
        ] {
            if chrono::NaiveTime::parse_from_str(v, "%H:%M").is_err() {
                return Err((k, format!("{v:?} is not HH:MM")));
            }
        }
        if self.milestone_uses == 0 || self.milestone_streak_days == 0 {
            return Err((
                "outreach.milestone_uses",
                "milestones must be at least 1".into(),
            ));
        }
        // Opt-out links in messages point here: a link that cannot work is worse than none.
        let public = reqwest::Url::parse(&self.public_url);
        if !public.is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
            return Err((
                "outreach.public_url",
                format!(
                    "{:?} is not an http:// or https:// URL (the base of opt-out links)",
                    self.public_url
                ),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for w in &self.webhooks {
            if w.name.is_empty() || !names.insert(w.name.as_str()) {
                return Err((
                    "outreach.webhooks",
                    format!("webhook names must be unique and non-empty ({:?})", w.name),
                ));
            }
            if let Err(e) = reqwest::Url::parse(&w.url)
                .map_err(|e| e.to_string())
                .and_then(|u| {
                    if matches!(u.scheme(), "http" | "https") && u.host().is_some() {
                        Ok(())
                    } else {
                        Err("must be an http:// or https:// URL".into())
                    }
                })
            {
                return Err(("outreach.webhooks", format!("{}: url: {e}", w.name)));
            }
            if w.secrets.is_empty() {
                return Err((
                    "outreach.webhooks",
                    format!("{}: at least one secret is required", w.name),
                ));
            }
            for s in &w.secrets {
                if let Err(e) = crate::delivery::webhook::WebhookSecret::parse(s.expose()) {
                    return Err(("outreach.webhooks", format!("{}: secrets: {e}", w.name)));
                }
            }
        }
        for (name, r) in &self.rules {
            if r.channels.is_empty() {
                return Err((
                    "outreach.rules",
                    format!("{name}: channels must name at least one of webhook, device, email"),
                ));
            }
            if let Some(w) = &r.webhook {
                if self.webhook(w).is_none() {
                    return Err((
                        "outreach.rules",
                        format!("{name}: webhook {w:?} is not in [[outreach.webhooks]]"),
                    ));
                }
            }
        }
        super::templates::Templates::load(self).map_err(|e| ("outreach.rules", e.to_string()))?;
        Ok(())
    }
}
