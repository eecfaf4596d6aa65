//! Randomized SVD (Halko–Martinsson–Tropp) with Cholesky-QR2 orthonormalisation.
//!
//! The large products (`W·X`, `Wᵀ·X`, `Qᵀ·W`, `Q·U_B`) run in `f32`; everything that decides
//! orthogonality (Gram matrices, Cholesky, `Y·R⁻¹`) and the small SVD of `B` run in `f64`.

use faer::MatRef;
use rayon::prelude::*;

use super::check::{check_batch, check_rank, numerical, use_exact};
use super::dense::{cholesky_upper, gram, inv_upper, mul_rows, mul_t, svd_f64, sweep, to_f64};
use super::{ComputeError, Factors, Matrix, MatrixRef, SvdOptions};

/// Cholesky-QR passes tried before falling back to an `f64` SVD basis.
pub(crate) const MAX_PASSES: usize = 4;

/// How orthonormal a basis must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Orth {
    /// To `f64` rounding before the cast to `f32`: the basis the factors are built from.
    Final,
    /// A well-conditioned basis of the same span is enough: an iterate of the power method,
    /// whose next product is orthonormalised again. One Cholesky-QR pass when `Y` is well
    /// conditioned (κ(Y) ≤ [`ONE_PASS_KAPPA`], so that `‖QᵀQ − I‖ ≲ κ²·u₆₄·m` stays far
    /// below 1 and `Q` is an excellent basis), else the same passes as [`Orth::Final`].
    Iterate,
}

/// Largest κ(Y) for which an [`Orth::Iterate`] basis takes one Cholesky-QR pass.
pub(crate) const ONE_PASS_KAPPA: f64 = 1e4;

/// How [`super::Backend::lowrank`] factorizes matrices of one shape at one rank: the rule
/// every backend follows ([`SvdOptions::lowrank_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowrankRoute {
    /// The exact `f64` SVD: `min(m, n) <= exact_below`, or a sketch that would cover the
    /// short side.
    Exact,
    /// The eigendecomposition of the short side's Gram matrix: the sketch would be at least a
    /// quarter of the short side (`4k >= min(m, n)`), where that is cheaper than sketching
    /// with `2q + 2` passes and as accurate for the kept part.
    Gram,
    /// The randomized SVD with a sketch of this many columns (`rank + oversample`).
    Sketch(usize),
}

impl SvdOptions {
    /// The route [`super::Backend::lowrank`] takes for `m × n` matrices at `rank` (assumed
    /// valid: `1..=min(m, n)`).
    pub fn lowrank_route(&self, (m, n): (usize, usize), rank: usize) -> LowrankRoute {
        let k = rank.saturating_add(self.oversample).min(m.min(n));
        if use_exact((m, n), k, self) {
            LowrankRoute::Exact
        } else if 4 * k >= m.min(n) {
            LowrankRoute::Gram
        } else {
            LowrankRoute::Sketch(k)
        }
    }
}

/// Validates a [`super::Backend::lowrank`] call (shapes, finiteness, rank, in that order) and
/// returns its route, `None` for an empty batch.
pub(crate) fn check_lowrank(
    batch: &[MatrixRef<'_>],
    rank: usize,
    opts: &SvdOptions,
) -> Result<Option<LowrankRoute>, ComputeError> {
    let Some(shape) = check_batch(batch)? else {
        return Ok(None);
    };
    check_rank(rank, shape)?;
    Ok(Some(opts.lowrank_route(shape, rank)))
}

/// How [`super::Backend::spectrum_with`] handles a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpectrumRoute {
    /// An empty batch or no values asked for: an empty spectrum per matrix.
    Trivial,
    /// The top `kk` values of the exact `f64` SVD.
    Exact(usize),
    /// The top `kk` values from a randomized sketch of `width` columns.
    Sketch {
        /// Values returned.
        kk: usize,
        /// Sketch columns.
        width: usize,
    },
}

/// Validates a [`super::Backend::spectrum_with`] call and chooses its route.
pub(crate) fn check_spectrum(
    batch: &[MatrixRef<'_>],
    k: usize,
    opts: &SvdOptions,
) -> Result<SpectrumRoute, ComputeError> {
    let Some((m, n)) = check_batch(batch)? else {
        return Ok(SpectrumRoute::Trivial);
    };
    let kk = k.min(m.min(n));
    if kk == 0 {
        return Ok(SpectrumRoute::Trivial);
    }
    let width = kk.saturating_add(opts.oversample.max(kk)).min(m.min(n));
    Ok(if use_exact((m, n), width, opts) {
        SpectrumRoute::Exact(kk)
    } else {
        SpectrumRoute::Sketch { kk, width }
    })
}

/// `f` on every matrix of `batch`, in parallel on the current rayon pool; a failure becomes
/// [`ComputeError::Numerical`] naming the matrix.
pub(crate) fn per_matrix<T: Send>(
    batch: &[MatrixRef<'_>],
    f: impl Fn(MatrixRef<'_>) -> Result<T, String> + Sync,
) -> Result<Vec<T>, ComputeError> {
    batch
        .par_iter()
        .enumerate()
        .map(|(i, w)| f(*w).map_err(numerical(i)))
        .collect()
}

/// An orthonormal basis (`m × k`, row-major, returned in `f32`) of the columns of `y`
/// (`m × k`, row-major).
///
/// Cholesky-QR2 in `f64`: `G = YᵀY`, `G = RᵀR`, `Q = Y R⁻¹`, twice. Each sweep over the rows
/// multiplies by `R⁻¹` and accumulates the Gram of the result in one go. If a Gram is not
/// numerically positive definite, the pass uses a shifted Cholesky (`G + sI`, shifted
/// Cholesky-QR3) and further passes follow until the input of a pass is already close to
/// orthonormal (`max |G − I| < 0.5`, after which one pass leaves it orthonormal to `f64`
/// rounding). If that does not happen within [`MAX_PASSES`] (numerically rank-deficient `y`),
/// the basis comes from an `f64` SVD of `y`, which is orthonormal whatever the rank.
/// With [`Orth::Iterate`], a well-conditioned `y` takes a single pass.
pub(crate) fn orth(y: &[f32], m: usize, k: usize, need: Orth) -> Result<Vec<f32>, String> {
    let mut out = vec![0.0f32; m * k];
    let mut q = vec![0.0f64; m * k];
    let mut g = gram(y, m, k);
    for pass in 0..MAX_PASSES {
        let mut finishes = pass > 0 && max_dev_from_identity(&g, k) < 0.5;
        let r = match cholesky_upper(&g, k) {
            Some(r) => {
                if pass == 0 && need == Orth::Iterate && condition(&r, k) <= ONE_PASS_KAPPA {
                    finishes = true;
                }
                r
            }
            None => match shifted_cholesky(&g, m, k, f64::EPSILON) {
                Some(r) => r,
                None => break,
            },
        };
        let rinv = inv_upper(&r, k);
        let from = (pass == 0).then_some(y);
        if finishes {
            sweep(from, &mut q, &mut out, m, k, &rinv, false);
            return Ok(out);
        }
        g = sweep(from, &mut q, &mut [], m, k, &rinv, true);
    }
    // Rank-deficient sketch: an orthonormal basis from the SVD.
    svd_basis(y, m, k)
}

/// An orthonormal basis (`m × k`, row-major `f32`) of the columns of `y` (`m × k`) from its
/// `f64` SVD (Householder inside): orthonormal whatever the rank of `y`, for the iterates that
/// Cholesky-QR cannot orthonormalise.
pub(crate) fn svd_basis(y: &[f32], m: usize, k: usize) -> Result<Vec<f32>, String> {
    let y = to_f64(y);
    let (u, _, _) = svd_f64(MatRef::from_row_major_slice(&y, m, k), true)?;
    let mut out = vec![0.0f32; m * k];
    for i in 0..m {
        for j in 0..k.min(u.ncols()) {
            out[i * k + j] = u[(i, j)] as f32;
        }
    }
    Ok(out)
}

/// κ(R) = σ_max/σ_min of the upper-triangular `r` (`k × k`, row-major), `∞` if singular or
/// not computable.
fn condition(r: &[f64], k: usize) -> f64 {
    match svd_f64(MatRef::from_row_major_slice(r, k, k), false) {
        Ok((_, s, _)) => match (s.first(), s.last()) {
            (Some(&hi), Some(&lo)) if lo > 0.0 && hi.is_finite() => hi / lo,
            _ => f64::INFINITY,
        },
        Err(_) => f64::INFINITY,
    }
}

/// `max |G − I|` over a `k × k` row-major `g`; `∞` if it is NaN.
pub(crate) fn max_dev_from_identity(g: &[f64], k: usize) -> f64 {
    let mut dev = 0.0f64;
    for i in 0..k {
        for j in 0..k {
            let e = if i == j { 1.0 } else { 0.0 };
            dev = dev.max((g[i * k + j] - e).abs());
        }
    }
    if dev.is_nan() {
        f64::INFINITY
    } else {
        dev
    }
}

/// Cholesky of `g + sI` with the shift of Fukaya et al. (shifted Cholesky-QR3) for a Gram
/// accumulated with unit roundoff `eps` (`f64::EPSILON`, or `f32::EPSILON` for a Gram summed
/// in `f32`): `s = 11 (mk + k(k+1)) eps ‖Y‖²` (with `trace(G) ≥ ‖Y‖₂²`), grown ×100 up to
/// four times if still not enough.
pub(crate) fn shifted_cholesky(g: &[f64], m: usize, k: usize, eps: f64) -> Option<Vec<f64>> {
    let trace: f64 = (0..k).map(|i| g[i * k + i]).sum();
    if !(trace.is_finite() && trace > 0.0) {
        return None;
    }
    let mut s = 11.0 * ((m * k + k * (k + 1)) as f64) * eps * trace;
    for _ in 0..4 {
        let mut gs = g.to_vec();
        for i in 0..k {
            gs[i * k + i] += s;
        }
        if let Some(r) = cholesky_upper(&gs, k) {
            return Some(r);
        }
        s *= 100.0;
    }
    None
}

/// Orthonormal basis `Q` (`m × k`, `f32`) of the range of `W` (`m × n`) from the sketch `omega`
/// (`n × k`) with `power_iters` power iterations, re-orthonormalised after every multiply.
fn range_finder(
    w: MatrixRef<'_>,
    omega: MatRef<'_, f32>,
    power_iters: usize,
) -> Result<Vec<f32>, String> {
    let (m, n) = w.shape();
    let k = omega.ncols();
    let a = w.faer();
    let last = |i: usize| {
        if i == power_iters {
            Orth::Final
        } else {
            Orth::Iterate
        }
    };
    let y = mul_rows(a, omega);
    let mut q = orth(&y, m, k, last(0))?;
    for i in 1..=power_iters {
        let z = mul_t(w.data(), m, n, &q, k);
        let p = orth(&z, n, k, Orth::Iterate)?;
        let y = mul_rows(a, MatRef::from_row_major_slice(&p, n, k));
        q = orth(&y, m, k, last(i))?;
    }
    Ok(q)
}

/// `Bᵀ = Wᵀ Q` (`n × k`, row-major `f64`), the transposed projection of `W` on `Q`.
fn project_t(w: MatrixRef<'_>, q: &[f32], k: usize) -> Vec<f64> {
    let bt = mul_t(w.data(), w.rows(), w.cols(), q, k);
    to_f64(&bt)
}

/// Randomized rank-`rank` factors of `w` with sketch `omega` (`n × k`, `k ≥ rank`).
pub(crate) fn lowrank_one(
    w: MatrixRef<'_>,
    rank: usize,
    omega: MatRef<'_, f32>,
    power_iters: usize,
) -> Result<Factors, String> {
    let (m, n) = w.shape();
    let k = omega.ncols();
    let q = range_finder(w, omega, power_iters)?;
    let bt = project_t(w, &q, k);
    // Bᵀ = Vb S Ubᵀ  ⇔  B = Ub S Vbᵀ.
    let (vb, s, ub) = svd_f64(MatRef::from_row_major_slice(&bt, n, k), true)?;
    let r = rank.min(s.len());
    // U = Q · Ub[:, :r] (f32: Q is orthonormal to f32 rounding already).
    let ub_r: Vec<f32> = (0..k)
        .flat_map(|i| (0..r).map(move |j| (i, j)))
        .map(|(i, j)| ub[(i, j)] as f32)
        .collect();
    let u = mul_rows(
        MatRef::from_row_major_slice(&q, m, k),
        MatRef::from_row_major_slice(&ub_r, k, r),
    );
    let mut vt = vec![0.0f32; r * n];
    for l in 0..r {
        for j in 0..n {
            vt[l * n + j] = vb[(j, l)] as f32;
        }
    }
    Ok(finish(u, &s[..r], vt, m, n, r))
}

/// The top `kk` singular values of `w` from a randomized sketch `omega` (`n × k`, `k ≥ kk`).
pub(crate) fn spectrum_one(
    w: MatrixRef<'_>,
    kk: usize,
    omega: MatRef<'_, f32>,
    power_iters: usize,
) -> Result<Vec<f32>, String> {
    let k = omega.ncols();
    let q = range_finder(w, omega, power_iters)?;
    let bt = project_t(w, &q, k);
    let (_, s, _) = svd_f64(MatRef::from_row_major_slice(&bt, w.cols(), k), false)?;
    Ok(s.iter().take(kk).map(|&x| x as f32).collect())
}

/// Exact truncated SVD of `w` in `f64`.
pub(crate) fn exact_one(w: MatrixRef<'_>, rank: usize) -> Result<Factors, String> {
    let (m, n) = w.shape();
    let a = to_f64(w.data());
    let (u, s, v) = svd_f64(MatRef::from_row_major_slice(&a, m, n), true)?;
    let r = rank.min(s.len());
    let mut uu = vec![0.0f32; m * r];
    for i in 0..m {
        for l in 0..r {
            uu[i * r + l] = u[(i, l)] as f32;
        }
    }
    let mut vt = vec![0.0f32; r * n];
    for l in 0..r {
        for j in 0..n {
            vt[l * n + j] = v[(j, l)] as f32;
        }
    }
    Ok(finish(uu, &s[..r], vt, m, n, r))
}

/// Exact top singular values of `w` in `f64`.
pub(crate) fn exact_spectrum(w: MatrixRef<'_>, kk: usize) -> Result<Vec<f32>, String> {
    let (m, n) = w.shape();
    let a = to_f64(w.data());
    let (_, s, _) = svd_f64(MatRef::from_row_major_slice(&a, m, n), false)?;
    Ok(s.iter().take(kk).map(|&x| x as f32).collect())
}

/// Assemble factors with normalised signs (the convention of [`Factors`]): in each row of
/// `vt`, the entry of largest magnitude (first on ties) is made positive, flipping the
/// matching column of `u`. `u` is `m × r`, `s` has `r` values, `vt` is `r × n`.
pub(crate) fn finish(
    mut u: Vec<f32>,
    s: &[f64],
    mut vt: Vec<f32>,
    m: usize,
    n: usize,
    r: usize,
) -> Factors {
    for l in 0..r {
        let row = &vt[l * n..(l + 1) * n];
        let mut best = 0usize;
        for (j, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = j;
            }
        }
        if n > 0 && row[best] < 0.0 {
            for v in &mut vt[l * n..(l + 1) * n] {
                *v = -*v;
            }
            for i in 0..m {
                u[i * r + l] = -u[i * r + l];
            }
        }
    }
    Factors {
        u: Matrix {
            rows: m,
            cols: r,
            data: u,
        },
        s: s.iter().map(|&x| x as f32).collect(),
        vt: Matrix {
            rows: r,
            cols: n,
            data: vt,
        },
    }
}

/// Top-`rank` SVD through the Gram matrix of the shorter side (`f64` accumulation and
/// eigendecomposition): for `W` (`m × n`, `m ≤ n`), `W·Wᵀ = U·Σ²·Uᵀ` and `Vᵀ = Σ⁻¹·Uᵀ·W`
/// (mirrored when `m > n`). Cheaper than the randomized method when the rank is a large
/// fraction of the shorter side; singular values below ~1e-7 of the largest are not resolved
/// (their vectors are set to zero).
pub(crate) fn gram_one(w: MatrixRef<'_>, rank: usize) -> Result<Factors, String> {
    let (m, n) = w.shape();
    let wide = m <= n;
    let s_dim = m.min(n);
    // Gram of the short side, s_dim × s_dim.
    let g = if wide {
        super::dense::gram(w.to_matrix().transpose().data(), n, m)
    } else {
        super::dense::gram(w.data(), m, n)
    };
    let top = top_eigen(&g, s_dim, rank)?;
    let r = top.sig.len();
    // The long side is W·E/σ (or Wᵀ·E/σ).
    let a = to_f64(w.data());
    let wa = MatRef::from_row_major_slice(&a, m, n);
    let long = if wide {
        wa.transpose() * &top.e
    } else {
        wa * &top.e
    }; // l_dim × r
    let l_dim = long.nrows();
    let mut long_f = vec![0.0f32; l_dim * r];
    for l in 0..r {
        for i in 0..l_dim {
            long_f[i * r + l] = (long[(i, l)] * top.inv[l]) as f32;
        }
    }
    Ok(gram_factors(&top.sig, top.short, long_f, m, n))
}

/// The top eigenpairs of a short-side Gram matrix, for the Gram path.
pub(crate) struct TopEigen {
    /// `σ_l = √λ_l` (clamped at 0), largest first; `r` of them.
    pub(crate) sig: Vec<f64>,
    /// `1/σ_l`, or 0 for values below `1e-7 σ₁` (not resolved: their long-side vectors are
    /// set to zero).
    pub(crate) inv: Vec<f64>,
    /// The eigenvectors `E` (`s × r`), columns in the order of `sig`.
    pub(crate) e: faer::Mat<f64>,
    /// `E` as row-major `f32` (the short-side singular vectors).
    pub(crate) short: Vec<f32>,
}

/// The `min(rank, s)` largest eigenpairs of the `s × s` row-major Gram `g` (`f64`
/// eigendecomposition).
pub(crate) fn top_eigen(g: &[f64], s_dim: usize, rank: usize) -> Result<TopEigen, String> {
    let gm = faer::Mat::<f64>::from_fn(s_dim, s_dim, |i, j| g[i * s_dim + j]);
    let eig = gm
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| format!("eigendecomposition: {e:?}"))?;
    let vecs = eig.U();
    let vals = eig.S();
    let r = rank.min(s_dim);
    // Eigenvalues ascend: take the last r, largest first.
    let idx: Vec<usize> = (0..r).map(|l| s_dim - 1 - l).collect();
    let sig: Vec<f64> = idx.iter().map(|&i| vals[i].max(0.0).sqrt()).collect();
    let floor = sig.first().copied().unwrap_or(0.0) * 1e-7;
    let inv = sig
        .iter()
        .map(|&s| if s > floor { 1.0 / s } else { 0.0 })
        .collect();
    let e = faer::Mat::<f64>::from_fn(s_dim, r, |i, l| vecs[(i, idx[l])]);
    let mut short = vec![0.0f32; s_dim * r];
    for i in 0..s_dim {
        for l in 0..r {
            short[i * r + l] = e[(i, l)] as f32;
        }
    }
    Ok(TopEigen { sig, inv, e, short })
}

/// Factors of an `m × n` matrix from the Gram path's singular values `sig`, short-side vectors
/// `short` (`min(m, n) × r`) and long-side vectors `long` (`max(m, n) × r`, already divided by
/// σ), row-major.
pub(crate) fn gram_factors(
    sig: &[f64],
    short: Vec<f32>,
    long: Vec<f32>,
    m: usize,
    n: usize,
) -> Factors {
    let r = sig.len();
    // u: m × r; vt: r × n.
    let (u, vt) = if m <= n {
        (short, transpose_rm(&long, n, r))
    } else {
        (long, transpose_rm(&short, n, r))
    };
    finish(u, sig, vt, m, n, r)
}

/// Every singular value of a matrix, descending, from the eigenvalues of its `k × k`
/// row-major short-side Gram `g` (`f64`).
pub(crate) fn gram_singular_values(g: &[f64], k: usize) -> Result<Vec<f32>, ComputeError> {
    let mat = faer::Mat::<f64>::from_fn(k, k, |i, j| g[i * k + j]);
    let ev = mat
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| format!("eigenvalues of the Gram matrix: {e:?}"))
        .map_err(numerical(0))?;
    let mut s: Vec<f32> = ev.iter().map(|&e| e.max(0.0).sqrt() as f32).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    Ok(s)
}

/// The transpose of a row-major `rows × cols` matrix (row-major `cols × rows`).
pub(crate) fn transpose_rm(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}
