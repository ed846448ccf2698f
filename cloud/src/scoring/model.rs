//! The buy-till-you-die models: MBG/NBD (Batislam, Denizel and Filiztekin 2007) and
//! BG/NBD (Fader, Hardie and Lee 2005), in log space, and the entry points that dispatch
//! to BG/BB (Fader, Hardie and Shang 2010, discrete daily opportunities, the default;
//! its mathematics is in [`super::bgbb`]).
//!
//! A member is summarised by `(x, t_x, T)` in the model's time unit: `x` active days
//! after the origin, `t_x` the time from the origin to the last of them (0 when
//! `x = 0`), `T` the time from the origin to the moment of scoring. While engaged, a
//! member is active at a rate `λ ~ Gamma(r, α)`; after each active day (and, in MBG/NBD,
//! also at the origin) they stop for good with probability `p ~ Beta(a, b)`.
//!
//! Every quantity here is computed from `ln Γ` and logarithms: the ratio
//! `((α+T)/(α+t_x))^(r+x)` that overflows in other implementations at large `x` is only
//! ever formed as `(r+x)·ln1p((T−t_x)/(α+t_x))`. No Gauss hypergeometric function is
//! needed for the engagement and silence probabilities; the expected number of active
//! days uses a rearranged `₂F₁` series whose parameters do not grow with `x` (see
//! [`expected_active`]).

use super::bgbb::{self, BgbbParams};
use super::rhythm::{DayChances, UsualDays};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Modified BG/NBD: a member may also stop right at the origin, so a member with no
    /// repeat activity is not certainly engaged.
    Mbgnbd,
    /// BG/NBD: stopping happens only after an active day; P(engaged) is 1 for `x = 0`.
    Bgnbd,
    /// BG/BB: one opportunity a day, active with probability `p ~ Beta(α, β)` while
    /// alive, dropping out before each day with probability `θ ~ Beta(γ, δ)`. Made for
    /// daily usage; [`Params`] holds `(α, β, γ, δ)` in its slots (see
    /// [`super::bgbb::BgbbParams`]).
    #[default]
    Bgbb,
}

impl ModelKind {
    /// The name used on the command line, in JSON and in the store.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mbgnbd => "mbgnbd",
            ModelKind::Bgnbd => "bgnbd",
            ModelKind::Bgbb => "bgbb",
        }
    }
    /// Parses `mbgnbd`, `bgnbd` or `bgbb`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mbgnbd" | "mbg/nbd" | "mbg" => Some(ModelKind::Mbgnbd),
            "bgnbd" | "bg/nbd" | "bg" => Some(ModelKind::Bgnbd),
            "bgbb" | "bg/bb" => Some(ModelKind::Bgbb),
            _ => None,
        }
    }
    /// The names of the four parameters, in [`Params`] slot order.
    pub fn param_names(self) -> [&'static str; 4] {
        match self {
            ModelKind::Mbgnbd | ModelKind::Bgnbd => ["r", "alpha", "a", "b"],
            ModelKind::Bgbb => ["alpha", "beta", "gamma", "delta"],
        }
    }
    /// Whether the model counts whole daily opportunities (BG/BB) rather than continuous time.
    pub fn is_discrete(self) -> bool {
        self == ModelKind::Bgbb
    }
    /// Survival opportunities a member with `x` repeat active days has passed: the
    /// second Beta parameter of `p` given engagement is `b` plus this.
    fn survivals(self, x: f64) -> f64 {
        match self {
            ModelKind::Mbgnbd => x + 1.0,
            ModelKind::Bgnbd | ModelKind::Bgbb => x,
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The four fleet-level parameters (for BG/BB, `(α, β, γ, δ)` in slot order).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Shape of the activity-rate Gamma distribution.
    pub r: f64,
    /// Scale (in time units) of the activity-rate Gamma distribution.
    pub alpha: f64,
    /// First shape of the stop-probability Beta distribution.
    pub a: f64,
    /// Second shape of the stop-probability Beta distribution.
    pub b: f64,
}

impl Params {
    /// True when every parameter is finite and positive.
    pub fn is_valid(&self) -> bool {
        [self.r, self.alpha, self.a, self.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
    }
    /// The parameters as a JSON object under `kind`'s names (`{"r", "alpha", "a", "b"}`,
    /// or `{"alpha", "beta", "gamma", "delta"}` for BG/BB).
    pub fn named(&self, kind: ModelKind) -> serde_json::Value {
        serde_json::to_value(NamedParams(kind, *self)).expect("numbers serialise")
    }
}

/// Serialises a [`Params`] field under the names of the model in the same struct: used
/// with `#[serde(serialize_with)]` through [`NamedParams`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NamedParams(pub ModelKind, pub Params);

impl Serialize for NamedParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let p = &self.1;
        let mut m = s.serialize_map(Some(4))?;
        for (name, v) in self.0.param_names().iter().zip([p.r, p.alpha, p.a, p.b]) {
            m.serialize_entry(name, &v)?;
        }
        m.end()
    }
}

/// A member's summary in model time units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rft {
    /// Repeat active days (frequency).
    pub x: f64,
    /// Time of the last active day since the origin (recency); 0 when `x = 0`.
    pub t_x: f64,
    /// Time since the origin (age).
    pub t: f64,
}

/// `ln Γ(x)` for `x > 0` (libm's `lgamma`, checked against known values in the tests).
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// `ln(e^u + e^v)` without overflow.
pub fn log_add_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `ln((α+T)/(α+t_x))`, accurate when `T − t_x` is small against `α + t_x`.
fn ln_age_ratio(p: &Params, s: &Rft) -> f64 {
    ((s.t - s.t_x).max(0.0) / (p.alpha + s.t_x)).ln_1p()
}

/// Log of the odds that a member has stopped: `ln(P(stopped)/P(engaged))`.
/// MBG/NBD: `ln a − ln(b+x) + (r+x)·ln((α+T)/(α+t_x))`; BG/NBD the same with `b+x−1`,
/// and `−∞` when `x = 0`.
/// For BG/BB, `ln((1 − P(alive))/P(alive))`.
pub fn ln_stop_odds(kind: ModelKind, p: &Params, s: &Rft) -> f64 {
    let denom = match kind {
        ModelKind::Bgbb => {
            let pa = p_engaged(kind, p, s);
            return (1.0 - pa).ln() - pa.ln();
        }
        ModelKind::Mbgnbd => p.b + s.x,
        ModelKind::Bgnbd if s.x <= 0.0 => return f64::NEG_INFINITY,
        ModelKind::Bgnbd => p.b + s.x - 1.0,
    };
    p.a.ln() - denom.ln() + (p.r + s.x) * ln_age_ratio(p, s)
}

/// `1 / (1 + e^z)` without overflow.
fn logistic_of_neg(z: f64) -> f64 {
    if z > 0.0 {
        let e = (-z).exp();
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + z.exp())
    }
}

/// P(engaged | x, t_x, T): the probability that the member has not stopped.
pub fn p_engaged(kind: ModelKind, p: &Params, s: &Rft) -> f64 {
    if kind == ModelKind::Bgbb {
        return bgbb::outputs(&BgbbParams::from_slots(p), s, [0.0, 0.0]).p_alive;
    }
    logistic_of_neg(ln_stop_odds(kind, p, s))
}

/// `ln P(no active day in (T, T+h] | engaged at T)` = `(r+x)·ln((α+T)/(α+T+h))`: the
/// rate given engagement is `Gamma(r+x, α+T)`, and stopping only happens at active days.
pub fn ln_p_quiet_if_engaged(p: &Params, s: &Rft, h: f64) -> f64 {
    -(p.r + s.x) * (h / (p.alpha + s.t)).ln_1p()
}

/// P(no active day in the next `h` time units | x, t_x, T) =
/// `P(stopped) + P(engaged)·((α+T)/(α+T+h))^(r+x)`.
/// For BG/BB, `L(x, t_x, n+h) / L(x, t_x, n)` in whole days.
pub fn p_silent(kind: ModelKind, p: &Params, s: &Rft, h: f64) -> f64 {
    if kind == ModelKind::Bgbb {
        return bgbb::outputs(&BgbbParams::from_slots(p), s, [h, 0.0]).p_silent[0];
    }
    let pe = p_engaged(kind, p, s);
    let quiet = ln_p_quiet_if_engaged(p, s, h).exp();
    ((1.0 - pe) + pe * quiet).clamp(0.0, 1.0)
}

/// How often an engaged member with this history goes as long without an active day as
/// this member has: `((α+t_x)/(α+T))^(r+x)`, the chance of no activity in `(t_x, T]` for
/// a member whose rate, given their activity up to `t_x`, is `Gamma(r+x, α+t_x)`.
pub fn p_silence_this_long_if_engaged(p: &Params, s: &Rft) -> f64 {
    (-(p.r + s.x) * ln_age_ratio(p, s)).exp()
}

/// Expected active rate (per time unit) of the member while engaged, given their
/// activity up to their last active day: `(r+x)/(α+t_x)`.
pub fn rate_if_engaged(p: &Params, s: &Rft) -> f64 {
    (p.r + s.x) / (p.alpha + s.t_x)
}

/// Everything the scorer reports about one member, computed once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberOutputs {
    /// P(engaged).
    pub p_engaged: f64,
    /// P(no active day in the next `h[0]` and `h[1]` time units).
    pub p_silent: [f64; 2],
    /// Expected active days in the next `h[1]` time units.
    pub expected_active: f64,
    /// How often an engaged member with this history goes as long without activity.
    pub p_silence_if_engaged: f64,
    /// Active days per time unit while engaged (BG/BB: the daily probability).
    pub rate: f64,
    /// The weekdays the member is usually active on (BG/BB with the weekly rhythm only).
    pub usual_days: Option<UsualDays>,
}

/// [`p_engaged`], [`p_silent`] at both horizons, [`expected_active`] at `h[1]`, the
/// silence probability if engaged and the rate, in one go (one pass for BG/BB). `chances`
/// weighs BG/BB's silent days (the member's weekly rhythm); the NBD models ignore it.
pub fn member_outputs(
    kind: ModelKind,
    p: &Params,
    s: &Rft,
    h: [f64; 2],
    chances: &DayChances,
) -> MemberOutputs {
    if kind == ModelKind::Bgbb {
        let o = bgbb::outputs_with(&BgbbParams::from_slots(p), s, h, chances);
        return MemberOutputs {
            p_engaged: o.p_alive,
            p_silent: o.p_silent,
            expected_active: o.expected_active[1],
            p_silence_if_engaged: o.p_silence_if_alive,
            rate: o.rate,
            usual_days: o.usual_days,
        };
    }
    MemberOutputs {
        p_engaged: p_engaged(kind, p, s),
        p_silent: [p_silent(kind, p, s, h[0]), p_silent(kind, p, s, h[1])],
        expected_active: expected_active(kind, p, s, h[1]),
        p_silence_if_engaged: p_silence_this_long_if_engaged(p, s),
        rate: rate_if_engaged(p, s),
        usual_days: None,
    }
}

/// One member's log-likelihood contribution.
///
/// BG/NBD: `ln Γ(r+x) − ln Γ(r) + r ln α + ln B(a, b+x) − ln B(a, b)` plus
/// `ln[(α+T)^−(r+x) + δ(x>0)·a/(b+x−1)·(α+t_x)^−(r+x)]`.
/// MBG/NBD: the same with `B(a, b+x+1)` and `a/(b+x)`, the second term for every `x`.
/// BG/BB: see [`super::bgbb`].
pub fn log_likelihood(kind: ModelKind, p: &Params, s: &Rft) -> f64 {
    if kind == ModelKind::Bgbb {
        return bgbb::log_likelihood(&BgbbParams::from_slots(p), s);
    }
    let beta = p.b + kind.survivals(s.x);
    let head = ln_gamma(p.r + s.x) - ln_gamma(p.r) + p.r * p.alpha.ln() + ln_gamma(p.a + p.b)
        - ln_gamma(p.b)
        + ln_gamma(beta)
        - ln_gamma(p.a + beta);
    let a3 = -(p.r + s.x) * (p.alpha + s.t).ln();
    let a4 = match kind {
        ModelKind::Bgnbd if s.x <= 0.0 => f64::NEG_INFINITY,
        _ => p.a.ln() - (beta - 1.0).ln() - (p.r + s.x) * (p.alpha + s.t_x).ln(),
    };
    head + log_add_exp(a3, a4)
}

/// `−expm1(ε·L)/ε`, tending to `−L` as `ε → 0`.
fn neg_expm1_over(eps: f64, l: f64) -> f64 {
    let el = eps * l;
    if el.abs() < 1e-9 {
        -l * (1.0 + 0.5 * el)
    } else {
        -el.exp_m1() / eps
    }
}

/// Most terms of the `₂F₁` series before [`expected_active`] switches to quadrature.
const SERIES_MAX_TERMS: usize = 20_000;

/// Expected number of active days in the next `h` time units, `E[Y(h) | x, t_x, T]`.
///
/// Given engagement, `λ ~ Gamma(s, c)` with `s = r+x`, `c = α+T`, and
/// `p ~ Beta(a, β)` with `β = b+x` (BG/NBD) or `b+x+1` (MBG/NBD); a member with rate λ
/// and stop probability p has `(1 − e^(−λ p h))/p` active days ahead in expectation. The
/// published closed form is
/// `(a+β−1)/(a−1) · [1 − (c/(c+h))^s · ₂F₁(s, β; a+β−1; z)]`, `z = h/(c+h)`. Euler's
/// transformation turns the `₂F₁` into `(1−z)^(a−1−s) · ₂F₁(a+β−1−s, a−1; a+β−1; z)`,
/// whose first two parameters do not grow with `x`, so the series is short and never
/// overflows; the `1/(a−1)` is cancelled analytically, so `a` near 1 is harmless. When
/// the series would be long (z near 1 with a heavy tail) a tanh-sinh quadrature of the
/// Beta expectation is used instead.
///
/// BG/BB: `P(alive at n) · (α+x)/(α+β+n) · Σ_{k=1}^{h} P(no drop-out in k more days | alive)`.
pub fn expected_active(kind: ModelKind, p: &Params, s: &Rft, h: f64) -> f64 {
    if h <= 0.0 {
        return 0.0;
    }
    if kind == ModelKind::Bgbb {
        return bgbb::outputs(&BgbbParams::from_slots(p), s, [h, 0.0]).expected_active[0];
    }
    let pe = p_engaged(kind, p, s);
    let shape = p.r + s.x;
    let c = p.alpha + s.t;
    let beta = p.b + kind.survivals(s.x);
    let e = match expected_if_engaged_series(p.a, beta, shape, c, h) {
        Some(e) => e,
        None => expected_if_engaged_quadrature(p.a, beta, shape, c, h),
    };
    (pe * e).max(0.0)
}

/// The series form of `E[Y(h) | engaged]`; `None` when it does not settle quickly.
fn expected_if_engaged_series(a: f64, beta: f64, shape: f64, c: f64, h: f64) -> Option<f64> {
    let cc = a + beta - 1.0;
    if cc <= 0.5 {
        return None;
    }
    let eps = a - 1.0;
    let z = h / (c + h);
    let l = (c / (c + h)).ln();
    let a1 = cc - shape;
    // G = Σ_{n≥1} u_n with u_1 = a1·z/cc and the hypergeometric term ratio after that.
    let mut u = a1 * z / cc;
    let mut g = 0.0;
    let mut n = 1.0;
    let mut settled = false;
    for _ in 0..SERIES_MAX_TERMS {
        g += u;
        if u.abs() <= 1e-15 * g.abs().max(1e-300) && n > 2.0 {
            settled = true;
            break;
        }
        u *= (a1 + n) * (eps + n) / ((cc + n) * (n + 1.0)) * z;
        n += 1.0;
        if !u.is_finite() {
            return None;
        }
    }
    if !settled {
        return None;
    }
    let e = cc * (neg_expm1_over(eps, l) - (eps * l).exp() * g);
    e.is_finite().then_some(e)
}

/// `E_p[(1 − (c/(c+p h))^shape)/p]` for `p ~ Beta(a, beta)`, by tanh-sinh quadrature on
/// `[0, 1]` (robust to the Beta density's endpoint singularities).
fn expected_if_engaged_quadrature(a: f64, beta: f64, shape: f64, c: f64, h: f64) -> f64 {
    let ln_b = ln_gamma(a) + ln_gamma(beta) - ln_gamma(a + beta);
    let f = |p: f64, q: f64| -> f64 {
        // p and q = 1 − p, both given to keep precision near either end.
        if p <= 0.0 || q <= 0.0 {
            return 0.0;
        }
        let g = -(-shape * (p * h / c).ln_1p()).exp_m1() / p;
        let ln_w = (a - 1.0) * p.ln() + (beta - 1.0) * q.ln() - ln_b;
        g * ln_w.exp()
    };
    tanh_sinh_unit(f)
}

/// `∫₀¹ f(x) dx` by tanh-sinh quadrature; `f` receives `x` and `1 − x`.
fn tanh_sinh_unit(f: impl Fn(f64, f64) -> f64) -> f64 {
    let hstep = 1.0 / 64.0;
    let half_pi = std::f64::consts::FRAC_PI_2;
    let mut sum = 0.0;
    let kmax = (6.5 / hstep) as i64;
    for k in -kmax..=kmax {
        let t = k as f64 * hstep;
        let u = half_pi * t.sinh();
        let cosh_u = u.cosh();
        // x = (1 + tanh u)/2, 1 − x = (1 − tanh u)/2 = 1/(1 + e^{2u}).
        let one_minus_x = 1.0 / (1.0 + (2.0 * u).exp());
        let x = 1.0 / (1.0 + (-2.0 * u).exp());
        let w = 0.5 * half_pi * t.cosh() / (cosh_u * cosh_u);
        if w == 0.0 || !w.is_finite() {
            continue;
        }
        sum += w * f(x, one_minus_x);
    }
    sum * hstep
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDNOW_BG: Params = Params {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };

    fn rft(x: f64, t_x: f64, t: f64) -> Rft {
        Rft { x, t_x, t }
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        let pi = std::f64::consts::PI;
        assert!((ln_gamma(0.5) - 0.5 * pi.ln()).abs() < 1e-14);
        assert!(ln_gamma(1.0).abs() < 1e-15);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        // Stirling at a large argument.
        let x = 1e6f64;
        let stirling = (x - 0.5) * x.ln() - x + 0.5 * (2.0 * pi).ln() + 1.0 / (12.0 * x);
        assert!((ln_gamma(x) - stirling).abs() < 1e-6);
        assert!((ln_gamma(1e-8) - (1e8f64).ln()).abs() < 1e-6);
    }

    #[test]
    fn bg_nbd_with_no_repeat_activity_is_certainly_engaged_and_mbg_is_not() {
        let s = rft(0.0, 0.0, 30.0);
        assert_eq!(p_engaged(ModelKind::Bgnbd, &CDNOW_BG, &s), 1.0);
        assert!(p_engaged(ModelKind::Mbgnbd, &CDNOW_BG, &s) < 1.0);
    }

    #[test]
    fn p_engaged_matches_the_closed_form_at_moderate_values() {
        let p = CDNOW_BG;
        let s = rft(2.0, 30.43, 38.86);
        let ratio: f64 = ((p.alpha + s.t) / (p.alpha + s.t_x)).powf(p.r + s.x);
        let bg = 1.0 / (1.0 + p.a / (p.b + s.x - 1.0) * ratio);
        let mbg = 1.0 / (1.0 + p.a / (p.b + s.x) * ratio);
        assert!((p_engaged(ModelKind::Bgnbd, &p, &s) - bg).abs() < 1e-13);
        assert!((p_engaged(ModelKind::Mbgnbd, &p, &s) - mbg).abs() < 1e-13);
    }

    #[test]
    fn huge_frequencies_and_zero_age_stay_finite() {
        let p = Params {
            r: 0.5,
            alpha: 3.0,
            a: 0.9,
            b: 1.6,
        };
        for kind in [ModelKind::Mbgnbd, ModelKind::Bgnbd] {
            for s in [
                rft(10_000.0, 10_000.0, 10_000.0),
                rft(10_000.0, 5_000.0, 10_000.0),
                rft(10_000.0, 9_990.0, 10_000.0),
                rft(0.0, 0.0, 0.0),
                rft(1.0, 0.0, 0.0),
            ] {
                let pe = p_engaged(kind, &p, &s);
                let ll = log_likelihood(kind, &p, &s);
                let ps = p_silent(kind, &p, &s, 14.0);
                let e = expected_active(kind, &p, &s, 30.0);
                let q = p_silence_this_long_if_engaged(&p, &s);
                assert!((0.0..=1.0).contains(&pe), "{kind} {s:?} {pe}");
                assert!(ll.is_finite(), "{kind} {s:?} {ll}");
                assert!((0.0..=1.0).contains(&ps), "{kind} {s:?} {ps}");
                assert!(e.is_finite() && e >= 0.0, "{kind} {s:?} {e}");
                assert!((0.0..=1.0).contains(&q));
            }
            // 5,000 silent days after 10,000 active ones: gone, without overflow.
            assert!(p_engaged(kind, &p, &rft(10_000.0, 5_000.0, 10_000.0)) < 1e-300);
            // Active on the last day: engaged.
            assert!(p_engaged(kind, &p, &rft(10_000.0, 10_000.0, 10_000.0)) > 0.99);
        }
        // At T = 0 MBG/NBD gives b/(a+b): the chance of not stopping at the origin.
        let pe = p_engaged(ModelKind::Mbgnbd, &p, &rft(0.0, 0.0, 0.0));
        assert!((pe - p.b / (p.a + p.b)).abs() < 1e-12);
    }

    #[test]
    fn more_silence_never_raises_p_engaged_or_lowers_p_silent() {
        let p = Params {
            r: 0.8,
            alpha: 2.5,
            a: 0.7,
            b: 8.0,
        };
        for kind in [ModelKind::Mbgnbd, ModelKind::Bgnbd] {
            for x in [0.0, 1.0, 3.0, 20.0, 300.0] {
                let t_x = if x == 0.0 { 0.0 } else { x * 1.5 };
                let mut last_pe = f64::INFINITY;
                let mut last_ps = -1.0;
                for extra in 0..400 {
                    let s = rft(x, t_x, t_x + extra as f64 * 0.5);
                    let pe = p_engaged(kind, &p, &s);
                    let ps = p_silent(kind, &p, &s, 14.0);
                    assert!(pe <= last_pe + 1e-15, "{kind} x={x} extra={extra}");
                    assert!(ps >= last_ps - 1e-12, "{kind} x={x} extra={extra}");
                    last_pe = pe;
                    last_ps = ps;
                }
            }
        }
    }

    #[test]
    fn the_expected_active_series_agrees_with_quadrature() {
        for (a, b, r, alpha) in [
            (0.793, 2.426, 0.243, 4.414),
            (1.0, 5.0, 1.0, 2.0),
            (1.0000001, 5.0, 1.0, 2.0),
            (3.5, 40.0, 2.0, 0.8),
            (0.2, 0.9, 0.3, 10.0),
        ] {
            let p = Params { r, alpha, a, b };
            for kind in [ModelKind::Mbgnbd, ModelKind::Bgnbd] {
                for (x, t_x, t) in [
                    (0.0, 0.0, 0.0),
                    (0.0, 0.0, 20.0),
                    (3.0, 10.0, 40.0),
                    (50.0, 60.0, 61.0),
                    (500.0, 700.0, 700.0),
                ] {
                    let s = rft(x, t_x, t);
                    let shape = p.r + s.x;
                    let c = p.alpha + s.t;
                    let beta = p.b + kind.survivals(s.x);
                    let Some(series) = expected_if_engaged_series(p.a, beta, shape, c, 30.0) else {
                        continue;
                    };
                    let quad = expected_if_engaged_quadrature(p.a, beta, shape, c, 30.0);
                    assert!(
                        (series - quad).abs() <= 1e-6 * quad.abs().max(1.0),
                        "{kind} {p:?} {s:?}: series {series} quadrature {quad}"
                    );
                }
            }
        }
    }

    #[test]
    fn expected_active_days_are_bounded_by_the_horizon_for_a_daily_member() {
        let p = Params {
            r: 2.0,
            alpha: 3.0,
            a: 1.0,
            b: 60.0,
        };
        let s = rft(200.0, 210.0, 210.0);
        let e = expected_active(ModelKind::Mbgnbd, &p, &s, 30.0);
        // Active ~200 of 210 days: close to 30·200/213 minus a little attrition.
        assert!(e > 20.0 && e < 30.0, "{e}");
    }
}
