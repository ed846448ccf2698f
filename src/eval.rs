//! `rollcall eval`: compares the cloud's scoring with the simulator's ground truth.
//!
//! The cloud's scorer is replayed day by day over the evaluation window
//! ([`rollcall_cloud::scoring::replay_each`], the same state machine as the live scorer,
//! seeing only usage that had happened by each day). Two baselines see the same usage:
//!
//! - `silent_14d`: flag a member silent for 14 days or more;
//! - `gap_3x`: flag a member silent for three times their own median gap between active
//!   days or more (14 days while they have fewer than two gaps).
//!
//! Figures, for the model and both baselines, over member-days of the window:
//!
//! - `auc`: area under the ROC curve of the predictor's score (`p_silent_14d`; days silent;
//!   days silent ÷ median gap) for "no active day in the next 14 days" (the member's
//!   local dates), over member-days whose 14 days lie inside the truth;
//! - a *flag* is a run of days in `lapsing`/`lapsed` (or over the baseline's threshold); a
//!   flag that starts at most 14 days before the member's true drop-out, or after it, is a
//!   true alarm; any other flag is a false alarm (holidays, weekly rhythms, seasons…);
//! - `precision`: true alarms ÷ all flags started in the window;
//! - `recall`: members who truly dropped out (at least 14 days before the window ends)
//!   and were flagged on or after the drop-out ÷ those members;
//! - `median_lead_days`: for those caught, days from the true drop-out to the start of
//!   the flag that caught it (negative: flagged before; lower is better);
//! - `false_alarms_per_1000`: false alarms per 1,000 member-days of truly engaged members.
//!
//! `by_profile` shows where each predictor's ranking goes wrong: for each behaviour
//! profile of the simulator, the AUC of that profile's silent member-days against every
//! non-silent one (`auc_positives`), and of every silent member-day against that
//! profile's non-silent ones (`auc_negatives`). A predictor that ranks, say, holiday
//! members too close to drop-outs shows a low `auc_negatives` for `holiday`.
//! `flags_by_profile` splits the flag figures the same way: per profile and predictor,
//! drop-outs caught, their median lead and the false alarms (which profiles pay for an
//! earlier flag).

use crate::sim::truth::{MemberTruth, Truth};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;
use rollcall_cloud::config::ScoringConfig;
use rollcall_cloud::scoring::{self, State};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Quality figures of one predictor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    /// ROC AUC for "silent in the next 14 days".
    pub auc: f64,
    /// True alarms ÷ all flags.
    pub precision: f64,
    /// Caught drop-outs ÷ drop-outs.
    pub recall: f64,
    /// Median days from drop-out to the flag that caught it (lower is better).
    pub median_lead_days: f64,
    /// False alarms per 1,000 engaged member-days.
    pub false_alarms_per_1000: f64,
}

/// The whole evaluation (`rollcall eval --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The cloud's model.
    pub model: Figures,
    /// `silent_14d` and `gap_3x`.
    pub baselines: BTreeMap<String, Figures>,
    /// First day evaluated.
    pub from: NaiveDate,
    /// Last day evaluated.
    pub to: NaiveDate,
    /// Members evaluated.
    pub members: usize,
    /// Member-days with a 14-day label.
    pub labelled_member_days: u64,
    /// Members who truly dropped out in the window (with 14 days left to notice).
    pub dropouts: usize,
    /// Engaged member-days (the false-alarm denominator).
    pub engaged_member_days: u64,
    /// Per simulator profile: how its member-days rank among all others.
    pub by_profile: BTreeMap<String, ProfileRanking>,
    /// Per simulator profile, per predictor (`model`, `silent_14d`, `gap_3x`): where the
    /// flags fall (which profiles the false alarms and the slow catches come from).
    pub flags_by_profile: BTreeMap<String, BTreeMap<String, ProfileFlags>>,
    /// With [`EvalOptions::tradeoff`]: what an earlier flag costs in false alarms, for each
    /// predictor over a range of its own thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tradeoff: Option<Tradeoff>,
}

/// Each predictor's flag figures over a range of its own thresholds: how many false
/// alarms a day of earlier warning costs. The targets ask one detector for
/// `gap_3x`'s lead and `silent_14d`'s false-alarm rate at once; this shows whether any
/// threshold of any of them gets there, and which predictor pays least for a given lead.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tradeoff {
    /// The model, by `lapsing_enter_below` (enter `lapsing` below this `p_engaged`); for
    /// the thresholds other than the configured one, `lapsing_exit_above` is raised to at
    /// least the threshold + 0.1 and `lapsed_below` kept under half of it, as the state
    /// machine needs them ordered.
    pub model: Vec<OperatingPoint>,
    /// `silent_{k}d`: flag after `k` silent days.
    pub silent_days: Vec<OperatingPoint>,
    /// `gap_{x}x`: flag after `x` times the member's own median gap.
    pub gap_multiple: Vec<OperatingPoint>,
    /// For each baseline point, the model's best (lowest) median lead among its points
    /// with no more false alarms and no lower recall (null when none qualifies).
    pub model_vs_baselines: Vec<Comparison>,
}

/// One threshold of one predictor and its flag figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// The threshold (`p_engaged`, silent days, or multiple of the median gap).
    pub threshold: f64,
    /// True alarms ÷ all flags.
    pub precision: f64,
    /// Caught drop-outs ÷ drop-outs.
    pub recall: f64,
    /// Median days from drop-out to the flag that caught it (lower is better).
    pub median_lead_days: f64,
    /// False alarms per 1,000 engaged member-days.
    pub false_alarms_per_1000: f64,
}

/// A baseline's operating point next to the model's best lead at no more false alarms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// `silent_days` or `gap_multiple`.
    pub baseline: String,
    /// The baseline's point.
    pub point: OperatingPoint,
    /// The model's point with the lowest lead among those with no more false alarms and
    /// no lower recall; `None` when the model has no such point.
    pub model: Option<OperatingPoint>,
}

impl OperatingPoint {
    fn new(threshold: f64, f: &Figures) -> Self {
        OperatingPoint {
            threshold,
            precision: f.precision,
            recall: f.recall,
            median_lead_days: f.median_lead_days,
            false_alarms_per_1000: f.false_alarms_per_1000,
        }
    }
}

/// `lapsing_enter_below` values the trade-off replays the model with (the configured one
/// is added).
const MODEL_THRESHOLDS: [f64; 12] = [
    0.95, 0.9, 0.8, 0.7, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01,
];
/// Silent days the `silent_days` baseline is swept over.
const SILENT_DAYS: [i64; 10] = [2, 3, 4, 5, 7, 10, 14, 18, 21, 28];
/// Multiples of the median gap the `gap_multiple` baseline is swept over.
const GAP_MULTIPLES: [f64; 9] = [1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0];

/// For each baseline point, the model's best lead at no more false alarms and no lower
/// recall.
fn compare(model: &[OperatingPoint], baseline: &str, points: &[OperatingPoint]) -> Vec<Comparison> {
    points
        .iter()
        .map(|b| {
            let best = model
                .iter()
                .filter(|m| {
                    m.false_alarms_per_1000 <= b.false_alarms_per_1000
                        && m.recall >= b.recall
                        && !m.median_lead_days.is_nan()
                })
                .min_by(|x, y| {
                    x.median_lead_days
                        .total_cmp(&y.median_lead_days)
                        .then(x.false_alarms_per_1000.total_cmp(&y.false_alarms_per_1000))
                })
                .copied();
            Comparison {
                baseline: baseline.to_owned(),
                point: *b,
                model: best,
            }
        })
        .collect()
}

/// One predictor's flags on the members of one profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProfileFlags {
    /// The profile's members who truly dropped out in the window.
    pub dropouts: u64,
    /// Of those, flagged on or after the drop-out.
    pub caught: u64,
    /// Median lead days of those caught (null when none).
    pub median_lead_days: f64,
    /// Flags that started in the window and were not followed by a drop-out.
    pub false_alarms: u64,
}

impl Default for ProfileFlags {
    /// No drop-outs, no catches (so no lead), no false alarms.
    fn default() -> Self {
        ProfileFlags {
            dropouts: 0,
            caught: 0,
            median_lead_days: f64::NAN,
            false_alarms: 0,
        }
    }
}

/// How one profile's labelled member-days rank among all others, per predictor
/// (`model`, `silent_14d`, `gap_3x`); an AUC is null when the profile has no such days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRanking {
    /// The profile's member-days with no active day in the next 14 days.
    pub positives: usize,
    /// The profile's other labelled member-days.
    pub negatives: usize,
    /// AUC of the profile's positives against all negatives.
    pub auc_positives: BTreeMap<String, f64>,
    /// AUC of all positives against the profile's negatives.
    pub auc_negatives: BTreeMap<String, f64>,
}

/// [`ProfileRanking`] for every profile: `samples[p]` holds predictor `p`'s (score,
/// label) pairs and `profile_of[i]` the profile of the `i`-th pair (the same member-day in
/// every predictor).
fn rank_by_profile(
    samples: &[Vec<(f64, bool)>; 3],
    profile_of: &[&str],
) -> BTreeMap<String, ProfileRanking> {
    let mut profiles: Vec<&str> = profile_of.to_vec();
    profiles.sort_unstable();
    profiles.dedup();
    profiles
        .into_iter()
        .map(|prof| {
            let mine = |i: usize| profile_of[i] == prof;
            let count = |label: bool| {
                (0..profile_of.len())
                    .filter(|&i| mine(i) && samples[0][i].1 == label)
                    .count()
            };
            let mut auc_positives = BTreeMap::new();
            let mut auc_negatives = BTreeMap::new();
            for (p, name) in PREDICTORS.iter().enumerate() {
                // Keep the profile's days of one label, and every day of the other.
                let subset = |label: bool| -> Vec<(f64, bool)> {
                    samples[p]
                        .iter()
                        .enumerate()
                        .filter(|&(i, s)| s.1 != label || mine(i))
                        .map(|(_, s)| *s)
                        .collect()
                };
                auc_positives.insert((*name).to_owned(), auc(&mut subset(true)));
                auc_negatives.insert((*name).to_owned(), auc(&mut subset(false)));
            }
            let ranking = ProfileRanking {
                positives: count(true),
                negatives: count(false),
                auc_positives,
                auc_negatives,
            };
            (prof.to_owned(), ranking)
        })
        .collect()
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Days at the start of the truth window to skip (the model needs some history).
    pub warmup_days: u32,
    /// The scoring configuration to replay.
    pub scoring: ScoringConfig,
    /// Also sweep each predictor's threshold ([`Evaluation::tradeoff`]); this replays the
    /// scoring once more per model threshold.
    pub tradeoff: bool,
}

const PREDICTORS: [&str; 3] = ["model", "silent_14d", "gap_3x"];

/// Per member: what the store knows (event instants, sorted) and the truth.
struct Subject<'a> {
    truth: &'a MemberTruth,
    tz: Tz,
    events_ms: Vec<i64>,
    active: HashSet<NaiveDate>,
    joined: NaiveDate,
    /// Per evaluated day on which the member exists in the truth: days silent and the
    /// median gap between active days (what the baselines look at).
    views: Vec<Option<(i64, Option<f64>)>>,
    /// Per evaluated day: was the model's state `lapsing` or `lapsed`?
    model_flags: Vec<bool>,
}

impl Subject<'_> {
    /// Local date at `as_of`, days silent and median gap, from events up to `as_of`.
    fn view(&self, as_of: DateTime<Utc>) -> (NaiveDate, i64, Option<f64>) {
        let today = as_of.with_timezone(&self.tz).date_naive();
        let n = self
            .events_ms
            .partition_point(|t| *t <= as_of.timestamp_millis());
        let mut days: Vec<NaiveDate> = self.events_ms[..n]
            .iter()
            .map(|t| {
                DateTime::from_timestamp_millis(*t)
                    .expect("valid instant")
                    .with_timezone(&self.tz)
                    .date_naive()
            })
            .collect();
        days.dedup();
        let silent = match days.last() {
            Some(last) => (today - *last).num_days(),
            None => (today - self.joined).num_days().max(0),
        };
        let mut gaps: Vec<i64> = days.windows(2).map(|w| (w[1] - w[0]).num_days()).collect();
        let median = if gaps.len() >= 2 {
            gaps.sort_unstable();
            let m = gaps.len() / 2;
            Some(if gaps.len() % 2 == 0 {
                (gaps[m - 1] + gaps[m]) as f64 / 2.0
            } else {
                gaps[m] as f64
            })
        } else {
            None
        };
        (today, silent, median)
    }
}

/// Runs the evaluation of the store in `data_dir` against `truth`.
pub fn evaluate(data_dir: &Path, truth: &Truth, opts: &EvalOptions) -> Result<Evaluation> {
    use rollcall_cloud::store::{self, StoreError};
    let file = data_dir.join(store::FILE);
    if !file.exists() {
        bail!(
            "no store at {}: simulate a fleet there first (rollcall simulate --data-dir DIR)",
            file.display()
        );
    }
    // Read-only, unless a store simulated by an older build needs migrating first.
    let conn = match store::open_reader(data_dir) {
        Err(StoreError::TooOld { .. }) => {
            store::open_writer(data_dir).and_then(|_| store::open_reader(data_dir))
        }
        other => other,
    }
    .with_context(|| format!("Failed to open the store in {}", data_dir.display()))?;
    let from_date = truth.start + Duration::days(i64::from(opts.warmup_days));
    let to_date = truth.end - Duration::days(1);
    // A day is labelled only once the 14 days after it are over.
    if from_date + Duration::days(14) >= truth.end {
        bail!(
            "the truth covers {} to {}: too short for a {}-day warm-up and the 14 days after \
             each scored day that tell whether the member came back; simulate at least {} days \
             of --history or pass a shorter --warmup",
            truth.start,
            truth.end,
            opts.warmup_days,
            opts.warmup_days + 15
        );
    }
    let end_of = |d: NaiveDate| {
        d.and_time(NaiveTime::from_hms_opt(23, 59, 59).expect("valid"))
            .and_utc()
    };
    let (from, to) = (end_of(from_date), end_of(to_date));

    // What the store knows, per member.
    let mut events: HashMap<String, Vec<i64>> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT member_id, occurred_ms FROM events ORDER BY member_id, occurred_ms")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (m, t) = row?;
            events.entry(m).or_default().push(t);
        }
    }
    let by_id: HashMap<&str, &MemberTruth> =
        truth.members.iter().map(|m| (m.id.as_str(), m)).collect();

    let replay =
        scoring::replay(&conn, &opts.scoring, from, to).context("Failed to replay the scoring")?;
    if let Some(first) = replay.warnings.first() {
        tracing::warn!(count = replay.warnings.len(), %first, "The scoring replay had warnings (first shown)");
    }
    let ndays = replay.days.len();
    let mut subjects: Vec<Option<Subject>> = replay
        .members
        .iter()
        .map(|id| {
            let truth = by_id.get(id.as_str())?;
            let tz: Tz = truth.tz.parse().ok()?;
            Some(Subject {
                truth,
                tz,
                events_ms: events.remove(id).unwrap_or_default(),
                active: truth.active_days.iter().copied().collect(),
                joined: truth.joined,
                views: vec![None; ndays],
                model_flags: vec![false; ndays],
            })
        })
        .collect();
    let evaluated = subjects.iter().flatten().count();
    if evaluated == 0 {
        bail!("no member in the store appears in the truth file: wrong --truth or --data-dir?");
    }

    let mut samples: [Vec<(f64, bool)>; 3] = Default::default();
    let mut profile_of: Vec<&str> = Vec::new();
    let mut labelled = 0u64;
    let mut engaged_days = 0u64;
    for (d, day) in replay.days.iter().enumerate() {
        for (m, subject) in subjects.iter_mut().enumerate() {
            let Some(s) = subject else { continue };
            let Some(point) = replay.points[d][m] else {
                continue;
            };
            let (today, silent, median) = s.view(day.as_of);
            let Some(true_state) = s.truth.state_on(today) else {
                continue;
            };
            if true_state != "churned" {
                engaged_days += 1;
            }
            let gap_limit = Rule::Gap(3.0).limit(median);
            s.views[d] = Some((silent, median));
            s.model_flags[d] = is_flag(point.state);
            if today + Duration::days(14) < truth.end {
                let label = !(1..=14).any(|k| s.active.contains(&(today + Duration::days(k))));
                labelled += 1;
                samples[0].push((point.p_silent_14d, label));
                samples[1].push((silent as f64, label));
                samples[2].push((silent as f64 / (gap_limit / 3.0), label));
                profile_of.push(&s.truth.profile);
            }
        }
    }

    let dates: Vec<NaiveDate> = replay.days.iter().map(|d| d.as_of.date_naive()).collect();
    let dropouts = subjects
        .iter()
        .flatten()
        .filter(|s| {
            s.truth
                .dropout
                .is_some_and(|d| d >= from_date && d + Duration::days(14) <= to_date)
        })
        .count();
    let by_profile = rank_by_profile(&samples, &profile_of);
    let mut flags_by_profile: BTreeMap<String, BTreeMap<String, ProfileFlags>> = BTreeMap::new();
    let flags_of = |p: usize| -> Vec<Vec<bool>> {
        match p {
            0 => subjects
                .iter()
                .map(|s| s.as_ref().map_or_else(Vec::new, |s| s.model_flags.clone()))
                .collect(),
            1 => Rule::Silent(14).flags(&subjects),
            _ => Rule::Gap(3.0).flags(&subjects),
        }
    };
    let window = Window {
        dates: &dates,
        from: from_date,
        to: to_date,
        engaged_days,
    };
    let mut figures = PREDICTORS.iter().enumerate().map(|(p, name)| {
        let (f, per_profile) = flag_figures(&subjects, &flags_of(p), &window);
        for (prof, pf) in per_profile {
            flags_by_profile
                .entry(prof)
                .or_default()
                .insert((*name).to_owned(), pf);
        }
        f
    });
    let mut with_auc = |p: usize, f: Figures| Figures {
        auc: auc(&mut samples[p]),
        ..f
    };
    let model = with_auc(0, figures.next().expect("model"));
    let silent = with_auc(1, figures.next().expect("silent_14d"));
    let gap = with_auc(2, figures.next().expect("gap_3x"));
    let tradeoff = if opts.tradeoff {
        let mut thresholds = MODEL_THRESHOLDS.to_vec();
        if !thresholds.contains(&opts.scoring.lapsing_enter_below) {
            thresholds.push(opts.scoring.lapsing_enter_below);
            thresholds.sort_by(|a, b| b.total_cmp(a));
        }
        let variants: Vec<ScoringConfig> = thresholds
            .iter()
            .map(|&t| {
                if t == opts.scoring.lapsing_enter_below {
                    // The configured machine itself, replayed again alongside the others.
                    opts.scoring.clone()
                } else {
                    ScoringConfig {
                        lapsing_enter_below: t,
                        lapsing_exit_above: opts.scoring.lapsing_exit_above.max(t + 0.1).min(0.99),
                        lapsed_below: opts.scoring.lapsed_below.min(t / 2.0),
                        ..opts.scoring.clone()
                    }
                }
            })
            .collect();
        let swept = model_flags(&conn, &variants, from, to, &replay.members, &subjects)?;
        let model_points: Vec<OperatingPoint> = thresholds
            .iter()
            .zip(&swept)
            .map(|(&t, flags)| OperatingPoint::new(t, &flag_figures(&subjects, flags, &window).0))
            .collect();
        let sweep = |rules: Vec<(f64, Rule)>| -> Vec<OperatingPoint> {
            rules
                .into_iter()
                .map(|(t, rule)| {
                    OperatingPoint::new(
                        t,
                        &flag_figures(&subjects, &rule.flags(&subjects), &window).0,
                    )
                })
                .collect()
        };
        let silent_days = sweep(
            SILENT_DAYS
                .iter()
                .map(|&k| (k as f64, Rule::Silent(k)))
                .collect(),
        );
        let gap_multiple = sweep(GAP_MULTIPLES.iter().map(|&x| (x, Rule::Gap(x))).collect());
        let mut model_vs_baselines = compare(&model_points, "silent_days", &silent_days);
        model_vs_baselines.extend(compare(&model_points, "gap_multiple", &gap_multiple));
        Some(Tradeoff {
            model: model_points,
            silent_days,
            gap_multiple,
            model_vs_baselines,
        })
    } else {
        None
    };
    Ok(Evaluation {
        model,
        baselines: BTreeMap::from([
            ("silent_14d".to_owned(), silent),
            ("gap_3x".to_owned(), gap),
        ]),
        from: from_date,
        to: to_date,
        members: evaluated,
        labelled_member_days: labelled,
        dropouts,
        engaged_member_days: engaged_days,
        by_profile,
        flags_by_profile,
        tradeoff,
    })
}

/// Replays the scoring with each of `cfgs` (one fit per day for all) and returns, per
/// configuration, per subject (aligned with `subjects`), per day, whether the model
/// flagged the member.
fn model_flags(
    conn: &rusqlite::Connection,
    cfgs: &[ScoringConfig],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    members: &[String],
    subjects: &[Option<Subject>],
) -> Result<Vec<Vec<Vec<bool>>>> {
    let blank: Vec<Vec<bool>> = subjects
        .iter()
        .map(|s| {
            s.as_ref()
                .map_or_else(Vec::new, |s| vec![false; s.views.len()])
        })
        .collect();
    let mut flags = vec![blank; cfgs.len()];
    let mut d = 0;
    let (replayed, _) = scoring::replay_variants(conn, cfgs, from, to, |_, points| {
        for (flags, points) in flags.iter_mut().zip(points) {
            for ((f, s), p) in flags.iter_mut().zip(subjects).zip(points) {
                if let (Some(s), Some(p), Some(slot)) = (s, p, f.get_mut(d)) {
                    *slot = s.views[d].is_some() && is_flag(p.state);
                }
            }
        }
        d += 1;
    })
    .context("Failed to replay the scoring over the trade-off's thresholds")?;
    if replayed != members {
        bail!("the store's members changed during the evaluation; run it again");
    }
    Ok(flags)
}

/// The evaluated days, and what the flag figures are measured against.
#[derive(Clone, Copy)]
struct Window<'a> {
    /// The evaluated days (the replay's days, as dates).
    dates: &'a [NaiveDate],
    /// First day evaluated.
    from: NaiveDate,
    /// Last day evaluated.
    to: NaiveDate,
    /// Engaged member-days (the false-alarm denominator).
    engaged_days: u64,
}

/// Does the model's `state` count as a flag (the member is thought to be drifting away)?
fn is_flag(state: State) -> bool {
    matches!(state, State::Lapsing | State::Lapsed)
}

/// A baseline's flag rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    /// Silent for at least this many days.
    Silent(i64),
    /// Silent for at least this multiple of the member's own median gap between active
    /// days (14 days while they have fewer than two gaps).
    Gap(f64),
}

impl Rule {
    /// The days of silence at which the rule flags a member whose median gap is `median`.
    fn limit(self, median: Option<f64>) -> f64 {
        match self {
            Rule::Silent(k) => k as f64,
            Rule::Gap(x) => median.map_or(14.0, |g| x * g.max(1.0)),
        }
    }

    /// Per subject (aligned with `subjects`; empty for `None`), per day: flagged?
    fn flags(self, subjects: &[Option<Subject>]) -> Vec<Vec<bool>> {
        subjects
            .iter()
            .map(|s| {
                s.as_ref().map_or_else(Vec::new, |s| {
                    s.views
                        .iter()
                        .map(|v| {
                            v.is_some_and(|(silent, median)| silent as f64 >= self.limit(median))
                        })
                        .collect()
                })
            })
            .collect()
    }
}

/// Precision, recall, lead time and false alarms of one predictor's `flags` (per subject,
/// aligned with `subjects`; per day of the window).
fn flag_figures(
    subjects: &[Option<Subject>],
    flags: &[Vec<bool>],
    window: &Window,
) -> (Figures, BTreeMap<String, ProfileFlags>) {
    let Window {
        dates,
        from,
        to,
        engaged_days,
    } = *window;
    let (mut alarms, mut true_alarms, mut dropouts, mut caught) = (0u64, 0u64, 0u64, 0u64);
    let mut leads: Vec<i64> = Vec::new();
    let mut per_profile: BTreeMap<String, (ProfileFlags, Vec<i64>)> = BTreeMap::new();
    for (s, flags) in subjects.iter().zip(flags) {
        let Some(s) = s else { continue };
        let dropout = s.truth.dropout;
        let (mine, my_leads) = per_profile.entry(s.truth.profile.clone()).or_default();
        // Flags that start inside the window (one already up on its first day started before).
        for d in 1..flags.len() {
            if flags[d] && !flags[d - 1] {
                alarms += 1;
                if dropout.is_some_and(|x| dates[d] + Duration::days(14) >= x) {
                    true_alarms += 1;
                } else {
                    mine.false_alarms += 1;
                }
            }
        }
        let Some(x) = dropout.filter(|x| *x >= from && *x + Duration::days(14) <= to) else {
            continue;
        };
        dropouts += 1;
        mine.dropouts += 1;
        // The first flagged day on or after the drop-out, then back to its flag's start.
        let Some(first) = (0..flags.len()).find(|d| dates[*d] >= x && flags[*d]) else {
            continue;
        };
        let mut start = first;
        while start > 0 && flags[start - 1] {
            start -= 1;
        }
        caught += 1;
        mine.caught += 1;
        let lead = (dates[start] - x).num_days();
        leads.push(lead);
        my_leads.push(lead);
    }
    let per_profile = per_profile
        .into_iter()
        .map(|(prof, (f, mut l))| {
            let median_lead_days = median(&mut l);
            (
                prof,
                ProfileFlags {
                    median_lead_days,
                    ..f
                },
            )
        })
        .collect();
    let median = median(&mut leads);
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let figures = Figures {
        auc: f64::NAN,
        precision: ratio(true_alarms, alarms),
        recall: ratio(caught, dropouts),
        median_lead_days: median,
        false_alarms_per_1000: 1000.0 * ratio(alarms - true_alarms, engaged_days),
    };
    (figures, per_profile)
}

/// The median of `v` (the mean of the middle two for an even count; NaN when empty).
fn median(v: &mut [i64]) -> f64 {
    v.sort_unstable();
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0,
        n => v[n / 2] as f64,
    }
}

/// ROC AUC by the rank-sum (Mann–Whitney) statistic, ties given their average rank.
pub fn auc(samples: &mut [(f64, bool)]) -> f64 {
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0u64, 0usize);
    while i < samples.len() {
        let mut j = i;
        while j < samples.len() && samples[j].0 == samples[i].0 {
            j += 1;
        }
        let avg = (i + 1 + j) as f64 / 2.0;
        for s in &samples[i..j] {
            if s.1 {
                rank_sum += avg;
                pos += 1;
            }
        }
        i = j;
    }
    let neg = samples.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

/// The evaluation as a text table.
pub fn table(e: &Evaluation) -> String {
    let mut out = format!(
        "Evaluation {} to {}: {} members, {} labelled member-days, {} drop-outs\n\n",
        e.from, e.to, e.members, e.labelled_member_days, e.dropouts
    );
    out.push_str(&format!(
        "{:<12} {:>7} {:>10} {:>8} {:>17} {:>22}\n",
        "predictor", "AUC", "precision", "recall", "median lead days", "false alarms / 1000 md"
    ));
    let mut row = |name: &str, f: &Figures| {
        out.push_str(&format!(
            "{:<12} {:>7.3} {:>10.3} {:>8.3} {:>17.1} {:>22.2}\n",
            name, f.auc, f.precision, f.recall, f.median_lead_days, f.false_alarms_per_1000
        ));
    };
    row("model", &e.model);
    for (name, f) in &e.baselines {
        row(name, f);
    }
    out.push_str(
        "\nBy profile: AUC of its silent days against all others (positives), \
         of all silent days against its other days (negatives)\n\n",
    );
    out.push_str(&format!(
        "{:<10} {:>9} {:>9}   {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}\n",
        "profile",
        "positives",
        "negatives",
        "model",
        "silent",
        "gap_3x",
        "model",
        "silent",
        "gap_3x"
    ));
    for (prof, r) in &e.by_profile {
        let cells = |m: &BTreeMap<String, f64>| {
            PREDICTORS
                .iter()
                .map(|p| match m.get(*p).copied().filter(|a| !a.is_nan()) {
                    Some(a) => format!("{a:>8.4}"),
                    None => format!("{:>8}", "-"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            "{prof:<10} {:>9} {:>9}   {}   {}\n",
            r.positives,
            r.negatives,
            cells(&r.auc_positives),
            cells(&r.auc_negatives)
        ));
    }
    out.push_str("\nBy profile: drop-outs caught / drop-outs, median lead days, false alarms\n\n");
    out.push_str(&format!("{:<10}", "profile"));
    for p in PREDICTORS {
        out.push_str(&format!("   {p:>10} {:>5} {:>4}", "lead", "FA"));
    }
    out.push('\n');
    for (prof, per) in &e.flags_by_profile {
        out.push_str(&format!("{prof:<10}"));
        for p in PREDICTORS {
            let f = per.get(p).copied().unwrap_or_default();
            let lead = if f.median_lead_days.is_nan() {
                "-".to_owned()
            } else {
                format!("{:.1}", f.median_lead_days)
            };
            out.push_str(&format!(
                "   {:>10} {lead:>5} {:>4}",
                format!("{}/{}", f.caught, f.dropouts),
                f.false_alarms
            ));
        }
        out.push('\n');
    }
    if let Some(t) = &e.tradeoff {
        out.push_str(&tradeoff_table(t));
    }
    out
}

/// [`Tradeoff`] as text: each predictor's points, then the model next to each baseline
/// point.
fn tradeoff_table(t: &Tradeoff) -> String {
    let fmt = |v: f64, prec: usize| {
        if v.is_nan() {
            "-".to_owned()
        } else {
            format!("{v:.prec$}")
        }
    };
    let mut out = String::from(
        "\nTrade-off: each predictor over its own thresholds \
         (model: p_engaged below; silent_days: days; gap_multiple: x median gap)\n\n",
    );
    out.push_str(&format!(
        "{:<13} {:>9} {:>10} {:>8} {:>17} {:>22}\n",
        "predictor",
        "threshold",
        "precision",
        "recall",
        "median lead days",
        "false alarms / 1000 md"
    ));
    for (name, points) in [
        ("model", &t.model),
        ("silent_days", &t.silent_days),
        ("gap_multiple", &t.gap_multiple),
    ] {
        for p in points {
            out.push_str(&format!(
                "{name:<13} {:>9} {:>10} {:>8} {:>17} {:>22}\n",
                p.threshold,
                fmt(p.precision, 3),
                fmt(p.recall, 3),
                fmt(p.median_lead_days, 1),
                fmt(p.false_alarms_per_1000, 2)
            ));
        }
    }
    out.push_str(
        "\nThe model's lowest median lead with no more false alarms and no lower recall \
         than each baseline point\n\n",
    );
    out.push_str(&format!(
        "{:<13} {:>9} {:>6} {:>8}   {:>15} {:>6} {:>8}\n",
        "baseline", "threshold", "lead", "FA/1000", "model threshold", "lead", "FA/1000"
    ));
    for c in &t.model_vs_baselines {
        let (mt, ml, mf) = match &c.model {
            Some(m) => (
                m.threshold.to_string(),
                fmt(m.median_lead_days, 1),
                fmt(m.false_alarms_per_1000, 2),
            ),
            None => ("none".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        out.push_str(&format!(
            "{:<13} {:>9} {:>6} {:>8}   {mt:>15} {ml:>6} {mf:>8}\n",
            c.baseline,
            c.point.threshold,
            fmt(c.point.median_lead_days, 1),
            fmt(c.point.false_alarms_per_1000, 2),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [5, 1, 3]), 3.0);
        assert_eq!(median(&mut [4, -2, 1, 9]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn auc_is_one_for_a_perfect_ranking_and_half_for_ties() {
        let mut perfect = vec![(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        assert_eq!(auc(&mut perfect), 1.0);
        let mut ties = vec![(0.5, false), (0.5, true), (0.5, false), (0.5, true)];
        assert_eq!(auc(&mut ties), 0.5);
        let mut inverted = vec![(0.9, false), (0.1, true)];
        assert_eq!(auc(&mut inverted), 0.0);
        let mut one_class = vec![(0.3, true)];
        assert!(auc(&mut one_class).is_nan());
    }

    #[test]
    fn each_profile_is_ranked_against_everyone_else() {
        // Member-days: (score, silent next 14 days), the same for the three predictors
        // except that the model ranks the holiday member's non-silent day highest of all.
        let days = [
            ("dropout", 0.9, true),
            ("dropout", 0.8, true),
            ("daily", 0.1, false),
            ("daily", 0.2, false),
            ("holiday", 0.95, false),
            ("holiday", 0.7, true),
        ];
        let model: Vec<(f64, bool)> = days.iter().map(|d| (d.1, d.2)).collect();
        let mut silence = model.clone();
        silence[4].0 = 0.3;
        let samples = [model, silence.clone(), silence];
        let profile_of: Vec<&str> = days.iter().map(|d| d.0).collect();
        let r = rank_by_profile(&samples, &profile_of);
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            ["daily", "dropout", "holiday"]
        );
        let h = &r["holiday"];
        assert_eq!((h.positives, h.negatives), (1, 1));
        // All three positives against the holiday day the model puts on top: 0 of 3.
        assert_eq!(h.auc_negatives["model"], 0.0);
        assert_eq!(h.auc_negatives["silent_14d"], 1.0);
        // The holiday positive (0.7) against every negative: above both daily days, below
        // the model's 0.95, above silence's 0.3.
        assert!((h.auc_positives["model"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(h.auc_positives["gap_3x"], 1.0);
        // No positives among the daily members: their positive AUC is undefined.
        assert!(r["daily"].auc_positives["model"].is_nan());
        assert_eq!(r["daily"].auc_negatives["model"], 1.0);

        // The table shows an undefined AUC as a dash; the JSON as null.
        let f = Figures {
            auc: 0.9,
            precision: 0.5,
            recall: 1.0,
            median_lead_days: 7.0,
            false_alarms_per_1000: 1.5,
        };
        let day = NaiveDate::from_ymd_opt(2026, 8, 1).unwrap();
        let e = Evaluation {
            model: f,
            baselines: BTreeMap::from([("silent_14d".to_owned(), f), ("gap_3x".to_owned(), f)]),
            from: day,
            to: day,
            members: 3,
            labelled_member_days: 6,
            dropouts: 1,
            engaged_member_days: 4,
            by_profile: r,
            tradeoff: None,
            flags_by_profile: BTreeMap::from([(
                "dropout".to_owned(),
                BTreeMap::from([
                    (
                        "model".to_owned(),
                        ProfileFlags {
                            dropouts: 2,
                            caught: 1,
                            median_lead_days: 3.0,
                            false_alarms: 4,
                        },
                    ),
                    (
                        "gap_3x".to_owned(),
                        ProfileFlags {
                            dropouts: 2,
                            ..ProfileFlags::default()
                        },
                    ),
                ]),
            )]),
        };
        let text = table(&e);
        let flags = text
            .lines()
            .skip_while(|l| !l.contains("drop-outs caught"))
            .find(|l| l.starts_with("dropout"))
            .unwrap();
        assert_eq!(
            flags.split_whitespace().collect::<Vec<_>>(),
            ["dropout", "1/2", "3.0", "4", "0/0", "-", "0", "0/2", "-", "0"],
            "{text}"
        );
        let daily = text.lines().find(|l| l.starts_with("daily")).unwrap();
        assert!(!text.contains("NaN"), "{text}");
        assert_eq!(
            daily.split_whitespace().filter(|c| *c == "-").count(),
            3,
            "{daily}"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert!(json["by_profile"]["daily"]["auc_positives"]["model"].is_null());
    }

    fn point(threshold: f64, recall: f64, lead: f64, fa: f64) -> OperatingPoint {
        OperatingPoint {
            threshold,
            precision: 0.5,
            recall,
            median_lead_days: lead,
            false_alarms_per_1000: fa,
        }
    }

    #[test]
    fn a_baseline_point_is_matched_with_the_models_earliest_flag_at_no_more_false_alarms() {
        let model = [
            point(0.9, 1.0, 2.0, 14.0),
            point(0.6, 1.0, 4.0, 3.0),
            point(0.3, 0.9, 3.0, 2.0),
            point(0.05, 1.0, 8.0, 1.5),
            point(0.01, 1.0, f64::NAN, 0.5),
        ];
        let baseline = [
            point(3.0, 1.0, 1.0, 22.0),
            point(7.0, 1.0, 5.0, 7.0),
            point(14.0, 1.0, 12.0, 2.0),
            point(21.0, 1.0, 19.0, 1.0),
        ];
        let c = compare(&model, "silent_days", &baseline);
        let chosen: Vec<Option<f64>> = c.iter().map(|c| c.model.map(|m| m.threshold)).collect();
        // 22 FA: the eager 0.9 (lead 2); 7 FA: 0.6, not 0.3 (lower recall); 2 FA: only
        // 0.05 (0.01 never caught anyone); 1 FA: none.
        assert_eq!(chosen, [Some(0.9), Some(0.6), Some(0.05), None]);
        assert!(c.iter().all(|c| c.baseline == "silent_days"));

        let t = Tradeoff {
            model: model.to_vec(),
            silent_days: baseline.to_vec(),
            gap_multiple: Vec::new(),
            model_vs_baselines: c,
        };
        let text = tradeoff_table(&t);
        assert!(!text.contains("NaN"), "{text}");
        let row = |prefix: &str| {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("model")[4],
            ["model", "0.01", "0.500", "1.000", "-", "0.50"]
        );
        let matched = row("silent_days");
        // Four points, then four comparisons.
        assert_eq!(matched.len(), 8, "{text}");
        assert_eq!(
            matched[4],
            ["silent_days", "3", "1.0", "22.00", "0.9", "2.0", "14.00"]
        );
        assert_eq!(
            matched[7],
            ["silent_days", "21", "19.0", "1.00", "none", "-", "-"]
        );
    }

    #[test]
    fn a_baselines_rule_flags_from_its_own_limit() {
        assert_eq!(Rule::Silent(14).limit(Some(2.0)), 14.0);
        assert_eq!(Rule::Gap(3.0).limit(Some(2.0)), 6.0);
        // Gaps shorter than a day count as a day; fewer than two gaps fall back to 14 days.
        assert_eq!(Rule::Gap(3.0).limit(Some(0.5)), 3.0);
        assert_eq!(Rule::Gap(3.0).limit(None), 14.0);
    }
}
