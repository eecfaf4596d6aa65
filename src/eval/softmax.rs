//! `exp` and `log Σ exp` over rows of logits, written so that the compiler vectorizes them.
//!
//! Scoring a language model takes the log-sum-exp of every position's logits, a vocabulary
//! wide (49152 for SmolLM2): hundreds of millions of exponentials for one perplexity. libm's
//! `exp` is a call per element that the compiler cannot vectorize; it took 78 % of a
//! calibrated compile's time (perf, the calibration tests). [`exp`] is branch-free
//! (selects only), so a loop over a row runs several lanes at a time, and it is as accurate
//! as `f64` allows: relative error within 2 ulp of `e^x` over the whole range
//! (tested against `f64::exp`). The sums keep [`LANES`] partial sums, so their order is
//! fixed (same input, same bits) and independent of the vector width.

/// Partial sums per row: the sums are `Σ` over `LANES` interleaved strides, then added in
/// order.
pub(crate) const LANES: usize = 8;

const LOG2E: f64 = std::f64::consts::LOG2_E;
/// `ln 2` in two parts: `LN2_HI` has its low 32 mantissa bits zero, so that `k · LN2_HI` is
/// exact for every `|k| < 2^20`.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
/// `1.5 · 2^52`: adding it rounds to an integer, which then sits in the low mantissa bits.
const SHIFTER: f64 = 6_755_399_441_055_744.0;
/// Below this, `e^x` is subnormal (under `2^-1022`); [`exp`] returns 0 there.
const MIN_ARG: f64 = -708.0;
/// Above this, `e^x` overflows.
const MAX_ARG: f64 = 709.782_712_893_384;

/// `e^x` for every `f64`, within 2 ulp; 0 below −708 (where `e^x` is subnormal: a sum of
/// probabilities loses nothing by it), `+∞` above 709.78, NaN for NaN. Branch-free, so that
/// loops over it vectorize.
#[inline(always)]
pub(crate) fn exp(x: f64) -> f64 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    // x = k·ln 2 + r, |r| ≤ ln 2 / 2.
    let t = xc * LOG2E + SHIFTER;
    let kf = t - SHIFTER;
    let r = (xc - kf * LN2_HI) - kf * LN2_LO;
    // e^r by its Taylor series to r^13 (the next term is under 4e-18 relative), Horner.
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    p = p * r + 1.0 / 479_001_600.0;
    p = p * r + 1.0 / 39_916_800.0;
    p = p * r + 1.0 / 3_628_800.0;
    p = p * r + 1.0 / 362_880.0;
    p = p * r + 1.0 / 40_320.0;
    p = p * r + 1.0 / 5_040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^k from its exponent bits: t's low mantissa bits hold k (−1021 ≤ k ≤ 1024 here), and
    // 2^k = 2^(k−1) · 2 keeps k = 1024 finite.
    let k = (t.to_bits() as i64).wrapping_sub(SHIFTER.to_bits() as i64);
    let scale = f64::from_bits((k.wrapping_add(1022) as u64) << 52);
    let y = (p * 2.0) * scale;
    let y = if x < MIN_ARG { 0.0 } else { y };
    let y = if x > MAX_ARG { f64::INFINITY } else { y };
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `Σ f(xᵢ)` over a row in [`LANES`] partial sums (`f64`), added in a fixed order.
#[inline(always)]
fn lane_sum<T: Copy>(row: &[T], f: impl Fn(T) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    acc.iter().sum()
}

/// `log Σ exp(xᵢ)` of a row of `f32` or `f64` logits, stable (the maximum is taken out first),
/// the differences and sums in `f64`. An empty row, or one whose maximum is not finite, gives
/// that maximum (−∞ for empty).
pub(crate) fn log_sum_exp<T: Copy + Into<f64>>(row: &[T]) -> f64 {
    let max = row
        .iter()
        .map(|&x| x.into())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + lane_sum(row, |x| exp(x.into() - max)).ln()
}

/// `KL(p ‖ q) = Σ pᵢ (log pᵢ − log qᵢ)` for `p` given as log-probabilities `logp` and `q` as
/// logits (`q`'s log-sum-exp `lse_q` given), `f64` sums.
pub(crate) fn kl_row(logp: &[f32], logits: &[f32], lse_q: f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut a = logp.chunks_exact(LANES);
    let mut b = logits.chunks_exact(LANES);
    let term = |lp: f32, z: f32| {
        let lp = lp as f64;
        exp(lp) * (lp - (z as f64 - lse_q))
    };
    for (ca, cb) in (&mut a).zip(&mut b) {
        for ((s, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += term(x, y);
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(a.remainder()).zip(b.remainder()) {
        *s += term(x, y);
    }
    acc.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64).abs_diff(b.to_bits() as i64)
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0u64;
        let mut state = 0x1234_5678_9abc_def0u64;
        for i in 0..400_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            // Most of the arguments where logits live, the rest over the whole range.
            let x = if i % 4 == 0 {
                MIN_ARG + u * (MAX_ARG - MIN_ARG)
            } else {
                -60.0 + 70.0 * u
            };
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(ulps(got, want));
            assert!(ulps(got, want) <= 2, "exp({x}) = {got}, libm {want}");
        }
        assert!(worst >= 1, "a different libm? worst {worst} ulp");
        for x in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5 * LN2_HI,
            -707.9,
            -707.6,
            -708.0,
            709.0,
            709.78,
        ] {
            assert!(ulps(exp(x), x.exp()) <= 2, "exp({x})");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-708.5), 0.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn log_sum_exp_matches_the_direct_sum() {
        let row: Vec<f64> = (0..1001)
            .map(|i| ((i * 37) % 101) as f64 * 0.31 - 12.0)
            .collect();
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let direct = max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&row) - direct).abs() <= 1e-13 * direct.abs().max(1.0));
        let row32: Vec<f32> = row.iter().map(|&x| x as f32).collect();
        let direct32 = log_sum_exp(&row32.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert_eq!(log_sum_exp(&row32), direct32);
        assert_eq!(log_sum_exp::<f64>(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[3.0f64]), 3.0);
        assert_eq!(log_sum_exp(&[f64::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert!((log_sum_exp(&[0.0f64, 0.0]) - 2f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn kl_row_is_zero_for_equal_distributions_and_positive_otherwise() {
        let q: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let lse = log_sum_exp(&q);
        let p: Vec<f32> = q.iter().map(|&z| (z as f64 - lse) as f32).collect();
        assert!(kl_row(&p, &q, lse).abs() < 1e-6);
        let q2: Vec<f32> = q.iter().map(|&z| z * 0.5).collect();
        let kl = kl_row(&p, &q2, log_sum_exp(&q2));
        let direct: f64 = p
            .iter()
            .zip(&q2)
            .map(|(&a, &b)| {
                let a = a as f64;
                a.exp() * (a - (b as f64 - log_sum_exp(&q2)))
            })
            .sum();
        assert!(kl > 0.01 && (kl - direct).abs() < 1e-12, "{kl} {direct}");
    }
}
