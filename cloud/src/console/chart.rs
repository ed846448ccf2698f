//! Inline SVG charts for the console (no scripts, no external resources, so the console
//! works offline): a member's daily usage stacked by kind, and the fleet's members per
//! state over time. Each chart carries a `<title>` and an `aria-label` summary for screen
//! readers, and the page shows the same numbers as text.

use crate::profile::History;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Colours by position (usage kinds) — distinguishable and readable on white.
const PALETTE: &[&str] = &[
    "#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2",
];

/// The colour of each engagement state.
pub fn state_colour(state: &str) -> &'static str {
    match state {
        "new" => "#0891b2",
        "active" => "#059669",
        "champion" => "#7c3aed",
        "lapsing" => "#d97706",
        "lapsed" => "#b91c1c",
        _ => "#6b7280",
    }
}

/// The colour of the `i`-th usage kind.
pub fn kind_colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn esc(s: &str) -> String {
    crate::telephony::xml_escape(s)
}

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

fn axis(svg: &mut String, max: u64, labels: &[(usize, String)], n: usize) {
    let plot_h = H - BOTTOM - TOP;
    let fracs: &[f64] = if max >= 2 {
        &[0.0, 0.5, 1.0]
    } else {
        &[0.0, 1.0]
    };
    for &frac in fracs {
        let y = TOP + plot_h * (1.0 - frac);
        let v = (max as f64 * frac).round() as u64;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{W}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#374151">{v}</text>"##,
            LEFT - 4.0,
            y + 3.0
        );
    }
    let step = (W - LEFT) / n.max(1) as f64;
    for (i, label) in labels {
        let x = LEFT + step * (*i as f64 + 0.5);
        // The last label ends at the right edge rather than running past it.
        let anchor = if *i + 1 == n && n > 1 {
            "end"
        } else {
            "middle"
        };
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="{anchor}" fill="#374151">{}</text>"##,
            H - 6.0,
            esc(label)
        );
    }
}

/// A stacked bar per day (uses by kind) over the member's history.
pub fn usage_chart(h: &History) -> String {
    let n = h.days.len();
    let max = h.days.iter().map(|d| d.total).max().unwrap_or(0).max(1);
    let total: u64 = h.days.iter().map(|d| d.total).sum();
    let active = h.days.iter().filter(|d| d.total > 0).count();
    let label = format!(
        "Daily use over the last {n} days: {total} uses on {active} active days{}",
        if h.kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", h.kinds.join(", "))
        }
    );
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(&label),
        esc(&label)
    );
    let labels: Vec<(usize, String)> = h
        .days
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 15 == 0 || *i == n - 1)
        .map(|(i, d)| (i, d.day[5..].to_owned()))
        .collect();
    axis(&mut svg, max, &labels, n);
    let plot_h = H - BOTTOM - TOP;
    let step = (W - LEFT) / n.max(1) as f64;
    let bar = (step * 0.8).max(1.0);
    for (i, d) in h.days.iter().enumerate() {
        let x = LEFT + step * i as f64 + (step - bar) / 2.0;
        let mut y = TOP + plot_h;
        for (k, kind) in h.kinds.iter().enumerate() {
            let q = d.by_kind.get(kind).copied().unwrap_or(0);
            if q == 0 {
                continue;
            }
            let bh = plot_h * q as f64 / max as f64;
            y -= bh;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{bh:.1}" fill="{}"><title>{} {}: {q}</title></rect>"#,
                kind_colour(k),
                esc(&d.day),
                esc(kind)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Members per state over time: one line per state.
pub fn states_chart(days: &[(String, BTreeMap<String, u64>)]) -> String {
    let n = days.len();
    let max = days
        .iter()
        .flat_map(|(_, c)| c.values().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let label = match (days.first(), days.last()) {
        (Some(f), Some(l)) => format!(
            "Members per state from {} to {}; latest: {}",
            f.0,
            l.0,
            l.1.iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "No scoring history yet".to_owned(),
    };
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        esc(&label),
        esc(&label)
    );
    let labels: Vec<(usize, String)> = days
        .iter()
        .enumerate()
        .filter(|(i, _)| n <= 8 || i % (n / 6).max(1) == 0 || *i == n - 1)
        .map(|(i, (d, _))| (i, d.get(5..).unwrap_or(d).to_owned()))
        .collect();
    axis(&mut svg, max, &labels, n);
    let plot_h = H - BOTTOM - TOP;
    let step = (W - LEFT) / n.max(1) as f64;
    for state in crate::scoring::state::State::ALL {
        let name = state.name();
        let points: Vec<String> = days
            .iter()
            .enumerate()
            .filter_map(|(i, (_, c))| {
                c.get(name).map(|v| {
                    format!(
                        "{:.1},{:.1}",
                        LEFT + step * (i as f64 + 0.5),
                        TOP + plot_h * (1.0 - *v as f64 / max as f64)
                    )
                })
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{name}</title></polyline>"#,
            state_colour(name),
            points.join(" ")
        );
        if let [only] = points.as_slice() {
            // A single day draws no line: mark the point.
            let (x, y) = only.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(
                svg,
                r#"<circle cx="{x}" cy="{y}" r="4" fill="{}"><title>{name}</title></circle>"#,
                state_colour(name)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::DayUsage;

    #[test]
    fn the_usage_chart_stacks_each_kind_and_describes_itself() {
        let h = History {
            tz: "UTC".into(),
            kinds: vec!["brew".into(), "descale".into()],
            days: (0..90)
                .map(|i| DayUsage {
                    day: format!("2026-{:02}-{:02}", 9 + i / 30, 1 + i % 30),
                    total: if i % 2 == 0 { 3 } else { 0 },
                    by_kind: if i % 2 == 0 {
                        BTreeMap::from([("brew".into(), 2), ("descale".into(), 1)])
                    } else {
                        BTreeMap::new()
                    },
                })
                .collect(),
        };
        let svg = usage_chart(&h);
        assert_eq!(svg.matches("<rect").count(), 90);
        assert!(svg.contains(r#"aria-label="Daily use over the last 90 days: 135 uses on 45 active days (brew, descale)""#));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn the_states_chart_draws_one_line_per_state_present() {
        let days: Vec<(String, BTreeMap<String, u64>)> = (1..=10)
            .map(|d| {
                (
                    format!("2026-11-{d:02}"),
                    BTreeMap::from([("active".into(), 100 - d), ("lapsing".into(), d)]),
                )
            })
            .collect();
        let svg = states_chart(&days);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("latest: active 90, lapsing 10"));
        assert!(states_chart(&[]).contains("No scoring history yet"));
    }
}
