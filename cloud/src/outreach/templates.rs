//! Message templates: minijinja with strict undefined. A rule's body is the file
//! `{templates_dir}/{template}.txt.j2` (or the built-in template of that name) and its
//! subject is the rule's `subject` string, itself a template. [`Templates::load`] compiles
//! every rule's templates and renders them against a full sample context for the rule's
//! trigger ([`super::context::sample`]), so a misspelt variable fails when the config
//! loads, not at send time.

use super::config::OutreachConfig;
use minijinja::{Environment, UndefinedBehavior};
use std::collections::BTreeMap;

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template file could not be read.
    #[error("rule {rule}: template file {file}: {source}")]
    Read {
        /// The rule.
        rule: String,
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// No such built-in template.
    #[error("rule {rule}: no built-in template {template:?} (set outreach.templates_dir to use your own)")]
    Unknown {
        /// The rule.
        rule: String,
        /// The template name.
        template: String,
    },
    /// Syntax error, or rendering failed (an undefined variable, a bad filter).
    #[error("rule {rule}: template {template}: {message}")]
    Render {
        /// The rule.
        rule: String,
        /// The template name.
        template: String,
        /// minijinja's message (with line).
        message: String,
    },
    /// The rule is not configured.
    #[error("no rule named {0:?}")]
    NoSuchRule(String),
}

/// The built-in templates (the same files as `config/templates/`).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "welcome",
        include_str!("../../../config/templates/welcome.txt.j2"),
    ),
    (
        "first_week_nudge",
        include_str!("../../../config/templates/first_week_nudge.txt.j2"),
    ),
    (
        "win_back",
        include_str!("../../../config/templates/win_back.txt.j2"),
    ),
    (
        "last_call",
        include_str!("../../../config/templates/last_call.txt.j2"),
    ),
    (
        "welcome_back",
        include_str!("../../../config/templates/welcome_back.txt.j2"),
    ),
    (
        "champion",
        include_str!("../../../config/templates/champion.txt.j2"),
    ),
    (
        "hundredth_use",
        include_str!("../../../config/templates/hundredth_use.txt.j2"),
    ),
    (
        "streak",
        include_str!("../../../config/templates/streak.txt.j2"),
    ),
    (
        "order_accepted",
        include_str!("../../../config/templates/order_accepted.txt.j2"),
    ),
    (
        "order_cancellable",
        include_str!("../../../config/templates/order_cancellable.txt.j2"),
    ),
];

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject or title (one line).
    pub subject: String,
    /// Body text.
    pub body: String,
}

/// Every rule's compiled templates.
pub struct Templates {
    env: Environment<'static>,
    rules: BTreeMap<String, String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("rules", &self.rules)
            .finish()
    }
}

impl Templates {
    /// Compiles every rule's templates and renders each against the sample context.
    pub fn load(cfg: &OutreachConfig) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        let mut rules = BTreeMap::new();
        for (name, rule) in &cfg.rules {
            let source = match &cfg.templates_dir {
                Some(dir) => {
                    let file = dir.join(format!("{}.txt.j2", rule.template));
                    std::fs::read_to_string(&file).map_err(|source| TemplateError::Read {
                        rule: name.clone(),
                        file: file.display().to_string(),
                        source,
                    })?
                }
                None => BUILT_IN
                    .iter()
                    .find(|(n, _)| *n == rule.template)
                    .map(|(_, s)| (*s).to_owned())
                    .ok_or_else(|| TemplateError::Unknown {
                        rule: name.clone(),
                        template: rule.template.clone(),
                    })?,
            };
            let render_err = |template: String, e: minijinja::Error| TemplateError::Render {
                rule: name.clone(),
                template,
                message: describe(&e),
            };
            env.add_template_owned(format!("{name}.body"), source)
                .map_err(|e| render_err(format!("{}.txt.j2", rule.template), e))?;
            env.add_template_owned(format!("{name}.subject"), rule.subject.clone())
                .map_err(|e| render_err("subject".into(), e))?;
            rules.insert(name.clone(), rule.template.clone());
        }
        let t = Templates { env, rules };
        for (name, rule) in &cfg.rules {
            t.render(name, &super::context::sample(rule.trigger, cfg))?;
        }
        Ok(t)
    }

    /// Renders rule `rule` with `ctx`.
    pub fn render(&self, rule: &str, ctx: &serde_json::Value) -> Result<Rendered, TemplateError> {
        let template = self
            .rules
            .get(rule)
            .ok_or_else(|| TemplateError::NoSuchRule(rule.to_owned()))?;
        let ctx = minijinja::Value::from_serialize(ctx);
        let go = |which: &str, shown: String| {
            self.env
                .get_template(&format!("{rule}.{which}"))
                .and_then(|t| t.render(&ctx))
                .map_err(|e| TemplateError::Render {
                    rule: rule.to_owned(),
                    template: shown,
                    message: describe(&e),
                })
        };
        let subject = go("subject", "subject".into())?;
        let body = go("body", format!("{template}.txt.j2"))?;
        Ok(Rendered {
            subject: subject.lines().next().unwrap_or("").trim().to_owned(),
            body: body.trim().to_owned(),
        })
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_rule_renders_against_its_sample() {
        let cfg = OutreachConfig::default();
        let t = Templates::load(&cfg).unwrap();
        let r = t
            .render(
                "win_back",
                &crate::outreach::context::sample(crate::outreach::TriggerKind::ToLapsing, &cfg),
            )
            .unwrap();
        assert!(r.subject.contains("Maria"), "{r:?}");
        assert!(r.body.contains("latte"), "{r:?}");
    }

    #[test]
    fn an_undefined_variable_fails_at_load_and_names_the_rule() {
        let mut cfg = OutreachConfig::default();
        cfg.rules.get_mut("win_back").unwrap().subject = "Hi {{ member.frist_name }}".into();
        let e = Templates::load(&cfg).unwrap_err().to_string();
        assert!(e.contains("win_back") && e.contains("subject"), "{e}");
        // Order variables exist only for order triggers.
        let mut cfg = OutreachConfig::default();
        cfg.rules.get_mut("champion").unwrap().subject = "{{ order.id }}".into();
        assert!(Templates::load(&cfg).is_err());
    }
}
