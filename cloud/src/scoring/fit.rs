//! Maximum-likelihood fitting of the fleet model.
//!
//! Members with the same `(x, t_x, T)` contribute the same log-likelihood, so the data is
//! first grouped into distinct tuples with weights. Because times are whole days,
//! `ln(α + t)` is tabulated once per evaluation for every day count, and the `ln Γ` terms
//! once per distinct `x`; one evaluation then costs one `exp` and one `ln_1p` per tuple,
//! spread over the available cores.
//!
//! The optimiser is Nelder–Mead in log-parameter space (so every parameter stays
//! positive), started from several points and restarted from its best point until a
//! restart no longer improves it. A fit *converges* when the last restart ended on its
//! tolerance, improved nothing, and left the parameters finite and away from the bounds
//! `e^±12`, with one exception: when both shapes of one mixing distribution run off to
//! the upper bound together (their ratio, the mean, fixed), the fleet is homogeneous in
//! that respect: the likelihood is flat along the ridge and the limit is a proper model
//! (every member shares the mean rate or drop-out probability). That is a converged fit
//! once the likelihood is checked to be flat there. Daily active-day data, where every
//! member's drop-out chance is small and alike, end exactly there. A distribution that
//! collapses onto zero (`a → 0`, `b → ∞`: no evidence of anyone stopping) is not
//! converged. Callers keep the last good parameters when a fit does not converge, or the
//! configured prior when there are none ([`choose`]).
//!
//! BG/BB ([`super::bgbb`]) counts whole days: its data must be in days.

use super::model::{ln_gamma, log_add_exp, ModelKind, NamedParams, Params};
use super::summary::DaySummary;
use serde::Serialize;
use std::collections::HashMap;

/// Why there is nothing to fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// No member to fit on.
    #[error("no members to fit the model on")]
    NoData,
    /// Too few members to fit on.
    #[error(
        "only {members} members to fit on; at least {min} are needed (scoring.min_fit_members)"
    )]
    TooFew {
        /// Members available.
        members: u64,
        /// The configured minimum.
        min: u64,
    },
    /// The likelihood was not finite at any starting point.
    #[error("the log-likelihood is not finite at any starting point")]
    NotFinite,
    /// BG/BB counts whole daily opportunities; the data was in another unit.
    #[error("bgbb counts whole days: fit it with the time unit days")]
    WholeDays,
}

/// Log-parameters stay within ±this (parameters within e^±12 ≈ 6e-6 .. 1.6e5).
const LOG_BOUND: f64 = 12.0;
/// A fit whose parameters end this close to a bound has degenerated.
const BOUND_MARGIN: f64 = 0.5;
/// Along a ridge (both shapes of a mixing distribution at the upper bound), the total
/// log-likelihood may change by at most this much when both shrink by a factor e.
const RIDGE_FLATNESS: f64 = 0.1;

/// Distinct summaries with weights, ready for repeated likelihood evaluations.
#[derive(Debug, Clone)]
pub struct FitData {
    days_per_unit: f64,
    xs: Vec<u32>,
    /// (index into xs, t_x days, T days, weight).
    groups: Vec<(u32, u32, u32, f64)>,
    max_day: u32,
    members: u64,
    mean_rate: f64,
}

impl FitData {
    /// Groups member summaries; `days_per_unit` is 1 for days, 7 for weeks.
    pub fn new(summaries: impl IntoIterator<Item = DaySummary>, days_per_unit: f64) -> Self {
        let mut counts: HashMap<DaySummary, u64> = HashMap::new();
        let mut members = 0u64;
        let (mut sum_x, mut sum_t) = (0f64, 0f64);
        for s in summaries {
            *counts.entry(s).or_default() += 1;
            members += 1;
            sum_x += s.x as f64;
            sum_t += s.t_days as f64 / days_per_unit;
        }
        let mut tuples: Vec<(DaySummary, u64)> = counts.into_iter().collect();
        tuples.sort_unstable();
        let mut xs: Vec<u32> = tuples.iter().map(|t| t.0.x).collect();
        xs.dedup();
        let max_day = tuples.iter().map(|t| t.0.t_days).max().unwrap_or(0);
        let groups = tuples
            .iter()
            .map(|(s, n)| {
                let xi = xs.binary_search(&s.x).expect("x listed") as u32;
                (xi, s.t_x_days, s.t_days, *n as f64)
            })
            .collect();
        Self {
            days_per_unit,
            xs,
            groups,
            max_day,
            members,
            mean_rate: if sum_t > 0.0 { sum_x / sum_t } else { 0.0 },
        }
    }

    /// Members in the data.
    pub fn members(&self) -> u64 {
        self.members
    }

    /// Distinct `(x, t_x, T)` tuples.
    pub fn distinct(&self) -> usize {
        self.groups.len()
    }

    /// The total log-likelihood of `p` under `kind` (BG/BB: in whole days whatever the unit).
    pub fn log_likelihood(&self, kind: ModelKind, p: &Params) -> f64 {
        if kind == ModelKind::Bgbb {
            return super::bgbb::grouped_log_likelihood(
                &super::bgbb::BgbbParams::from_slots(p),
                &self.xs,
                &self.groups,
                self.max_day,
            );
        }
        let unit = self.days_per_unit;
        let ln_tab: Vec<f64> = (0..=self.max_day)
            .map(|d| (p.alpha + d as f64 / unit).ln())
            .collect();
        let base = -ln_gamma(p.r) + p.r * p.alpha.ln() + ln_gamma(p.a + p.b) - ln_gamma(p.b);
        let ln_a = p.a.ln();
        // Per distinct x: (head, ln of the second term's coefficient, r + x).
        let per_x: Vec<(f64, f64, f64)> = self
            .xs
            .iter()
            .map(|&x| {
                let x = x as f64;
                let beta = p.b
                    + match kind {
                        ModelKind::Mbgnbd => x + 1.0,
                        ModelKind::Bgnbd | ModelKind::Bgbb => x,
                    };
                let head = base + ln_gamma(p.r + x) + ln_gamma(beta) - ln_gamma(p.a + beta);
                let c4 = if kind == ModelKind::Bgnbd && x == 0.0 {
                    f64::NEG_INFINITY
                } else {
                    ln_a - (beta - 1.0).ln()
                };
                (head, c4, p.r + x)
            })
            .collect();
        let sum_range = |g: &[(u32, u32, u32, f64)]| -> f64 {
            let mut acc = 0.0;
            for &(xi, tx, t, w) in g {
                let (head, c4, s) = per_x[xi as usize];
                let a3 = -s * ln_tab[t as usize];
                let a4 = c4 - s * ln_tab[tx as usize];
                acc += w * (head + log_add_exp(a3, a4));
            }
            acc
        };
        let threads = super::threads(8);
        if threads < 2 || self.groups.len() < 40_000 {
            return sum_range(&self.groups);
        }
        let chunk = self.groups.len().div_ceil(threads);
        std::thread::scope(|sc| {
            let handles: Vec<_> = self
                .groups
                .chunks(chunk)
                .map(|c| sc.spawn(move || sum_range(c)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("likelihood thread"))
                .sum()
        })
    }
}

/// How to fit.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// Which model.
    pub kind: ModelKind,
    /// Start here (the last good parameters) instead of the default starting points.
    pub warm_start: Option<Params>,
    /// Most likelihood evaluations in all.
    pub max_evaluations: usize,
}

impl FitOptions {
    /// Defaults for `kind`: cold start, 20,000 evaluations at most.
    pub fn new(kind: ModelKind) -> Self {
        Self {
            kind,
            warm_start: None,
            max_evaluations: 20_000,
        }
    }
}

/// The outcome of a fit. In JSON the parameters go by the model's names
/// ([`ModelKind::param_names`]).
#[derive(Debug, Clone)]
pub struct FitResult {
    /// Which model.
    pub model: ModelKind,
    /// The maximum-likelihood parameters found.
    pub params: Params,
    /// The log-likelihood there.
    pub log_likelihood: f64,
    /// Members fitted on.
    pub members: u64,
    /// Whether the optimiser converged (see the module documentation).
    pub converged: bool,
    /// Likelihood evaluations used.
    pub evaluations: usize,
}

impl Serialize for FitResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out {
            model: ModelKind,
            params: NamedParams,
            log_likelihood: f64,
            members: u64,
            converged: bool,
            evaluations: usize,
        }
        Out {
            model: self.model,
            params: NamedParams(self.model, self.params),
            log_likelihood: self.log_likelihood,
            members: self.members,
            converged: self.converged,
            evaluations: self.evaluations,
        }
        .serialize(s)
    }
}

/// Fits `kind` to `data` by maximum likelihood.
pub fn fit(data: &FitData, opts: &FitOptions) -> Result<FitResult, FitError> {
    if data.members == 0 {
        return Err(FitError::NoData);
    }
    let kind = opts.kind;
    if kind.is_discrete() && data.days_per_unit != 1.0 {
        return Err(FitError::WholeDays);
    }
    let total = data.members as f64;
    let mut evals = 0usize;
    let mut objective = |th: &[f64; 4]| -> f64 {
        evals += 1;
        if th.iter().any(|v| !v.is_finite() || v.abs() > LOG_BOUND) {
            return f64::INFINITY;
        }
        let p = from_log(th);
        let ll = data.log_likelihood(kind, &p);
        if ll.is_finite() {
            -ll / total
        } else {
            f64::INFINITY
        }
    };
    let rate = if data.mean_rate > 0.0 {
        data.mean_rate
    } else {
        1.0
    };
    let starts: Vec<[f64; 4]> = match opts.warm_start {
        Some(p) if p.is_valid() => vec![to_log(&p)],
        _ if kind.is_discrete() => {
            // α/(α+β) near the mean share of active days; drop-out rare per day.
            let m = rate.clamp(0.02, 0.95);
            let odds = (1.0 - m) / m;
            [(1.0, 1.0, 20.0), (0.5, 0.5, 200.0), (2.0, 1.5, 2000.0)]
                .iter()
                .map(|&(al, ga, de)| {
                    to_log(&Params {
                        r: al,
                        alpha: al * odds,
                        a: ga,
                        b: de,
                    })
                })
                .collect()
        }
        _ => [
            (1.0, 1.0, 1.0, 1.0),
            (0.5, 0.5, 0.5, 3.0),
            (2.0, 2.0, 1.5, 10.0),
        ]
        .iter()
        .map(|&(r, k, a, b)| {
            to_log(&Params {
                r,
                alpha: k * r / rate,
                a,
                b,
            })
        })
        .collect(),
    };
    let per_run = (opts.max_evaluations / (starts.len() + 6)).max(100);
    let mut best: Option<([f64; 4], f64)> = None;
    for s in &starts {
        let step = if opts.warm_start.is_some() { 0.1 } else { 0.5 };
        let run = nelder_mead(&mut objective, *s, step, 1e-9, per_run);
        if run.1.is_finite() && best.as_ref().is_none_or(|b| run.1 < b.1) {
            best = Some((run.0, run.1));
        }
    }
    let Some((mut th, mut f)) = best else {
        return Err(FitError::NotFinite);
    };
    let mut converged = false;
    for _ in 0..6 {
        let (t2, f2, settled) = nelder_mead(&mut objective, th, 0.05, 1e-12, per_run);
        let improved = f - f2;
        if f2 < f {
            th = t2;
            f = f2;
        }
        if settled && improved <= 1e-11 * f.abs().max(1.0) {
            converged = true;
            break;
        }
    }
    let p = from_log(&th);
    let ll = data.log_likelihood(kind, &p);
    let inside = [(0, 1), (2, 3)]
        .iter()
        .all(|&(i, j)| pair_inside_or_on_ridge(data, kind, &th, ll, i, j));
    Ok(FitResult {
        model: kind,
        params: p,
        log_likelihood: ll,
        members: data.members,
        converged: converged && inside && ll.is_finite() && p.is_valid(),
        evaluations: evals,
    })
}

/// Whether parameters `i` and `j` (the two shapes of one mixing distribution) are away
/// from the bounds, or both large together on a ridge where the likelihood is flat.
fn pair_inside_or_on_ridge(
    data: &FitData,
    kind: ModelKind,
    th: &[f64; 4],
    ll: f64,
    i: usize,
    j: usize,
) -> bool {
    let near = |v: f64| v.abs() >= LOG_BOUND - BOUND_MARGIN;
    if !near(th[i]) && !near(th[j]) {
        return true;
    }
    // Both shapes large (a point mass at their ratio), none at the lower bound.
    if th[i] <= 0.0 || th[j] <= 0.0 {
        return false;
    }
    let at = |di: f64, dj: f64| {
        let mut t = *th;
        t[i] += di;
        t[j] += dj;
        data.log_likelihood(kind, &from_log(&t))
    };
    // Flat along the ridge (the mean kept) ...
    let along = at(-1.0, -1.0);
    // ... but pinned across it: the data must fix the mean, not let it run to 0 or ∞.
    let across = [at(0.0, 1.0), at(0.0, -1.0)];
    along.is_finite()
        && (ll - along).abs() <= RIDGE_FLATNESS
        && across.iter().all(|v| *v < ll - RIDGE_FLATNESS)
}

fn to_log(p: &Params) -> [f64; 4] {
    [p.r.ln(), p.alpha.ln(), p.a.ln(), p.b.ln()]
}

fn from_log(th: &[f64; 4]) -> Params {
    Params {
        r: th[0].exp(),
        alpha: th[1].exp(),
        a: th[2].exp(),
        b: th[3].exp(),
    }
}

/// Nelder–Mead from `x0` with an initial simplex of `step` along each axis. Returns the best
/// point, its value, and whether it stopped on tolerance (not on the evaluation budget).
fn nelder_mead(
    f: &mut impl FnMut(&[f64; 4]) -> f64,
    x0: [f64; 4],
    step: f64,
    tol: f64,
    max_evals: usize,
) -> ([f64; 4], f64, bool) {
    const N: usize = 4;
    let mut simplex: Vec<([f64; 4], f64)> = Vec::with_capacity(N + 1);
    simplex.push((x0, f(&x0)));
    for i in 0..N {
        let mut x = x0;
        x[i] += step;
        simplex.push((x, f(&x)));
    }
    let mut used = N + 1;
    loop {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        let spread = simplex
            .iter()
            .flat_map(|(x, _)| {
                x.iter()
                    .zip(simplex[0].0.iter())
                    .map(|(a, b)| (a - b).abs())
            })
            .fold(0.0, f64::max);
        if (worst - best).abs() <= tol * (best.abs() + tol) && spread < 1e-7 {
            return (simplex[0].0, best, true);
        }
        if used >= max_evals {
            return (simplex[0].0, best, false);
        }
        let mut centroid = [0.0; N];
        for (x, _) in &simplex[..N] {
            for i in 0..N {
                centroid[i] += x[i] / N as f64;
            }
        }
        let along = |t: f64| -> [f64; 4] {
            let mut p = [0.0; N];
            for i in 0..N {
                p[i] = centroid[i] + t * (simplex[N].0[i] - centroid[i]);
            }
            p
        };
        let xr = along(-1.0);
        let fr = f(&xr);
        used += 1;
        if fr < simplex[0].1 {
            let xe = along(-2.0);
            let fe = f(&xe);
            used += 1;
            simplex[N] = if fe < fr { (xe, fe) } else { (xr, fr) };
            continue;
        }
        if fr < simplex[N - 1].1 {
            simplex[N] = (xr, fr);
            continue;
        }
        let (xc, fc) = if fr < simplex[N].1 {
            let xc = along(-0.5);
            (xc, f(&xc))
        } else {
            let xc = along(0.5);
            (xc, f(&xc))
        };
        used += 1;
        if fc < simplex[N].1.min(fr) {
            simplex[N] = (xc, fc);
            continue;
        }
        // Shrink towards the best point.
        let x_best = simplex[0].0;
        for v in simplex.iter_mut().skip(1) {
            for (vi, bi) in v.0.iter_mut().zip(x_best) {
                *vi = bi + 0.5 * (*vi - bi);
            }
            v.1 = f(&v.0);
            used += 1;
        }
    }
}

/// Which parameters to use after a fit attempt.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The parameters to score with.
    pub params: Params,
    /// True when they are the new fit's.
    pub adopted_new: bool,
    /// Why the new fit was not adopted, in words (logged as a warning).
    pub warning: Option<String>,
}

/// Adopts a converged fit; otherwise falls back to `last_good`, or with none to `prior`
/// (the configured prior), with a warning. A fit that did not converge is never used.
pub fn choose(
    attempt: &Result<FitResult, FitError>,
    last_good: Option<Params>,
    prior: Params,
) -> Choice {
    match attempt {
        Ok(r) if r.converged => Choice {
            params: r.params,
            adopted_new: true,
            warning: None,
        },
        Ok(r) => match last_good {
            Some(p) => Choice {
                params: p,
                adopted_new: false,
                warning: Some(format!(
                    "the {} fit did not converge ({:?}, log-likelihood {:.3}); keeping the last good parameters",
                    r.model, r.params, r.log_likelihood
                )),
            },
            None => Choice {
                params: prior,
                adopted_new: false,
                warning: Some(format!(
                    "the {} fit did not converge ({:?}, log-likelihood {:.3}) and there are no earlier parameters; using the configured prior parameters",
                    r.model, r.params, r.log_likelihood
                )),
            },
        },
        Err(e) => Choice {
            params: last_good.unwrap_or(prior),
            adopted_new: false,
            warning: Some(format!(
                "cannot fit ({e}); using the {} parameters",
                if last_good.is_some() {
                    "last good"
                } else {
                    "configured prior"
                }
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::model::{log_likelihood, Rft};

    #[test]
    fn grouped_likelihood_equals_the_sum_over_members() {
        let members = [
            DaySummary {
                x: 0,
                t_x_days: 0,
                t_days: 30,
            },
            DaySummary {
                x: 3,
                t_x_days: 20,
                t_days: 30,
            },
            DaySummary {
                x: 3,
                t_x_days: 20,
                t_days: 30,
            },
            DaySummary {
                x: 10,
                t_x_days: 70,
                t_days: 71,
            },
        ];
        let p = Params {
            r: 0.4,
            alpha: 3.0,
            a: 0.8,
            b: 2.0,
        };
        for unit in [1.0, 7.0] {
            let data = FitData::new(members, unit);
            assert_eq!(data.distinct(), 3);
            for kind in [ModelKind::Mbgnbd, ModelKind::Bgnbd] {
                let direct: f64 = members
                    .iter()
                    .map(|s| log_likelihood(kind, &p, &s.to_rft(unit)))
                    .sum();
                let grouped = data.log_likelihood(kind, &p);
                assert!((direct - grouped).abs() < 1e-9, "{direct} {grouped}");
            }
        }
        let _ = Rft {
            x: 0.0,
            t_x: 0.0,
            t: 0.0,
        };
    }

    #[test]
    fn an_empty_fleet_cannot_be_fitted_and_falls_back_to_the_prior() {
        let data = FitData::new([], 1.0);
        let r = fit(&data, &FitOptions::new(ModelKind::Mbgnbd));
        assert_eq!(r.as_ref().unwrap_err(), &FitError::NoData);
        let prior = Params {
            r: 1.0,
            alpha: 2.0,
            a: 1.0,
            b: 9.0,
        };
        let c = choose(&r, None, prior);
        assert_eq!(c.params, prior);
        assert!(!c.adopted_new && c.warning.is_some());
    }

    #[test]
    fn a_degenerate_fleet_does_not_converge_and_keeps_the_last_good_parameters() {
        // Everyone active every single day: no evidence of stopping at all, so b runs off
        // to infinity. The fitter must say so rather than report nonsense as converged.
        let members = (0..200).map(|i| DaySummary {
            x: 50 + i % 3,
            t_x_days: 50 + i % 3,
            t_days: 50 + i % 3,
        });
        let data = FitData::new(members, 1.0);
        let r = fit(&data, &FitOptions::new(ModelKind::Bgnbd));
        let r = r.unwrap();
        assert!(!r.converged, "{r:?}");
        let good = Params {
            r: 1.0,
            alpha: 1.0,
            a: 1.0,
            b: 5.0,
        };
        let c = choose(&Ok(r), Some(good), good);
        assert_eq!(c.params, good);
        assert!(c.warning.unwrap().contains("did not converge"));
    }

    #[test]
    fn a_fit_that_does_not_converge_with_no_earlier_parameters_falls_back_to_the_prior() {
        let members = (0..200).map(|i| DaySummary {
            x: 50 + i % 3,
            t_x_days: 50 + i % 3,
            t_days: 50 + i % 3,
        });
        let r = fit(
            &FitData::new(members, 1.0),
            &FitOptions::new(ModelKind::Bgnbd),
        )
        .unwrap();
        assert!(!r.converged && r.params.is_valid(), "{r:?}");
        let prior = Params {
            r: 1.0,
            alpha: 2.0,
            a: 1.0,
            b: 30.0,
        };
        let c = choose(&Ok(r), None, prior);
        assert_eq!(c.params, prior, "the non-converged parameters are not used");
        assert!(!c.adopted_new);
        let w = c.warning.unwrap();
        assert!(
            w.contains("did not converge") && w.contains("configured prior"),
            "{w}"
        );
    }
}
