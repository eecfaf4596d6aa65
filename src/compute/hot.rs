//! Hot rows of a token table: the rows a Gather reads most are stored exactly, the rest at low
//! rank.
//!
//! A token table `E` (`V × D`) whose rows are weighted by how often calibration data reads them
//! (`wᵢ`, smoothed counts) is approximated best by a weighted truncated SVD. Token frequencies
//! are steep (Zipf): a few thousand rows carry most of the weight, while the low-rank factor has
//! to serve all `V` rows. Storing the `K` heaviest rows exactly and factorizing only the other
//! `V − K` trades `K·(D − r)` parameters for removing those rows' error entirely.
//!
//! Stored form (see [`hot_params`]): the hot rows `H` (`(K + 1) × D`, the last row zero), the
//! cold factors `T` (`(V − K + 1) × r`, the last row zero) and `P` (`r × D`), and two int32 maps
//! of `V` entries giving each token its row in `H` and in `T` (the zero row where it has none):
//! `E[t] ≈ H[hot[t]] + T[cold[t]]·P`.

use super::ComputeError;

/// Parameters the hot form stores for a `v × d` table with `k` hot rows at cold rank `r`.
pub fn hot_params(v: usize, d: usize, k: usize, r: usize) -> u64 {
    ((k + 1) * d + 2 * v + (v - k.min(v) + 1) * r + r * d) as u64
}

/// What [`choose`] decided.
#[derive(Clone, Debug, PartialEq)]
pub struct HotChoice {
    /// The hot rows (token ids), heaviest first (ties: smaller id first).
    pub rows: Vec<usize>,
    /// Rank of the cold rows' factors.
    pub rank: usize,
    /// Weighted squared error the choice leaves, `Σ_cold wᵢ‖eᵢ − êᵢ‖²` at the exact truncation.
    pub error: f64,
    /// The same for the plain weighted factorization at `plain_rank` (what it replaces).
    pub plain_error: f64,
}

/// Rows in order of weight, heaviest first; ties (unseen tokens) by smaller id.
fn order(weights: &[f64], v: usize) -> Vec<usize> {
    let w = |i: usize| weights.get(i).copied().unwrap_or(0.0);
    let mut idx: Vec<usize> = (0..v).collect();
    idx.sort_by(|&a, &b| w(b).total_cmp(&w(a)).then(a.cmp(&b)));
    idx
}

/// Eigenvalues of the symmetric `d × d` matrix `g` (row-major), descending, negatives as 0.
fn eigenvalues(g: &[f64], d: usize) -> Result<Vec<f64>, ComputeError> {
    let m = faer::MatRef::from_row_major_slice(g, d, d);
    let mut ev: Vec<f64> = m
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| ComputeError::Numerical {
            index: 0,
            reason: format!("eigenvalues of a token table's Gram: {e:?}"),
        })?
        .into_iter()
        .map(|x| x.max(0.0))
        .collect();
    ev.sort_by(|a, b| b.total_cmp(a));
    Ok(ev)
}

/// `Σ wᵢ·eᵢᵀeᵢ` over `rows` (f64, `d × d`, full).
fn weighted_gram(data: &[f32], d: usize, weights: &[f64], rows: &[usize]) -> Vec<f64> {
    let mut y = Vec::with_capacity(rows.len() * d);
    for &i in rows {
        let s = weights.get(i).copied().unwrap_or(0.0).max(0.0).sqrt();
        y.extend(
            data[i * d..(i + 1) * d]
                .iter()
                .map(|&x| (x as f64 * s) as f32),
        );
    }
    super::dense::gram(&y, rows.len(), d)
}

/// The most hot rows a `v × d` table can keep at cold rank `r` within `budget` (0 if none).
fn rows_that_fit(v: usize, d: usize, r: usize, budget: u64) -> usize {
    if r >= d {
        return 0;
    }
    let fixed = (d + 2 * v + (v + 1) * r + r * d) as u64;
    if budget <= fixed {
        return 0;
    }
    (((budget - fixed) / (d - r) as u64) as usize).min(v.saturating_sub(r + 1))
}

/// `data` must hold a non-empty `v × d` table.
pub(crate) fn check(data: &[f32], v: usize, d: usize) -> Result<(), ComputeError> {
    if data.len() != v * d || v == 0 || d == 0 {
        return Err(ComputeError::DataLength {
            rows: v,
            cols: d,
            len: data.len(),
            expected: v.saturating_mul(d),
        });
    }
    Ok(())
}

/// The weighted Gram of a table's cold rows while the hot rows shrink: built for the rows cold
/// at the most hot rows, then rows are added back (never subtracted, so no cancellation).
struct ColdGram<'a> {
    data: &'a [f32],
    d: usize,
    weights: &'a [f64],
    /// Rows in hot order.
    idx: &'a [usize],
    /// Hot rows the Gram currently leaves out.
    hot: usize,
    g: Vec<f64>,
}

impl<'a> ColdGram<'a> {
    fn new(data: &'a [f32], d: usize, weights: &'a [f64], idx: &'a [usize], hot: usize) -> Self {
        let g = weighted_gram(data, d, weights, &idx[hot..]);
        ColdGram {
            data,
            d,
            weights,
            idx,
            hot,
            g,
        }
    }

    /// The Gram with only the first `hot` rows left out (`hot` no more than before).
    fn shrink_to(&mut self, hot: usize) -> &[f64] {
        if hot < self.hot {
            let add = weighted_gram(self.data, self.d, self.weights, &self.idx[hot..self.hot]);
            for (a, b) in self.g.iter_mut().zip(add) {
                *a += b;
            }
            self.hot = hot;
        }
        &self.g
    }
}

/// How many hot rows, and at what cold rank, approximate the `v × d` table `data` (row-major)
/// best within `budget` stored parameters, for row weights `weights` (smoothed token counts;
/// missing entries count 0): for every cold rank `r` (multiples of `align`), as many hot rows as
/// then fit, and of those the pair whose cold rows leave the smallest weighted tail — `None`
/// when no hot form within the budget beats the plain weighted factorization at `plain_rank`,
/// which the budget was planned for — and that plain form's weighted error. The errors are
/// those of exact truncations (the randomized SVD comes within a percent of them).
pub fn choose(
    data: &[f32],
    (v, d): (usize, usize),
    weights: &[f64],
    budget: u64,
    plain_rank: usize,
    align: usize,
) -> Result<(Option<HotChoice>, f64), ComputeError> {
    check(data, v, d)?;
    let align = align.max(1);
    let idx = order(weights, v);
    // (rank, hot rows) with the rows falling as the rank grows.
    let pairs: Vec<(usize, usize)> = (1..)
        .map(|i| i * align)
        .take_while(|&r| r <= d)
        .map(|r| (r, rows_that_fit(v, d, r, budget)))
        .take_while(|&(_, k)| k > 0)
        .collect();
    let tail = |ev: &[f64], r: usize| ev.iter().skip(r).sum::<f64>();
    let mut best: Option<(usize, usize, f64)> = None;
    let mut cold = ColdGram::new(data, d, weights, &idx, pairs.first().map_or(0, |&(_, k)| k));
    for &(r, k) in &pairs {
        let err = tail(&eigenvalues(cold.shrink_to(k), d)?, r);
        if best.is_none_or(|(_, _, e)| err < e) {
            best = Some((k, r, err));
        }
    }
    let plain_error = tail(&eigenvalues(cold.shrink_to(0), d)?, plain_rank);
    let hot = best
        .filter(|&(_, _, e)| e < plain_error)
        .map(|(k, rank, error)| HotChoice {
            rows: idx[..k].to_vec(),
            rank,
            error,
            plain_error,
        });
    Ok((hot, plain_error))
}

/// The table's error curve with hot rows, as the spectrum a plain factorization would need to
/// reach it: for every plain rank `r` (whose form stores `plain_cost(r)` parameters), the
/// smallest weighted error of the plain form and of the hot forms that fit in as much (hot
/// rows `K` on a geometric grid of multiples of 64), written as singular values `σ` with
/// `Σ_{j ≥ r} σⱼ² = error(r)`. A planner that weighs a plain site by its spectrum then weighs the
/// table by what the hot form gives for the same parameters; [`choose`] picks the form for the
/// rank it plans. `other` gives the best weighted error of further forms within a parameter
/// budget (the quantized ones of [`super::pq`]), `None` where none fits. Length `min(v, d)`; descending (see [`as_spectrum`]).
pub fn equivalent_spectrum(
    data: &[f32],
    (v, d): (usize, usize),
    weights: &[f64],
    plain_cost: impl Fn(usize) -> u64,
    align: usize,
    other: &dyn Fn(u64) -> Option<f64>,
) -> Result<Vec<f32>, ComputeError> {
    check(data, v, d)?;
    let align = align.max(1);
    let short = v.min(d);
    let idx = order(weights, v);
    let mut grid = Vec::new();
    let mut k = 64usize;
    while k + 64 < v {
        grid.push(k);
        k = ((k + k / 4).div_ceil(64) * 64).max(k + 64);
    }
    let tails = |g: &[f64]| -> Result<Vec<f64>, ComputeError> {
        // tails[r] = Σ_{j ≥ r} λⱼ, r = 0..=short.
        let ev = eigenvalues(g, d)?;
        let mut t = vec![0.0; short + 1];
        for r in (0..short).rev() {
            t[r] = t[r + 1] + ev.get(r).copied().unwrap_or(0.0);
        }
        Ok(t)
    };
    // Cold tails per grid K, from the coldest end.
    let mut per_k: Vec<(usize, Vec<f64>)> = Vec::with_capacity(grid.len());
    let mut cold = ColdGram::new(data, d, weights, &idx, grid.last().copied().unwrap_or(0));
    for &k in grid.iter().rev() {
        per_k.push((k, tails(cold.shrink_to(k))?));
    }
    let plain = tails(cold.shrink_to(0))?;
    let error: Vec<f64> = (0..=short)
        .map(|r| {
            let budget = plain_cost(r);
            let mut best = plain[r];
            for (k, t) in &per_k {
                let mut rr = 0;
                while rr + align <= short.min(v - k) && hot_params(v, d, *k, rr + align) <= budget {
                    rr += align;
                }
                if rr > 0 {
                    best = best.min(t[rr]);
                }
            }
            if let Some(err) = other(budget) {
                best = best.min(err);
            }
            best
        })
        .collect();
    Ok(as_spectrum(error))
}

/// Singular values whose tails are the lower convex hull of the error curve `error` (error at
/// every rank `0..=n`, made non-increasing first: a larger budget never does worse). The hull
/// gives the planner diminishing returns: a form whose error drops at once where it first fits
/// (a quantized table) is then reached by a greedy planner instead of looking worthless step
/// by step; where the plan stops between two corners of the hull, the form chosen for its
/// budget is the best one that fits.
fn as_spectrum(mut error: Vec<f64>) -> Vec<f32> {
    for r in 1..error.len() {
        error[r] = error[r].min(error[r - 1]);
    }
    let mut hull: Vec<usize> = Vec::new();
    for r in 0..error.len() {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            // b lies on or above the segment a → r: not a corner of the lower hull.
            let cross =
                (error[b] - error[a]) * (r - a) as f64 - (error[r] - error[a]) * (b - a) as f64;
            if cross >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(r);
    }
    for w in hull.windows(2) {
        let (a, b) = (w[0], w[1]);
        for r in a + 1..b {
            error[r] = error[a] + (error[b] - error[a]) * (r - a) as f64 / (b - a) as f64;
        }
    }
    (0..error.len().saturating_sub(1))
        .map(|r| ((error[r] - error[r + 1]).max(0.0)).sqrt() as f32)
        .collect()
}

/// A plain spectrum (`σ`, descending) with further forms folded in as [`equivalent_spectrum`]
/// folds in the hot ones: at every rank `r`, the smaller of the plain tail `Σ_{j ≥ r} σⱼ²` and
/// `other(plain_cost(r))`, written back as singular values as [`as_spectrum`] does.
pub fn spectrum_with(
    plain: &[f32],
    plain_cost: impl Fn(usize) -> u64,
    other: &dyn Fn(u64) -> Option<f64>,
) -> Vec<f32> {
    let n = plain.len();
    let mut error = vec![0.0f64; n + 1];
    for r in (0..n).rev() {
        error[r] = error[r + 1] + (plain[r] as f64).powi(2);
    }
    for (r, e) in error.iter_mut().enumerate() {
        if let Some(x) = other(plain_cost(r)) {
            *e = e.min(x);
        }
    }
    as_spectrum(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of rank 2 plus 40 heavy rows in random directions: plain rank 16 cannot hold
    /// them, the hot form stores them exactly and the rest is exact at rank 8.
    #[test]
    fn heavy_rows_off_the_plane_go_hot() {
        let (v, d) = (1024, 32);
        let mut data = vec![0.0f32; v * d];
        for i in 0..v {
            for j in 0..d {
                let (a, b) = ((i as f32 * 0.37).sin(), (i as f32 * 0.11).cos());
                data[i * d + j] = a * (j as f32 * 0.2).cos() + b * (j as f32 * 0.5).sin();
            }
        }
        let mut weights = vec![0.5; v];
        let heavy: Vec<usize> = (0..40).map(|n| 7 + n * 25).collect();
        for &i in &heavy {
            for j in 0..d {
                let x = ((i * d + j) as f32 * 12.9898).sin() * 43758.547;
                data[i * d + j] += 4.0 * (x.fract() - 0.5);
            }
            weights[i] = 1000.0;
        }
        let budget = (16 * (v + d)) as u64;
        let (c, plain) = choose(&data, (v, d), &weights, budget, 16, 8).unwrap();
        let c = c.unwrap();
        assert_eq!(c.plain_error, plain);
        assert_eq!(&c.rows[..40], heavy.as_slice());
        assert!(c.error < 1e-6 * c.plain_error, "{c:?}");
        assert!(hot_params(v, d, c.rows.len(), c.rank) <= budget);
    }

    /// Uniform weights and a table of full rank: storing rows exactly only costs rank.
    #[test]
    fn uniform_weights_keep_the_plain_form() {
        let (v, d) = (2048, 64);
        let data: Vec<f32> = (0..v * d)
            .map(|x| ((x as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect();
        let weights = vec![1.0; v];
        let budget = (32 * (v + d)) as u64;
        let (hot, plain) = choose(&data, (v, d), &weights, budget, 32, 8).unwrap();
        assert_eq!(hot, None);
        assert!(plain > 0.0);
    }

    /// Without hot rows in reach (tiny budgets) the equivalent spectrum is the weighted
    /// table's own; where hot forms fit, it carries at least as much energy per rank.
    #[test]
    fn equivalent_spectrum_starts_as_the_plain_one() {
        let (v, d) = (1024, 32);
        let data: Vec<f32> = (0..v * d)
            .map(|x| ((x as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect();
        let mut weights = vec![0.1; v];
        for w in weights.iter_mut().take(100) {
            *w = 50.0;
        }
        let cost = |r: usize| (r * (v + d)) as u64;
        let eq = equivalent_spectrum(&data, (v, d), &weights, cost, 8, &|_| None).unwrap();
        let g = weighted_gram(&data, d, &weights, &order(&weights, v));
        let ev = eigenvalues(&g, d).unwrap();
        assert_eq!(eq.len(), d);
        // Never worse than the plain form at any rank, and with diminishing returns (the lower
        // convex hull: the hot forms, which need more than rank 8's 8·1056 parameters, pull
        // the curve down before they fit); the first value is the plain one where the plain
        // curve is itself the hull there.
        let plain_tail = |r: usize| ev[r..].iter().sum::<f64>();
        let eq_tail = |r: usize| eq[r..].iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
        for r in 0..d {
            assert!(eq_tail(r) <= plain_tail(r) * (1.0 + 1e-4), "{r}");
        }
        assert!(eq.windows(2).all(|p| p[1] <= p[0] * (1.0 + 1e-5)), "{eq:?}");
        assert!((eq[0] - ev[0].sqrt() as f32).abs() <= 1e-3 * eq[0]);
        let total: f64 = ev.iter().sum();
        let eq_total: f64 = eq.iter().map(|&s| (s as f64) * (s as f64)).sum();
        assert!(
            (eq_total - total).abs() <= 1e-3 * total,
            "{eq_total} vs {total}"
        );
        // The hot forms reach a smaller error at rank 16's budget than plain rank 16.
        let plain16: f64 = ev[16..].iter().sum();
        let eq16: f64 = eq[16..].iter().map(|&s| (s as f64) * (s as f64)).sum();
        assert!(eq16 < plain16, "{eq16} vs {plain16}");
        // A further form (`other`) storing rank 4's parameters at a tenth of rank 20's error
        // is what the table reaches from rank 4 on.
        let tail20: f64 = ev[20..].iter().sum();
        let other = |budget: u64| (budget >= cost(4)).then_some(0.1 * tail20);
        let eq = equivalent_spectrum(&data, (v, d), &weights, cost, 8, &other).unwrap();
        let tail = |r: usize| eq[r..].iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
        assert!(
            (tail(4) - 0.1 * tail20).abs() <= 1e-3 * tail20,
            "{}",
            tail(4)
        );
        assert!(tail(3) > tail20);
        // The same from a plain spectrum alone.
        let plain: Vec<f32> = ev.iter().map(|&x| x.sqrt() as f32).collect();
        let eq = spectrum_with(&plain, cost, &other);
        let tail = |r: usize| eq[r..].iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
        assert!(
            (tail(4) - 0.1 * tail20).abs() <= 1e-3 * tail20,
            "{}",
            tail(4)
        );
        assert!((tail(0) - total).abs() <= 1e-3 * total);
    }
}
