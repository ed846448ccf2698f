//! Members simulated from known parameters: for parameter-recovery tests and the
//! benchmark. Deterministic for a given seed.

use super::model::{ModelKind, Params};
use super::summary::DaySummary;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A `Gamma(shape, 1)` draw (Marsaglia–Tsang, boosted for shape < 1).
pub fn gamma(rng: &mut fastrand::Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = rng.f64().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.f64().max(f64::MIN_POSITIVE);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A `Beta(a, b)` draw.
pub fn beta(rng: &mut fastrand::Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.5
    }
}

/// Simulates `n` members of model `kind` with rates per unit of `days_per_unit` days:
/// each joins with an active day between 1 and `max_age_days` days before the end, is
/// active at rate `λ ~ Gamma(r, α)` and stops after an active day (MBG/NBD: also at
/// joining) with `p ~ Beta(a, b)`. Activity times are reduced to whole days (two events on
/// one day count once, as the scorer counts them). Returns each member's summary at the end.
pub fn simulate(
    kind: ModelKind,
    p: &Params,
    n: usize,
    max_age_days: u32,
    days_per_unit: f64,
    seed: u64,
) -> Vec<DaySummary> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let age = rng.u32(1..=max_age_days.max(1));
            let lambda = gamma(&mut rng, p.r) / p.alpha;
            let stop = beta(&mut rng, p.a, p.b);
            let mut alive = !(kind == ModelKind::Mbgnbd && rng.f64() < stop);
            let (mut t, mut x, mut last) = (0.0f64, 0u32, 0u32);
            while alive && lambda > 0.0 {
                t += -(rng.f64().max(f64::MIN_POSITIVE)).ln() / lambda;
                if t * days_per_unit > age as f64 {
                    break;
                }
                let day = (t * days_per_unit) as u32;
                if day > last {
                    x += 1;
                    last = day;
                }
                alive = rng.f64() >= stop;
            }
            DaySummary {
                x,
                t_x_days: if x > 0 { last } else { 0 },
                t_days: age,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_and_beta_draws_have_the_right_means() {
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 200_000;
        for shape in [0.3, 1.0, 4.5] {
            let m: f64 = (0..n).map(|_| gamma(&mut rng, shape)).sum::<f64>() / n as f64;
            assert!((m - shape).abs() < 0.02 * shape.max(1.0), "{shape}: {m}");
        }
        let m: f64 = (0..n).map(|_| beta(&mut rng, 0.8, 2.4)).sum::<f64>() / n as f64;
        assert!((m - 0.25).abs() < 0.005, "{m}");
    }
}
