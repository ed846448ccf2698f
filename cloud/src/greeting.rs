//! The greeting support staff say when a member calls: one or two natural sentences
//! built from that member's own usage ("Hi Maria — I see your Barista Pro made 23 coffees
//! this month, mostly lattes, and your pods refill shipped on Tuesday. How can I help?"),
//! plus the facts behind it.
//!
//! The words live in templates, one per language: `greeting.{lang}.txt.j2` in
//! `outreach.templates_dir/greetings/` when that directory has one, else the built-in
//! English, Spanish and German ones (`config/templates/greetings/`). A member whose
//! language has no template is greeted in English. Every template is rendered against a
//! sample when the cloud starts (strict undefined variables), so a typo stops start-up
//! rather than a call.

use crate::config::CloudConfig;
use crate::outreach::context::summarise_usage;
use crate::scoring::summary::{date_of, local_day};
use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior};
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// The language used when the member's has no template.
pub const DEFAULT_LANG: &str = "en";

/// Built-in greeting templates by language.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "en",
        include_str!("../../config/templates/greetings/greeting.en.txt.j2"),
    ),
    (
        "es",
        include_str!("../../config/templates/greetings/greeting.es.txt.j2"),
    ),
    (
        "de",
        include_str!("../../config/templates/greetings/greeting.de.txt.j2"),
    ),
];

/// Why a greeting could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GreetingError {
    /// A template file could not be read.
    #[error("greeting template {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A template did not compile or render.
    #[error("greeting template for language {lang:?}: {message}")]
    Template {
        /// The language.
        lang: String,
        /// minijinja's message (with line).
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
    /// Summarising usage failed.
    #[error(transparent)]
    Usage(#[from] crate::outreach::OutreachError),
}

/// One fact the greeting was built from, for staff to glance at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    /// What kind of fact (`uses_this_month`, `favourite`, `order`, `quiet_spell`,
    /// `streak`, `milestone`, `champion`, `new_member`, `tenure`).
    pub key: &'static str,
    /// The value.
    pub value: serde_json::Value,
    /// The fact in plain English.
    pub text: String,
}

/// A greeting and the facts behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Greeting {
    /// What to say.
    pub greeting: String,
    /// The language it is in.
    pub language: String,
    /// What it was built from.
    pub facts: Vec<Fact>,
}

/// Greets members: the compiled templates and what they need from the configuration.
pub struct Greeter {
    env: Environment<'static>,
    langs: Vec<String>,
    business_tz: Tz,
    default_model: String,
    items: BTreeMap<String, String>,
    milestone_uses: u64,
}

impl std::fmt::Debug for Greeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greeter")
            .field("langs", &self.langs)
            .finish()
    }
}

/// The template context (what the templates may use; documented in `docs/console.md`).
#[derive(Debug, Clone, Serialize)]
struct Context {
    member: MemberCtx,
    usage: UsageCtx,
    order: Option<OrderCtx>,
    notable: Option<&'static str>,
    milestone: u64,
    state: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct MemberCtx {
    first_name: String,
    /// The model of the member's device, or `outreach.default_device_model` (English).
    device_model: String,
    /// False when `device_model` is only that default, which a template in another
    /// language may say in its own words.
    device_model_known: bool,
    tenure_days: i64,
}

#[derive(Debug, Clone, Serialize)]
struct UsageCtx {
    /// A silence long for this member (a week, or twice their usual gap if longer).
    quiet: bool,
    kind: Option<String>,
    kind_this_month: u64,
    this_month: u64,
    favourite_value: Option<String>,
    last_active: Option<When>,
    current_streak: u32,
    total: u64,
}

#[derive(Debug, Clone, Serialize)]
struct OrderCtx {
    item: String,
    status: &'static str,
    when: When,
}

/// A day, with what templates need to say it in any language.
#[derive(Debug, Clone, Serialize)]
struct When {
    days_ago: i64,
    /// 0 = Monday.
    weekday: u32,
    day: u32,
    month: u32,
    date: String,
}

impl When {
    fn of(day: i32, today: i32) -> Self {
        let d = date_of(day);
        Self {
            days_ago: (today - day).max(0) as i64,
            weekday: d.weekday().num_days_from_monday(),
            day: d.day(),
            month: d.month(),
            date: d.format("%Y-%m-%d").to_string(),
        }
    }
}

impl Greeter {
    /// Compiles the greeting templates and renders each against samples.
    pub fn new(cfg: &CloudConfig) -> Result<Self, GreetingError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let mut sources: BTreeMap<String, String> = BUILT_IN
            .iter()
            .map(|(l, s)| ((*l).to_owned(), (*s).to_owned()))
            .collect();
        if let Some(dir) = &cfg.outreach.templates_dir {
            let dir = dir.join("greetings");
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let Some(lang) = name
                        .strip_prefix("greeting.")
                        .and_then(|n| n.strip_suffix(".txt.j2"))
                    else {
                        continue;
                    };
                    let text = std::fs::read_to_string(e.path()).map_err(|source| {
                        GreetingError::Read {
                            file: e.path().display().to_string(),
                            source,
                        }
                    })?;
                    sources.insert(lang.to_owned(), text);
                }
            }
        }
        let langs: Vec<String> = sources.keys().cloned().collect();
        for (lang, text) in sources {
            env.add_template_owned(lang.clone(), text)
                .map_err(|e| GreetingError::Template {
                    lang: lang.clone(),
                    message: format!("{e:#}"),
                })?;
        }
        let g = Self {
            env,
            langs,
            business_tz: cfg.outreach.business_tz(),
            default_model: cfg.outreach.default_device_model.clone(),
            items: cfg
                .orders
                .catalogue
                .iter()
                .map(|c| (c.sku.clone(), c.name.clone()))
                .collect(),
            milestone_uses: cfg.outreach.milestone_uses,
        };
        for lang in &g.langs {
            for sample in Context::samples() {
                g.render(lang, &sample)?;
            }
        }
        Ok(g)
    }

    /// The languages with a template.
    pub fn languages(&self) -> &[String] {
        &self.langs
    }

    fn render(&self, lang: &str, ctx: &Context) -> Result<String, GreetingError> {
        let err = |e: minijinja::Error| GreetingError::Template {
            lang: lang.to_owned(),
            message: format!("{e:#}"),
        };
        let t = self.env.get_template(lang).map_err(err)?;
        let text = t.render(ctx).map_err(err)?;
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Greets `member_id` as of `now`, or `None` when there is no such member or only the
    /// pseudonym of an erased one (there is no one to greet).
    pub fn greet(
        &self,
        conn: &Connection,
        member_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Greeting>, GreetingError> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            i64,
            Option<String>,
            Option<f64>,
        );
        let row: Option<Row> = conn
            .prepare_cached(
                "SELECT m.name, m.tz, m.lang, COALESCE(m.joined_ms, m.created_ms), s.state, s.rhythm_per_week
                 FROM members m LEFT JOIN member_scores s ON s.member_id = m.id
                 WHERE m.id = ?1 AND m.erased_ms IS NULL",
            )?
            .query_row([member_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .optional()?;
        let Some((name, tz, lang, joined_ms, state, rhythm)) = row else {
            return Ok(None);
        };
        let tz: Tz = tz.and_then(|t| t.parse().ok()).unwrap_or(self.business_tz);
        let usage = summarise_usage(conn, member_id, tz, now, self.milestone_uses)?;
        let today = local_day(now.timestamp_millis(), tz);
        let tenure_days = (today - local_day(joined_ms, tz)).max(0) as i64;
        let first_name = name.split_whitespace().next().unwrap_or(&name).to_owned();
        let device_model = usage
            .device_model
            .clone()
            .unwrap_or_else(|| self.default_model.clone());
        let kind = usage.favourite_kind.clone();
        let kind_this_month = kind
            .as_ref()
            .and_then(|k| usage.this_month_by_kind.get(k).copied())
            .unwrap_or(0);
        let order = self.recent_order(conn, member_id, tz, today)?;
        let milestone_days_ago = usage
            .milestone_reached_ms
            .map(|ms| (today - local_day(ms, tz)) as i64);
        let notable = if milestone_days_ago.is_some_and(|d| d <= 14) {
            Some("milestone")
        } else if usage.current_streak >= 7 {
            Some("streak")
        } else if state.as_deref() == Some("champion") {
            Some("champion")
        } else if tenure_days < 14 {
            Some("new")
        } else {
            None
        };
        let ctx = Context {
            member: MemberCtx {
                first_name,
                device_model: device_model.clone(),
                device_model_known: usage.device_model.is_some(),
                tenure_days,
            },
            usage: UsageCtx {
                quiet: usage
                    .days_silent
                    .is_some_and(|d| d as f64 >= quiet_after_days(rhythm)),
                kind: kind.clone(),
                kind_this_month,
                this_month: usage.this_month,
                favourite_value: usage.favourite_value.clone(),
                last_active: usage.days_silent.map(|d| When::of(today - d as i32, today)),
                current_streak: usage.current_streak,
                total: usage.total,
            },
            order,
            notable,
            milestone: self.milestone_uses,
            state: state.clone(),
        };
        let lang = lang
            .filter(|l| self.langs.iter().any(|x| x == l))
            .unwrap_or_else(|| DEFAULT_LANG.to_owned());
        let greeting = self.render(&lang, &ctx)?;
        let facts = facts(&ctx, &usage, tenure_days, &device_model);
        Ok(Some(Greeting {
            greeting,
            language: lang,
            facts,
        }))
    }

    /// The member's most recent order of the last 21 days that is still news: shipped,
    /// delivered or waiting for confirmation.
    fn recent_order(
        &self,
        conn: &Connection,
        member_id: &str,
        tz: Tz,
        today: i32,
    ) -> Result<Option<OrderCtx>, GreetingError> {
        let since = date_of(today - 21)
            .and_hms_opt(0, 0, 0)
            .map(|d| d.and_utc().timestamp_millis())
            .unwrap_or(0);
        let row: Option<(String, String, i64, i64, Option<i64>)> = conn
            .prepare_cached(
                "SELECT sku, status, decided_ms, updated_ms, fulfilment_requested_ms FROM orders
                 WHERE member_id = ?1 AND updated_ms >= ?2
                   AND status IN ('accepted', 'held_for_confirmation', 'delivered')
                 ORDER BY updated_ms DESC LIMIT 1",
            )?
            .query_row(rusqlite::params![member_id, since], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        Ok(row.map(|(sku, status, decided, updated, shipped)| {
            let (status, at) = match (status.as_str(), shipped) {
                ("delivered", _) => ("delivered", updated),
                ("accepted", Some(s)) => ("shipped", s),
                ("accepted", None) => ("ordered", decided),
                _ => ("held", decided),
            };
            OrderCtx {
                item: self.items.get(&sku).cloned().unwrap_or(sku),
                status,
                when: When::of(local_day(at, tz), today),
            }
        }))
    }
}

/// Days of silence that make a quiet spell for a member active `rhythm` days a week: a
/// week, or twice their usual gap between active days if that is longer.
fn quiet_after_days(rhythm: Option<f64>) -> f64 {
    match rhythm {
        Some(r) if r > 0.0 => (2.0 * 7.0 / r).max(7.0),
        _ => 7.0,
    }
}

fn facts(
    ctx: &Context,
    usage: &crate::outreach::context::UsageSummary,
    tenure_days: i64,
    device_model: &str,
) -> Vec<Fact> {
    use serde_json::json;
    let mut out = vec![Fact {
        key: "uses_this_month",
        value: json!(usage.this_month),
        text: format!(
            "{} use{} of the {device_model} this month ({} last month)",
            usage.this_month,
            if usage.this_month == 1 { "" } else { "s" },
            usage.last_month
        ),
    }];
    if let (Some(k), Some(v)) = (&usage.favourite_kind, &usage.favourite_value) {
        out.push(Fact {
            key: "favourite",
            value: json!({"kind": k, "value": v}),
            text: format!("Favourite: {v} ({k})"),
        });
    }
    if let Some(o) = &ctx.order {
        out.push(Fact {
            key: "order",
            value: json!({"item": o.item, "status": o.status, "date": o.when.date}),
            text: format!("{} order {} on {}", o.item, o.status, o.when.date),
        });
    }
    if let Some(d) = usage.days_silent.filter(|_| ctx.usage.quiet) {
        out.push(Fact {
            key: "quiet_spell",
            value: json!(d),
            text: format!(
                "Last used {d} days ago ({})",
                usage.last_active_day.as_deref().unwrap_or("")
            ),
        });
    }
    if usage.current_streak >= 2 {
        out.push(Fact {
            key: "streak",
            value: json!(usage.current_streak),
            text: format!("On a {}-day streak", usage.current_streak),
        });
    }
    match ctx.notable {
        Some("milestone") => out.push(Fact {
            key: "milestone",
            value: json!(ctx.milestone),
            text: format!("Reached use number {} recently", ctx.milestone),
        }),
        Some("champion") => out.push(Fact {
            key: "champion",
            value: json!(true),
            text: "One of the most engaged members".into(),
        }),
        Some("new") => out.push(Fact {
            key: "new_member",
            value: json!(tenure_days),
            text: format!("Joined {tenure_days} days ago"),
        }),
        _ => {}
    }
    out.push(Fact {
        key: "tenure",
        value: json!(tenure_days),
        text: format!("Member for {tenure_days} days"),
    });
    out
}

/// 2026-11-26 (a Thursday), the samples' today.
const TODAY: i32 = 20_783;

impl Context {
    /// Samples covering every branch of the templates.
    fn samples() -> Vec<Context> {
        let base = Context {
            member: MemberCtx {
                first_name: "Maria".into(),
                device_model: "Barista Pro".into(),
                device_model_known: true,
                tenure_days: 400,
            },
            usage: UsageCtx {
                quiet: false,
                kind: Some("brew".into()),
                kind_this_month: 23,
                this_month: 25,
                favourite_value: Some("latte".into()),
                last_active: Some(When::of(TODAY, TODAY)),
                current_streak: 9,
                total: 420,
            },
            order: Some(OrderCtx {
                item: "Espresso pods".into(),
                status: "shipped",
                when: When::of(TODAY - 2, TODAY),
            }),
            notable: Some("streak"),
            milestone: 100,
            state: Some("active".into()),
        };
        let mut out = vec![base.clone()];
        for (i, (status, notable)) in [
            ("delivered", Some("milestone")),
            ("ordered", Some("champion")),
            ("held", Some("new")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut c = base.clone();
            if let Some(o) = c.order.as_mut() {
                o.status = status;
                o.when = When::of(TODAY - [0, 1, 12][i], TODAY);
            }
            c.notable = notable;
            c.usage.kind = Some(["print", "ride", "unknown_kind"][i].into());
            out.push(c);
        }
        let mut quiet = base.clone();
        quiet.usage.kind_this_month = 0;
        quiet.usage.last_active = Some(When::of(TODAY - 9, TODAY));
        quiet.usage.quiet = true;
        quiet.order = None;
        quiet.notable = None;
        quiet.usage.favourite_value = None;
        out.push(quiet);
        let mut early_in_month = base.clone();
        early_in_month.usage.kind_this_month = 0;
        early_in_month.usage.last_active = Some(When::of(TODAY - 3, TODAY));
        out.push(early_in_month);
        let mut never = base;
        never.usage = UsageCtx {
            quiet: false,
            kind: None,
            kind_this_month: 0,
            this_month: 0,
            favourite_value: None,
            last_active: None,
            current_streak: 0,
            total: 0,
        };
        never.order = None;
        out.push(never);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter() -> Greeter {
        Greeter::new(&CloudConfig::default()).unwrap()
    }

    #[test]
    fn a_device_of_unknown_model_is_named_in_the_greetings_own_language() {
        let g = greeter();
        let mut c = Context::samples().pop().unwrap();
        c.member.device_model = "machine".into();
        c.member.device_model_known = false;
        for (lang, word) in [("en", "machine"), ("es", "máquina"), ("de", "Maschine")] {
            let text = g.render(lang, &c).unwrap();
            assert!(text.contains(word), "{lang}: {text}");
            if lang != "en" {
                assert!(!text.contains("machine"), "{lang}: {text}");
            }
        }
    }

    #[test]
    fn the_built_in_templates_render_every_branch_as_one_clean_paragraph() {
        let g = greeter();
        assert_eq!(g.languages(), ["de", "en", "es"]);
        for lang in g.languages() {
            for c in Context::samples() {
                let text = g.render(lang, &c).unwrap();
                assert!(!text.contains("  ") && !text.contains(" ,") && !text.contains(" ."));
                assert!(text.starts_with("H"), "{lang}: {text}");
                assert!(text.contains("Maria"), "{text}");
            }
        }
    }

    #[test]
    fn the_english_greeting_reads_like_a_person_said_it() {
        let g = greeter();
        let text = g.render("en", &Context::samples()[0]).unwrap();
        assert_eq!(
            text,
            "Hi Maria — I see your Barista Pro made 23 coffees this month, mostly lattes, \
             and your Espresso pods refill shipped on Tuesday. You're on a 9-day streak! \
             How can I help?"
        );
        let quiet = g.render("en", &Context::samples()[4]).unwrap();
        assert_eq!(
            quiet,
            "Hi Maria — I see your Barista Pro has been having a quiet spell since 17 November. How can I help?"
        );
    }

    #[test]
    fn a_template_with_an_undefined_variable_stops_start_up_naming_the_language() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("greetings")).unwrap();
        std::fs::write(
            dir.path().join("greetings/greeting.fr.txt.j2"),
            "Bonjour {{ member.frist_name }}",
        )
        .unwrap();
        let mut cfg = CloudConfig::default();
        cfg.outreach.templates_dir = Some(dir.path().to_owned());
        let e = Greeter::new(&cfg).unwrap_err().to_string();
        assert!(e.contains("\"fr\"") && e.contains("frist_name"), "{e}");
    }
}
