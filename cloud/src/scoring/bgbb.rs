//! BG/BB (Fader, Hardie and Shang 2010): the buy-till-you-die model for *discrete*
//! opportunities, here one a day.
//!
//! While alive, a member is active on each day with probability `p ~ Beta(α, β)`; at the
//! beginning of each day a living member dies (stops for good) with probability
//! `θ ~ Beta(γ, δ)`. A member is summarised by `(x, t_x, n)` in whole days: `x` active
//! days after the origin, `t_x` the day of the last of them (0 when `x = 0`), `n` the days
//! since the origin. Daily users are what this model is made for: `x` close to `n` is an
//! ordinary history here, where the continuous-time NBD models see an impossible rate.
//!
//! The likelihood (paper, eq. 5), with `B` the Beta function:
//!
//! ```text
//! L(x, t_x, n) = B(α+x, β+n−x)/B(α,β) · B(γ, δ+n)/B(γ,δ)                   (alive at n)
//!              + Σ_{j=t_x}^{n−1} B(α+x, β+j−x)/B(α,β) · B(γ+1, δ+j)/B(γ,δ)   (died before j+1)
//! ```
//!
//! Every output follows from it: the chance of no active day in the next `h` days is
//! `L(x, t_x, n+h) / L(x, t_x, n)` (the same history, silent `h` days longer), and
//! P(alive at n) is the first term over `L`. Consecutive terms of the sum differ by the
//! rational factor `(β+j−x)/(α+β+j) · (δ+j)/(γ+1+δ+j)`, so a member's numbers need six
//! `ln Γ` and one multiplication per silent day, never a `ln Γ` per term and never a
//! power that can overflow; the fleet likelihood ([`grouped_log_likelihood`]) tabulates
//! `ln Γ` once per day count and sums each frequency's terms once, backwards, so one
//! evaluation costs one `exp` and one `ln` per distinct `(x, t_x, n)`.

use super::model::{ln_gamma, Params, Rft};
use super::rhythm::{DayChances, Silence, UsualDays, USUAL_DAYS_WEIGHT, WEEKLY_PRIOR};
use serde::{Deserialize, Serialize};

/// BG/BB parameters under their published names. [`Params`] carries them in its four
/// slots in this order (`r`=α, `alpha`=β, `a`=γ, `b`=δ): that is how they are stored and
/// configured alongside the NBD models.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgbbParams {
    /// First shape of the daily activity probability's Beta distribution.
    pub alpha: f64,
    /// Second shape of the daily activity probability's Beta distribution.
    pub beta: f64,
    /// First shape of the daily drop-out probability's Beta distribution.
    pub gamma: f64,
    /// Second shape of the daily drop-out probability's Beta distribution.
    pub delta: f64,
}

impl BgbbParams {
    /// The parameters held in the slots of `p`.
    pub fn from_slots(p: &Params) -> Self {
        Self {
            alpha: p.r,
            beta: p.alpha,
            gamma: p.a,
            delta: p.b,
        }
    }
    /// The parameters in [`Params`] slots.
    pub fn to_slots(self) -> Params {
        Params {
            r: self.alpha,
            alpha: self.beta,
            a: self.gamma,
            b: self.delta,
        }
    }
}

/// `ln B(a, b)`.
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// A summary in whole opportunities, made consistent (`x ≤ t_x ≤ n`).
fn opportunities(s: &Rft) -> (f64, f64, f64) {
    let n = s.t.max(0.0).round();
    let t_x = s.t_x.max(0.0).round().min(n);
    let x = s.x.max(0.0).round().min(t_x);
    (x, t_x, n)
}

/// Everything the scorer needs about one member, from one pass over their silence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outputs {
    /// `ln L(x, t_x, n)`.
    pub log_likelihood: f64,
    /// P(alive at n).
    pub p_alive: f64,
    /// P(no active day in the next `h` days) for each requested horizon.
    pub p_silent: [f64; 2],
    /// Expected active days in the next `h` days for each requested horizon.
    pub expected_active: [f64; 2],
    /// P(a living member with this activity up to `t_x` stays silent until `n`): for BG/BB
    /// `B(α+x, β+n−x) / B(α+x, β+t_x−x)`; with the weekly rhythm, the readings' values
    /// mixed by their weights at `t_x`.
    pub p_silence_if_alive: f64,
    /// Expected daily activity probability while alive, from the history up to `t_x`.
    pub rate: f64,
    /// The weekdays the member is usually active on, when the weekly reading explains
    /// their days better than the pooled one and some weekdays stand out.
    pub usual_days: Option<UsualDays>,
}

/// The member's outputs for the horizons `h` (in days, rounded to whole days).
pub fn outputs(p: &BgbbParams, s: &Rft, h: [f64; 2]) -> Outputs {
    outputs_with(p, s, h, &DayChances::Pooled)
}

/// [`outputs`] with the member's silent days after `t_x` weighed by `chances`.
///
/// With [`DayChances::Weekly`] the member's days are explained two ways: BG/BB's one
/// daily chance, or one chance per weekday, each with the fleet's `Beta(α, β)` as its
/// prior ([`super::rhythm`]). The two are averaged by how well each explains the member's
/// own days up to `t_x` (their marginal likelihoods; [`WEEKLY_PRIOR`] before): a member with a
/// firm weekly rhythm is read by it, a daily member by the pooled chance (the seven
/// weekday chances pay for being seven), and the silence since `t_x` moves the weights
/// further. The drop-out process is BG/BB's in both; so is the log-likelihood, which
/// is that of the pooled model.
pub fn outputs_with(p: &BgbbParams, s: &Rft, h: [f64; 2], chances: &DayChances) -> Outputs {
    let (x, t_x, n) = opportunities(s);
    let (al, be, ga, de) = (p.alpha, p.beta, p.gamma, p.delta);
    let hs = [h[0].max(0.0).round(), h[1].max(0.0).round()];
    // ln of the alive term at t_x; every other term is taken relative to it.
    let ln_m_pooled = ln_beta(al + x, be + t_x - x) - ln_beta(al, be);
    let ln_a_tx =
        ln_m_pooled + ln_gamma(ga) + ln_gamma(de + t_x) - ln_gamma(ga + de + t_x) - ln_beta(ga, de);
    let pooled = Run::new(
        p,
        t_x,
        n,
        hs,
        Silence::new(&DayChances::Pooled, al, be, x, t_x),
    );
    let rate = (al + x) / (al + be + t_x);
    let weekly = match chances {
        DayChances::Weekly { weekdays, .. } if x > 0.0 && weekdays.spans(x, t_x) => {
            let belief = Silence::new(chances, al, be, x, t_x);
            Some((
                weekdays.log_marginal(al, be) - ln_m_pooled,
                belief.weekday_chances(),
                Run::new(p, t_x, n, hs, belief),
            ))
        }
        _ => None,
    };
    let Some((ln_bayes_factor, chances_at_t_x, weekly)) = weekly else {
        return pooled.outputs(ln_a_tx, rate);
    };
    // Prior weights from the history up to t_x: w = P(weekly | days up to t_x).
    let ln_odds = ln_bayes_factor + (WEEKLY_PRIOR / (1.0 - WEEKLY_PRIOR)).ln();
    let w = 1.0 / (1.0 + (-ln_odds).exp());
    let usual_days = chances_at_t_x
        .filter(|_| w > USUAL_DAYS_WEIGHT)
        .and_then(|c| UsualDays::from_chances(&c));
    let mix = |a: f64, b: f64| (1.0 - w) * a + w * b;
    let l_n = mix(pooled.l_n, weekly.l_n);
    // Posterior weight of the weekly reading at n (the silence since t_x included).
    let w_n = w * weekly.l_n / l_n;
    let p_alive = (mix(pooled.a_n, weekly.a_n) / l_n).clamp(0.0, 1.0);
    let expected = |i: usize| {
        (1.0 - w_n) * pooled.p_alive() * pooled.expected[i]
            + w_n * weekly.p_alive() * weekly.expected[i]
    };
    Outputs {
        log_likelihood: ln_a_tx + pooled.l_n.ln(),
        p_alive,
        p_silent: [
            (mix(pooled.l_h[0], weekly.l_h[0]) / l_n).clamp(0.0, 1.0),
            (mix(pooled.l_h[1], weekly.l_h[1]) / l_n).clamp(0.0, 1.0),
        ],
        expected_active: [expected(0), expected(1)],
        p_silence_if_alive: mix(pooled.q_n, weekly.q_n).clamp(0.0, 1.0),
        rate,
        usual_days,
    }
}

/// One pass over a member's silence from `t_x` to `n + max(h)` under one reading of
/// their days, every term relative to the alive term at `t_x`.
struct Run {
    /// `L(n) / A(t_x)`.
    l_n: f64,
    /// `A(n) / A(t_x)`.
    a_n: f64,
    /// P(silent from `t_x + 1` to `n` | alive).
    q_n: f64,
    /// `L(n + h) / A(t_x)` per horizon.
    l_h: [f64; 2],
    /// Σ over the next `h` days of P(survive to that day) · P(active on it | alive at n).
    expected: [f64; 2],
}

impl Run {
    fn new(p: &BgbbParams, t_x: f64, n: f64, hs: [f64; 2], mut silence: Silence) -> Run {
        let (ga, de) = (p.gamma, p.delta);
        let end = n + hs[0].max(hs[1]);
        // s = Σ dead terms / A(t_x), e = A(j) / A(t_x), q = P(silent t_x+1..=j | alive)
        // (BG/BB: B(α+x, β+j−x)/B(α+x, β+t_x−x)).
        let (mut s_sum, mut e, mut q) = (0.0f64, 1.0f64, 1.0f64);
        let mut at_n = (1.0, 1.0, 1.0, silence);
        let mut l_h = [1.0f64; 2];
        let mut j = t_x;
        loop {
            if j == n {
                at_n = (s_sum + e, e, q, silence);
            }
            for k in 0..2 {
                if j == n + hs[k] {
                    l_h[k] = s_sum + e;
                }
            }
            if j >= end {
                break;
            }
            s_sum += e * ga / (ga + de + j);
            let fp = silence.next_silent(j);
            e *= fp * (de + j) / (ga + de + j);
            if j < n {
                q *= fp;
            }
            j += 1.0;
        }
        let (l_n, a_n, q_n, belief) = at_n;
        let mut expected = [0.0f64; 2];
        let mut surv = 1.0;
        let mut acc = 0.0;
        let mut k = 0.0;
        while k < hs[0].max(hs[1]) {
            surv *= (de + n + k) / (ga + de + n + k);
            acc += surv * belief.active(n + k);
            k += 1.0;
            for i in 0..2 {
                if k == hs[i] {
                    expected[i] = acc;
                }
            }
        }
        Run {
            l_n,
            a_n,
            q_n,
            l_h,
            expected,
        }
    }

    fn p_alive(&self) -> f64 {
        (self.a_n / self.l_n).clamp(0.0, 1.0)
    }

    fn outputs(&self, ln_a_tx: f64, rate: f64) -> Outputs {
        let p_alive = self.p_alive();
        Outputs {
            log_likelihood: ln_a_tx + self.l_n.ln(),
            p_alive,
            p_silent: [
                (self.l_h[0] / self.l_n).clamp(0.0, 1.0),
                (self.l_h[1] / self.l_n).clamp(0.0, 1.0),
            ],
            expected_active: [p_alive * self.expected[0], p_alive * self.expected[1]],
            p_silence_if_alive: self.q_n.clamp(0.0, 1.0),
            rate,
            usual_days: None,
        }
    }
}

/// One member's log-likelihood.
pub fn log_likelihood(p: &BgbbParams, s: &Rft) -> f64 {
    outputs(p, s, [0.0, 0.0]).log_likelihood
}

/// The total log-likelihood of grouped summaries in whole days: `xs` the distinct
/// frequencies, `groups` sorted by `(x, t_x, n)` as `(index into xs, t_x, n, weight)`,
/// every `n ≤ max_day`.
///
/// Per frequency `x`, the dead terms are `D(j) ∝ exp(g(j))` with
///
/// ```text
/// g(j) = ln Γ(β+j−x) − ln Γ(α+β+j) + ln Γ(δ+j) − ln Γ(γ+1+δ+j),
/// ```
///
/// summed backwards as `R(m) = Σ_{j=m}^{J−1} D(j)/D(m) = 1 + ρ(m)·R(m+1)` with the
/// rational ratio `ρ`. With `w(n) = (γ+δ+n)/γ`, the alive term over the dead term at `n`:
///
/// ```text
/// ln L = ln Γ(α+x) + c + g(t_x) + ln(R(t_x) + e^{g(n)−g(t_x)}·(w(n) − R(n))).
/// ```
pub fn grouped_log_likelihood(
    p: &BgbbParams,
    xs: &[u32],
    groups: &[(u32, u32, u32, f64)],
    max_day: u32,
) -> f64 {
    let (al, be, ga, de) = (p.alpha, p.beta, p.gamma, p.delta);
    let len = max_day as usize + 1;
    let tab = |f: &dyn Fn(f64) -> f64| -> Vec<f64> { (0..len).map(|d| f(d as f64)).collect() };
    let t_b = tab(&|d| ln_gamma(be + d));
    let t_ab = tab(&|d| ln_gamma(al + be + d));
    let t_d = tab(&|d| ln_gamma(de + d));
    let t_g1d = tab(&|d| ln_gamma(ga + 1.0 + de + d));
    // ρ(m) = (β+m−x) · q(m), q(m) = (δ+m) / ((α+β+m)(γ+1+δ+m)).
    let t_q = tab(&|d| (de + d) / ((al + be + d) * (ga + 1.0 + de + d)));
    let c = ln_gamma(ga + 1.0) - ln_beta(al, be) - ln_beta(ga, de);
    let ctx = Tables {
        be,
        ga,
        de,
        al,
        c,
        t_b: &t_b,
        t_ab: &t_ab,
        t_d: &t_d,
        t_g1d: &t_g1d,
        t_q: &t_q,
        xs,
    };
    // Split at frequency boundaries so each block sums its own terms.
    let threads = super::threads(8);
    if threads < 2 || groups.len() < 20_000 {
        return ctx.sum(groups);
    }
    let mut cuts = vec![0usize];
    let target = groups.len().div_ceil(threads);
    let mut at = target;
    while at < groups.len() {
        let xi = groups[at].0;
        let mut k = at;
        while k < groups.len() && groups[k].0 == xi {
            k += 1;
        }
        if k < groups.len() {
            cuts.push(k);
        }
        at = k + target;
    }
    cuts.push(groups.len());
    cuts.dedup();
    let ctx = &ctx;
    std::thread::scope(|sc| {
        let handles: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let part = &groups[w[0]..w[1]];
                sc.spawn(move || ctx.sum(part))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("likelihood thread"))
            .sum()
    })
}

/// Per-evaluation tables for [`grouped_log_likelihood`].
struct Tables<'a> {
    al: f64,
    be: f64,
    ga: f64,
    de: f64,
    c: f64,
    t_b: &'a [f64],
    t_ab: &'a [f64],
    t_d: &'a [f64],
    t_g1d: &'a [f64],
    t_q: &'a [f64],
    xs: &'a [u32],
}

impl Tables<'_> {
    fn sum(&self, groups: &[(u32, u32, u32, f64)]) -> f64 {
        let mut total = 0.0;
        let mut r: Vec<f64> = Vec::new();
        let mut start = 0;
        while start < groups.len() {
            let xi = groups[start].0;
            let mut stop = start;
            let (mut lo, mut hi) = (u32::MAX, 0u32);
            while stop < groups.len() && groups[stop].0 == xi {
                lo = lo.min(groups[stop].1);
                hi = hi.max(groups[stop].2);
                stop += 1;
            }
            let x = self.xs[xi as usize];
            let xf = x as f64;
            // R over [lo, hi]; r[m − lo].
            let width = (hi - lo) as usize + 1;
            r.clear();
            r.resize(width, 0.0);
            for m in (lo..hi).rev() {
                let i = (m - lo) as usize;
                let rho = (self.be + m as f64 - xf) * self.t_q[m as usize];
                r[i] = 1.0 + rho * r[i + 1];
            }
            let g = |m: u32| -> f64 {
                let m = m as usize;
                self.t_b[m - x as usize] - self.t_ab[m] + self.t_d[m] - self.t_g1d[m]
            };
            let head = ln_gamma(self.al + xf) + self.c;
            for &(_, tx, n, w) in &groups[start..stop] {
                let g_tx = g(tx);
                let r_tx = r[(tx - lo) as usize];
                let r_n = r[(n - lo) as usize];
                let wn = (self.ga + self.de + n as f64) / self.ga;
                let inner = if n == tx {
                    wn
                } else {
                    r_tx + (g(n) - g_tx).exp() * (wn - r_n)
                };
                total += w * (head + g_tx + inner.ln());
            }
            start = stop;
        }
        total
    }
}

/// Draws `n` members from BG/BB with `p` over up to `max_days` daily opportunities
/// (each member's `n` uniform in `1..=max_days`). Deterministic for a given seed.
pub fn simulate(
    p: &BgbbParams,
    members: usize,
    max_days: u32,
    seed: u64,
) -> Vec<super::summary::DaySummary> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..members)
        .map(|_| {
            let n = rng.u32(1..=max_days.max(1));
            let pa = super::simulate::beta(&mut rng, p.alpha, p.beta);
            let th = super::simulate::beta(&mut rng, p.gamma, p.delta);
            // Day of death: geometric in θ (dies at the beginning of day `death`).
            let u = rng.f64().max(f64::MIN_POSITIVE);
            let death = if th <= 0.0 {
                u32::MAX
            } else if th >= 1.0 {
                1
            } else {
                let d = 1.0 + (u.ln() / (1.0 - th).ln()).floor();
                if d >= n as f64 + 1.0 {
                    u32::MAX
                } else {
                    d as u32
                }
            };
            let last_alive_day = n.min(death.saturating_sub(1));
            let (mut x, mut t_x) = (0u32, 0u32);
            for day in 1..=last_alive_day {
                if rng.f64() < pa {
                    x += 1;
                    t_x = day;
                }
            }
            super::summary::DaySummary {
                x,
                t_x_days: t_x,
                t_days: n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::rhythm::Weekdays;

    /// The published donation fit (FHS 2010).
    const DONATIONS: BgbbParams = BgbbParams {
        alpha: 1.204,
        beta: 0.750,
        gamma: 0.657,
        delta: 2.783,
    };

    fn rft(x: f64, t_x: f64, t: f64) -> Rft {
        Rft { x, t_x, t }
    }

    /// A daily-usage fleet's parameters (rate about 0.6, about one drop-out in 400 days).
    const DAILY: BgbbParams = BgbbParams {
        alpha: 1.3,
        beta: 0.85,
        gamma: 0.6,
        delta: 240.0,
    };

    /// A member's days as a weekly pattern: origin on a Monday (day 4), then `weeks`
    /// weeks (to a Sunday) active on the weekdays in `on` (Monday first); the last active
    /// day is the last of them in the final week.
    fn weekly_member(weeks: i32, on: [bool; 7]) -> (f64, f64, DayChances) {
        let origin = 4;
        let active: Vec<i32> = (1..weeks * 7)
            .map(|k| origin + k)
            .filter(|d| on[super::super::rhythm::weekday(*d)])
            .collect();
        let last = *active.last().expect("some active day");
        let weekdays = Weekdays::count(origin, last, active.iter().copied());
        let x = active.len() as f64;
        (
            x,
            (last - origin) as f64,
            DayChances::Weekly {
                weekdays,
                origin_weekday: super::super::rhythm::weekday(origin),
            },
        )
    }

    /// The averaged outputs from closed forms: Beta-function ratios for each reading's
    /// silence, summed over the day of drop-out, weighted by each reading's marginal
    /// likelihood (no sequential update as in [`Run`]).
    fn closed_form(p: &BgbbParams, x: f64, t_x: f64, n: f64, h: f64, c: &DayChances) -> ClosedForm {
        let DayChances::Weekly {
            weekdays,
            origin_weekday,
        } = *c
        else {
            unreachable!()
        };
        let (al, be, ga, de) = (p.alpha, p.beta, p.gamma, p.delta);
        let quiet = |w: usize| f64::from(weekdays.days[w] - weekdays.active[w]);
        let act = |w: usize| f64::from(weekdays.active[w]);
        // ln P(silent t_x+1..=m | alive) under each reading.
        let pooled_silent = |m: f64| ln_beta(al + x, be + m - x) - ln_beta(al + x, be + t_x - x);
        let weekly_silent = |m: f64| {
            let mut s = [0.0f64; 7];
            let mut k = t_x + 1.0;
            while k <= m {
                s[(origin_weekday + k as usize) % 7] += 1.0;
                k += 1.0;
            }
            (0..7)
                .map(|w| {
                    ln_beta(al + act(w), be + quiet(w) + s[w]) - ln_beta(al + act(w), be + quiet(w))
                })
                .sum::<f64>()
        };
        let alive = |m: f64| ln_beta(ga, de + m) - ln_beta(ga, de + t_x);
        let died = |j: f64| ln_beta(ga + 1.0, de + j) - ln_beta(ga, de + t_x);
        let l = |silent: &dyn Fn(f64) -> f64, m: f64| -> (f64, f64) {
            let a = (silent(m) + alive(m)).exp();
            let mut d = 0.0;
            let mut j = t_x;
            while j < m {
                d += (silent(j) + died(j)).exp();
                j += 1.0;
            }
            (a, a + d)
        };
        let ln_m_pooled = ln_beta(al + x, be + t_x - x) - ln_beta(al, be);
        let ln_m_weekly: f64 = (0..7)
            .map(|w| ln_beta(al + act(w), be + quiet(w)) - ln_beta(al, be))
            .sum();
        let prior_odds = WEEKLY_PRIOR / (1.0 - WEEKLY_PRIOR);
        let w = 1.0 / (1.0 + (ln_m_pooled - ln_m_weekly).exp() / prior_odds);
        let (ap, lp) = l(&pooled_silent, n);
        let (aw, lw) = l(&weekly_silent, n);
        let (_, lph) = l(&pooled_silent, n + h);
        let (_, lwh) = l(&weekly_silent, n + h);
        let l_n = (1.0 - w) * lp + w * lw;
        // Expected active days over the next h: per reading, Σ_k P(alive at n+k | data) ·
        // P(active on day n+k | alive, silent to n), the readings weighed after the silence.
        let w_n = w * lw / l_n;
        let active_pooled = |_: f64| (al + x) / (al + be + n);
        let active_weekly = |day: f64| {
            let wd = (origin_weekday + day as usize) % 7;
            let silent = (t_x as usize + 1..=n as usize)
                .filter(|k| (origin_weekday + k) % 7 == wd)
                .count() as f64;
            (al + act(wd)) / (al + be + act(wd) + quiet(wd) + silent)
        };
        let expected = |a: f64, l: f64, active: &dyn Fn(f64) -> f64| {
            (1..=h as u32)
                .map(|k| {
                    let day = n + f64::from(k);
                    a / l * (ln_beta(ga, de + day) - ln_beta(ga, de + n)).exp() * active(day)
                })
                .sum::<f64>()
        };
        ClosedForm {
            p_alive: ((1.0 - w) * ap + w * aw) / l_n,
            p_silent: ((1.0 - w) * lph + w * lwh) / l_n,
            expected_active: (1.0 - w_n) * expected(ap, lp, &active_pooled)
                + w_n * expected(aw, lw, &active_weekly),
            p_silence_if_alive: (1.0 - w) * pooled_silent(n).exp() + w * weekly_silent(n).exp(),
        }
    }

    /// What [`closed_form`] works out.
    struct ClosedForm {
        p_alive: f64,
        p_silent: f64,
        expected_active: f64,
        p_silence_if_alive: f64,
    }

    #[test]
    fn the_weekly_reading_matches_its_closed_form() {
        let weekdays_only = [true, true, true, true, true, false, false];
        let tuesdays = [false, true, false, false, false, false, false];
        for (on, weeks) in [(weekdays_only, 8), (tuesdays, 12), ([true; 7], 3)] {
            let (x, t_x, c) = weekly_member(weeks, on);
            for silent in [0.0, 1.0, 2.0, 3.0, 6.0, 9.0, 20.0] {
                let n = t_x + silent;
                let o = outputs_with(&DAILY, &rft(x, t_x, n), [14.0, 30.0], &c);
                let want = closed_form(&DAILY, x, t_x, n, 14.0, &c);
                let what = format!("{on:?} x={x} t_x={t_x} n={n}");
                let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
                for (name, got, want) in [
                    ("P(alive)", o.p_alive, want.p_alive),
                    ("P(silent 14 d)", o.p_silent[0], want.p_silent),
                    ("E[active 14 d]", o.expected_active[0], want.expected_active),
                    (
                        "P(silence | alive)",
                        o.p_silence_if_alive,
                        want.p_silence_if_alive,
                    ),
                ] {
                    assert!(close(got, want), "{what}: {name} {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn a_weekday_member_is_read_by_their_rhythm() {
        let (x, t_x, c) = weekly_member(8, [true, true, true, true, true, false, false]);
        let pooled = |n: f64| outputs(&DAILY, &rft(x, t_x, n), [14.0, 30.0]);
        let weekly = |n: f64| outputs_with(&DAILY, &rft(x, t_x, n), [14.0, 30.0], &c);
        // The last active day is a Friday: a silent weekend is ordinary for them ...
        let weekend = t_x + 2.0;
        assert!(
            weekly(weekend).p_alive > pooled(weekend).p_alive,
            "{} vs {}",
            weekly(weekend).p_alive,
            pooled(weekend).p_alive
        );
        assert!(
            weekly(weekend).p_alive > 0.95,
            "{}",
            weekly(weekend).p_alive
        );
        // ... a silent Monday to Wednesday after it is not.
        let wednesday = t_x + 5.0;
        assert!(
            weekly(wednesday).p_alive < pooled(wednesday).p_alive,
            "{} vs {}",
            weekly(wednesday).p_alive,
            pooled(wednesday).p_alive
        );
        // Staff read the rhythm as the member's usual days.
        assert_eq!(
            weekly(wednesday)
                .usual_days
                .map(UsualDays::phrase)
                .as_deref(),
            Some("on weekdays")
        );
        assert_eq!(pooled(wednesday).usual_days, None);
        // Expected active days follow the weekdays: about five in seven over 30 days.
        let e = weekly(t_x).expected_active[1];
        assert!((18.0..=23.0).contains(&e), "{e}");
        // More silence never raises P(engaged), whatever the weekday.
        let mut last = 1.0;
        for s in 0..40 {
            let p = weekly(t_x + f64::from(s)).p_alive;
            assert!(p <= last + 1e-12, "day {s}: {p} after {last}");
            last = p;
        }
    }

    #[test]
    fn a_member_without_a_weekly_rhythm_is_read_as_by_bg_bb() {
        // Active on every day but the weekday that rotates: no weekday stands out.
        let origin = 4;
        let active: Vec<i32> = (1..=70)
            .filter(|k| k % 6 != 0)
            .map(|k| origin + k)
            .collect();
        let last = *active.last().unwrap();
        let (x, t_x) = (active.len() as f64, f64::from(last - origin));
        let c = DayChances::Weekly {
            weekdays: Weekdays::count(origin, last, active.iter().copied()),
            origin_weekday: super::super::rhythm::weekday(origin),
        };
        for silent in [0.0, 2.0, 4.0, 7.0] {
            let s = rft(x, t_x, t_x + silent);
            let (p, w) = (
                outputs(&DAILY, &s, [14.0, 30.0]),
                outputs_with(&DAILY, &s, [14.0, 30.0], &c),
            );
            assert!(
                (p.p_alive - w.p_alive).abs() < 0.02,
                "silent {silent}: {} vs {}",
                p.p_alive,
                w.p_alive
            );
        }
        let s = rft(x, t_x, t_x + 1.0);
        assert_eq!(outputs_with(&DAILY, &s, [14.0, 30.0], &c).usual_days, None);
        // Counts that do not cover the member's days are not used.
        let wrong = DayChances::Weekly {
            weekdays: Weekdays::default(),
            origin_weekday: 0,
        };
        let s = rft(x, t_x, t_x + 5.0);
        assert_eq!(
            outputs(&DAILY, &s, [14.0, 30.0]),
            outputs_with(&DAILY, &s, [14.0, 30.0], &wrong)
        );
    }

    /// The likelihood term by term with `ln Γ`, as the paper writes it.
    fn direct_ll(p: &BgbbParams, x: f64, t_x: f64, n: f64) -> f64 {
        let (al, be, ga, de) = (p.alpha, p.beta, p.gamma, p.delta);
        let base = -ln_beta(al, be) - ln_beta(ga, de);
        let mut terms = vec![ln_beta(al + x, be + n - x) + ln_beta(ga, de + n) + base];
        let mut j = t_x;
        while j < n {
            terms.push(ln_beta(al + x, be + j - x) + ln_beta(ga + 1.0, de + j) + base);
            j += 1.0;
        }
        let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln()
    }

    #[test]
    fn the_recursion_matches_the_likelihood_written_with_ln_gamma() {
        for (x, t_x, n) in [
            (0.0, 0.0, 6.0),
            (3.0, 5.0, 6.0),
            (6.0, 6.0, 6.0),
            (40.0, 60.0, 150.0),
            (0.0, 0.0, 0.0),
        ] {
            let ours = log_likelihood(&DONATIONS, &rft(x, t_x, n));
            let theirs = direct_ll(&DONATIONS, x, t_x, n);
            assert!(
                (ours - theirs).abs() < 1e-10,
                "{x} {t_x} {n}: {ours} {theirs}"
            );
        }
    }

    #[test]
    fn grouped_likelihood_equals_the_sum_over_members() {
        let members = [
            (0u32, 0u32, 6u32, 2.0),
            (2, 3, 6, 1.0),
            (2, 6, 6, 3.0),
            (5, 90, 200, 1.0),
        ];
        let xs = vec![0u32, 2, 5];
        let groups: Vec<_> = members
            .iter()
            .map(|&(x, tx, n, w)| (xs.binary_search(&x).unwrap() as u32, tx, n, w))
            .collect();
        let grouped = grouped_log_likelihood(&DONATIONS, &xs, &groups, 200);
        let direct: f64 = members
            .iter()
            .map(|&(x, tx, n, w)| w * direct_ll(&DONATIONS, x as f64, tx as f64, n as f64))
            .sum();
        assert!((grouped - direct).abs() < 1e-9, "{grouped} {direct}");
    }

    #[test]
    fn silence_probabilities_are_likelihood_ratios_and_more_silence_never_helps() {
        let p = BgbbParams {
            alpha: 3.0,
            beta: 1.0,
            gamma: 0.5,
            delta: 400.0,
        };
        let o = outputs(&p, &rft(50.0, 60.0, 66.0), [14.0, 30.0]);
        let l = |n: f64| direct_ll(&p, 50.0, 60.0, n);
        assert!((o.p_silent[0] - (l(80.0) - l(66.0)).exp()).abs() < 1e-12);
        assert!((o.p_silent[1] - (l(96.0) - l(66.0)).exp()).abs() < 1e-12);
        let mut last = (1.0, 0.0);
        for n in 60..200 {
            let o = outputs(&p, &rft(50.0, 60.0, n as f64), [14.0, 30.0]);
            assert!(o.p_alive <= last.0 + 1e-15 && o.p_silent[0] >= last.1 - 1e-15);
            last = (o.p_alive, o.p_silent[0]);
        }
    }

    #[test]
    fn huge_histories_stay_finite() {
        let p = BgbbParams {
            alpha: 2.0,
            beta: 0.5,
            gamma: 0.4,
            delta: 300.0,
        };
        for (x, t_x, n) in [
            (10_000.0, 10_000.0, 10_000.0),
            (10_000.0, 10_000.0, 15_000.0),
            (0.0, 0.0, 0.0),
            (0.0, 0.0, 5_000.0),
        ] {
            let o = outputs(&p, &rft(x, t_x, n), [14.0, 30.0]);
            assert!(o.log_likelihood.is_finite(), "{x} {t_x} {n} {o:?}");
            for v in [
                o.p_alive,
                o.p_silent[0],
                o.p_silent[1],
                o.p_silence_if_alive,
            ] {
                assert!((0.0..=1.0).contains(&v), "{x} {t_x} {n} {o:?}");
            }
            assert!(o.expected_active[1] >= 0.0 && o.expected_active[1] <= 30.0);
        }
        let gone = outputs(&p, &rft(10_000.0, 10_000.0, 15_000.0), [14.0, 30.0]);
        assert!(gone.p_alive < 1e-300);
        let here = outputs(&p, &rft(10_000.0, 10_000.0, 10_000.0), [14.0, 30.0]);
        assert!(here.p_alive == 1.0 && here.expected_active[1] > 25.0);
    }
}
