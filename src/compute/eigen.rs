//! The largest eigenpairs of a symmetric matrix, without computing the others.
//!
//! The Gram path (`rsvd::gram_one` and the GPU's `gram_path`) needs the top `r` eigenpairs of
//! an `s × s` Gram matrix in `f64`, and the small SVDs of the randomized route the top `r` of a
//! `k × k` one. A full decomposition (faer's `self_adjoint_evd`: Householder tridiagonalization,
//! divide and conquer on the tridiagonal matrix, back-transformation of all `s` vectors) spends
//! most of its time on the vectors nobody keeps. Here:
//!
//! 1. Householder tridiagonalization `A = Q·T·Qᵀ` (faer, `4/3·s³` flops);
//! 2. the top `r` eigenvalues of `T` by bisection on Sturm counts (`O(s·r)` per halving, 32
//!    independent counts interleaved so that the divisions pipeline, in SIMD registers where the
//!    CPU has AVX2 or AVX-512);
//! 3. their eigenvectors by inverse iteration on `T` (LAPACK's `dstein` scheme: an LU with
//!    partial pivoting of `T − λI`, tiny pivots replaced by `ε·‖T‖`, a seeded start vector, and
//!    modified Gram–Schmidt against the vectors of eigenvalues closer than [`CLUSTER`]`·‖T‖`);
//! 4. the back-transformation `Q·X` of those `r` vectors only (`2·s²·r` flops).
//!
//! Every vector is then checked: its residual `‖T·x − λ·x‖` at most [`RESIDUAL`]`·s·ε·‖T‖`, and
//! every pair at most [`ORTHOGONALITY`] from orthogonal — by an explicit dot product where
//! the bound `(‖rᵢ‖ + ‖rⱼ‖) / |λᵢ − λⱼ|` does not already prove it. If any check fails, the
//! vectors of `T` come from faer's divide and conquer instead (all of them, then the top `r`
//! are back-transformed): slower, never wrong. For `s = 768, r = 256` it is 1.4–1.7x faster
//! than the full decomposition on one core (docs/PERF.md); the tridiagonalization is then
//! more than half of the time.
//!
//! Deterministic: the same matrix gives the same bits (a fixed seed, sequential loops; with
//! `Par::rayon` only faer's parallel kernels, which are deterministic, run in parallel).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd;
use faer::{Conj, Mat, Par};

/// Eigenvalues closer than this fraction of `‖T‖` form a cluster whose vectors are
/// orthogonalised against each other during inverse iteration.
pub(crate) const CLUSTER: f64 = 1e-3;
/// A vector's residual may be at most this many `s·ε·‖T‖`.
pub(crate) const RESIDUAL: f64 = 64.0;
/// Largest `|xᵢ·xⱼ|` accepted between two returned vectors.
pub(crate) const ORTHOGONALITY: f64 = 1e-10;
/// Inverse iterations per vector at most (two after the residual first meets its bound).
const MAX_ITERATIONS: usize = 8;
/// Sturm counts run together in bisection: independent chains of divisions, enough to keep a
/// SIMD divider busy (each step of a count waits for the division before it).
const LANES: usize = 32;
/// Seed of the inverse iteration's start vectors.
const START_SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// The `min(r, s)` largest eigenvalues of the symmetric `s × s` matrix `a` (only its lower
/// triangle is read), in descending order, with their orthonormal eigenvectors as the columns
/// of an `s × r` matrix. `par` is the parallelism of faer's kernels (tridiagonalization,
/// back-transformation). Errors only if faer's fallback eigensolver fails.
pub(crate) fn top_eigenpairs(
    a: faer::MatRef<'_, f64>,
    r: usize,
    par: Par,
) -> Result<(Vec<f64>, Mat<f64>), String> {
    let s = a.nrows();
    let r = r.min(s);
    if r == 0 {
        return Ok((Vec::new(), Mat::zeros(s, 0)));
    }
    if s == 1 {
        return Ok((vec![a[(0, 0)]], Mat::from_fn(1, 1, |_, _| 1.0)));
    }
    // 1. Tridiagonalization, in place in a copy of the lower triangle.
    let mut trid = Mat::<f64>::zeros(s, s);
    trid.copy_from_triangular_lower(a);
    let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(s, s);
    let mut householder = Mat::<f64>::zeros(bs, s - 1);
    {
        let req = evd::tridiag::tridiag_in_place_scratch::<f64>(s, par, Default::default());
        let mut buf = MemBuffer::try_new(req).map_err(|e| format!("tridiagonalization: {e:?}"))?;
        evd::tridiag::tridiag_in_place(
            trid.as_mut(),
            householder.as_mut(),
            par,
            MemStack::new(&mut buf),
            Default::default(),
        );
    }
    let d: Vec<f64> = (0..s).map(|i| trid[(i, i)]).collect();
    let e: Vec<f64> = (0..s - 1).map(|i| trid[(i + 1, i)]).collect();
    if !d.iter().chain(&e).all(|v| v.is_finite()) {
        return Err("eigendecomposition: the matrix is not finite".into());
    }
    // 2.–3. Eigenpairs of T: inverse iteration, else divide and conquer.
    let (values, mut x) = match tridiagonal_top(&d, &e, r) {
        Some(found) => found,
        None => {
            tracing::debug!(
                "eigen {s}×{s}: inverse iteration failed its check; divide and conquer"
            );
            tridiagonal_top_dc(&d, &e, r, par)?
        }
    };
    // 4. Back-transformation of the r vectors: X ← Q·X (Q acts on rows 1…s−1).
    {
        let req = faer::linalg::householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(s - 1, bs, r);
        let mut buf = MemBuffer::try_new(req).map_err(|e| format!("back-transformation: {e:?}"))?;
        faer::linalg::householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            trid.as_ref().submatrix(1, 0, s - 1, s - 1),
            householder.as_ref(),
            Conj::No,
            x.as_mut().subrows_mut(1, s - 1),
            par,
            MemStack::new(&mut buf),
        );
    }
    Ok((values, x))
}

/// `max_i Σ_j |T_ij|`.
fn norm_inf(d: &[f64], e: &[f64]) -> f64 {
    (0..d.len())
        .map(|i| {
            d[i].abs()
                + if i > 0 { e[i - 1].abs() } else { 0.0 }
                + e.get(i).map_or(0.0, |v| v.abs())
        })
        .fold(0.0, f64::max)
}

/// The top `r` eigenpairs of the tridiagonal `T` (diagonal `d`, off-diagonal `e`) by bisection
/// and inverse iteration, or `None` where a check fails. Vectors as the columns of `s × r`.
fn tridiagonal_top(d: &[f64], e: &[f64], r: usize) -> Option<(Vec<f64>, Mat<f64>)> {
    let s = d.len();
    if s < 2 || e.len() + 1 != s || r > s {
        return None;
    }
    let tnorm = norm_inf(d, e);
    if tnorm == 0.0 || !tnorm.is_finite() {
        // T = 0: every vector is an eigenvector; the fallback gives the unit vectors.
        return None;
    }
    let values = top_eigenvalues(d, e, r, tnorm);
    let eps = f64::EPSILON;
    let pert = eps * tnorm;
    let tol = RESIDUAL * s as f64 * eps * tnorm;
    let mut x = Mat::<f64>::zeros(s, r);
    let mut residuals = vec![0.0f64; r];
    let mut cluster = 0;
    let mut lu = TridiagLu::new(s);
    let mut v = vec![0.0f64; s];
    for j in 0..r {
        if j > 0 && values[j - 1] - values[j] > CLUSTER * tnorm {
            cluster = j;
        }
        lu.factor(d, e, values[j], pert);
        // A seeded start vector in [−1, 1)ˢ, a pure function of (j, i).
        for (i, vi) in v.iter_mut().enumerate() {
            *vi = 2.0 * crate::compute::rng::uniform(START_SEED, j as u64, i as u64) - 1.0;
        }
        normalize(&mut v)?;
        let mut met = 0;
        for _ in 0..MAX_ITERATIONS {
            lu.solve(&mut v);
            for c in cluster..j {
                let col = x.col(c);
                let dot: f64 = (0..s).map(|i| col[i] * v[i]).sum();
                for (i, vi) in v.iter_mut().enumerate() {
                    *vi -= dot * col[i];
                }
            }
            // ‖(T − λI)⁻¹·v_old‖ = growth; the new v's residual is about 1/growth.
            let growth = normalize(&mut v)?;
            if 1.0 / growth <= tol {
                met += 1;
                if met == 2 {
                    break;
                }
            }
        }
        let res = residual(d, e, values[j], &v);
        // NaN fails too.
        if res.is_nan() || res > tol {
            return None;
        }
        residuals[j] = res;
        for (i, vi) in v.iter().enumerate() {
            x[(i, j)] = *vi;
        }
    }
    orthogonal_enough(&x, &values, &residuals).then_some((values, x))
}

/// Every pair of columns of `x` within [`ORTHOGONALITY`] of orthogonal: proven by the residual
/// bound `|xᵢ·xⱼ| ≤ (‖rᵢ‖ + ‖rⱼ‖) / |λᵢ − λⱼ|`, or checked by the dot product where the bound
/// is too weak (values descend, so the bound only weakens towards a column's neighbours).
fn orthogonal_enough(x: &Mat<f64>, values: &[f64], residuals: &[f64]) -> bool {
    let r = values.len();
    let rmax = residuals.iter().copied().fold(0.0, f64::max);
    for i in 0..r {
        for j in i + 1..r {
            let gap = values[i] - values[j];
            if gap > 0.0 && (residuals[i] + rmax) / gap <= ORTHOGONALITY {
                break; // and for every later j: a larger gap, the same numerator bound
            }
            let dot: f64 = x
                .col(i)
                .iter()
                .zip(x.col(j).iter())
                .map(|(a, b)| a * b)
                .sum();
            if dot.is_nan() || dot.abs() > ORTHOGONALITY {
                return false;
            }
        }
    }
    true
}

/// `‖T·v − λ·v‖₂`.
fn residual(d: &[f64], e: &[f64], lambda: f64, v: &[f64]) -> f64 {
    let s = d.len();
    let mut sum = 0.0;
    for i in 0..s {
        let mut t = (d[i] - lambda) * v[i];
        if i > 0 {
            t += e[i - 1] * v[i - 1];
        }
        if i + 1 < s {
            t += e[i] * v[i + 1];
        }
        sum += t * t;
    }
    sum.sqrt()
}

/// Scales `v` to unit length and returns its former length; `None` if it was zero or not
/// finite.
fn normalize(v: &mut [f64]) -> Option<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !(n.is_finite() && n > 0.0) {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= n);
    Some(n)
}

/// The `r` largest eigenvalues of `T`, descending, each within about `2·ε·‖T‖`: bisection on
/// Sturm counts (the number of negative pivots of `T − x·I`), from the Gershgorin interval,
/// [`LANES`] eigenvalues at a time.
fn top_eigenvalues(d: &[f64], e: &[f64], r: usize, tnorm: f64) -> Vec<f64> {
    let s = d.len();
    let e2: Vec<f64> = e.iter().map(|v| v * v).collect();
    // Smallest pivot magnitude (LAPACK's pivmin): keeps the counts finite.
    let pivmin = f64::MIN_POSITIVE * e2.iter().copied().fold(1.0, f64::max);
    let (mut glo, mut ghi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..s {
        let rad = if i > 0 { e[i - 1].abs() } else { 0.0 } + e.get(i).map_or(0.0, |v| v.abs());
        glo = glo.min(d[i] - rad);
        ghi = ghi.max(d[i] + rad);
    }
    let atol = 2.0 * f64::EPSILON * tnorm;
    glo -= atol;
    ghi += atol;
    let mut out = Vec::with_capacity(r);
    for first in (0..r).step_by(LANES) {
        let lanes = LANES.min(r - first);
        // Eigenvalue j (descending) is ascending index s − 1 − j: the x with
        // count(x) ≤ s − 1 − j < count(hi).
        let want: [usize; LANES] = std::array::from_fn(|l| s - 1 - (first + l.min(lanes - 1)));
        let mut lo = [glo; LANES];
        let mut hi = [ghi; LANES];
        // Each halving at least halves the widest interval: 2100 halvings reach atol from any
        // finite Gershgorin interval; the cap only guards against a loop that cannot end.
        // A lane stops once its interval is within atol, so that its value does not depend
        // on which eigenvalues share its group.
        for _ in 0..2100 {
            let open: [bool; LANES] = std::array::from_fn(|l| hi[l] - lo[l] > atol);
            if !open[..lanes].contains(&true) {
                break;
            }
            let mid: [f64; LANES] = std::array::from_fn(|l| 0.5 * (lo[l] + hi[l]));
            let counts = sturm_counts(d, &e2, &mid, pivmin);
            for l in 0..LANES {
                if !open[l] {
                    continue;
                }
                if counts[l] <= want[l] {
                    lo[l] = mid[l];
                } else {
                    hi[l] = mid[l];
                }
            }
        }
        out.extend((0..lanes).map(|l| 0.5 * (lo[l] + hi[l])));
    }
    out
}

/// The number of eigenvalues of `T` below each `x[l]`: the negative pivots of the `LDLᵀ`
/// factorizations of `T − x[l]·I` (pivots smaller than `pivmin` in magnitude count as
/// `−pivmin`). The lanes run in SIMD registers where the CPU has AVX2 or AVX-512 (one
/// division instruction for all of them); every lane's arithmetic is the same IEEE operations
/// in the same order on every path, so the counts do not depend on the CPU.
fn sturm_counts(d: &[f64], e2: &[f64], x: &[f64; LANES], pivmin: f64) -> [usize; LANES] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { sturm_counts_avx512(d, e2, x, pivmin) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { sturm_counts_avx2(d, e2, x, pivmin) };
        }
    }
    sturm_counts_body(d, e2, x, pivmin)
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sturm_counts_avx512(
    d: &[f64],
    e2: &[f64],
    x: &[f64; LANES],
    pivmin: f64,
) -> [usize; LANES] {
    sturm_counts_body(d, e2, x, pivmin)
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sturm_counts_avx2(
    d: &[f64],
    e2: &[f64],
    x: &[f64; LANES],
    pivmin: f64,
) -> [usize; LANES] {
    sturm_counts_body(d, e2, x, pivmin)
}

/// [`sturm_counts`]' loop, written lane-parallel and branch-free so that it vectorizes: the
/// counts are kept as `f64` (exact far beyond any `s`) next to the pivots.
#[inline(always)]
fn sturm_counts_body(d: &[f64], e2: &[f64], x: &[f64; LANES], pivmin: f64) -> [usize; LANES] {
    let mut count = [0.0f64; LANES];
    let mut q = [0.0f64; LANES];
    for (i, &di) in d.iter().enumerate() {
        let e2i = if i > 0 { e2[i - 1] } else { 0.0 };
        for l in 0..LANES {
            let mut t = di - x[l];
            if i > 0 {
                t -= e2i / q[l];
            }
            let t = if t.abs() < pivmin { -pivmin } else { t };
            count[l] += if t < 0.0 { 1.0 } else { 0.0 };
            q[l] = t;
        }
    }
    count.map(|c| c as usize)
}

/// An LU factorization with partial pivoting of `T − λI` (`U` has three diagonals).
struct TridiagLu {
    /// Reciprocals of `U`'s diagonal.
    u0: Vec<f64>,
    u1: Vec<f64>,
    u2: Vec<f64>,
    mult: Vec<f64>,
    swap: Vec<bool>,
}

impl TridiagLu {
    fn new(s: usize) -> Self {
        TridiagLu {
            u0: vec![0.0; s],
            u1: vec![0.0; s],
            u2: vec![0.0; s],
            mult: vec![0.0; s],
            swap: vec![false; s],
        }
    }

    /// Factors `T − λI`; pivots smaller than `pert` in magnitude become `±pert`.
    fn factor(&mut self, d: &[f64], e: &[f64], lambda: f64, pert: f64) {
        let s = d.len();
        // The current row k: (p, q, w) at columns k, k + 1, k + 2.
        let (mut p, mut q) = (d[0] - lambda, e.first().copied().unwrap_or(0.0));
        for k in 0..s - 1 {
            let c = e[k];
            let a = d[k + 1] - lambda;
            let b = e.get(k + 1).copied().unwrap_or(0.0);
            if p.abs() >= c.abs() {
                let m = if p == 0.0 { 0.0 } else { c / p };
                (self.u0[k], self.u1[k], self.u2[k]) = (p, q, 0.0);
                (self.mult[k], self.swap[k]) = (m, false);
                (p, q) = (a - m * q, b);
            } else {
                let m = p / c;
                (self.u0[k], self.u1[k], self.u2[k]) = (c, a, b);
                (self.mult[k], self.swap[k]) = (m, true);
                (p, q) = (q - m * a, -m * b);
            }
        }
        self.u0[s - 1] = p;
        // Stored as reciprocals: the back substitution's chain then has no division.
        for u in self.u0.iter_mut() {
            if u.abs() < pert {
                *u = if *u < 0.0 { -pert } else { pert };
            }
            *u = 1.0 / *u;
        }
    }

    /// `v ← (T − λI)⁻¹·v`.
    fn solve(&self, v: &mut [f64]) {
        let s = v.len();
        for k in 0..s - 1 {
            if self.swap[k] {
                v.swap(k, k + 1);
            }
            v[k + 1] -= self.mult[k] * v[k];
        }
        v[s - 1] *= self.u0[s - 1];
        v[s - 2] = (v[s - 2] - self.u1[s - 2] * v[s - 1]) * self.u0[s - 2];
        for k in (0..s - 2).rev() {
            v[k] = (v[k] - self.u1[k] * v[k + 1] - self.u2[k] * v[k + 2]) * self.u0[k];
        }
    }
}

/// The top `r` eigenpairs of `T` from faer's divide and conquer (all `s` vectors).
fn tridiagonal_top_dc(
    d: &[f64],
    e: &[f64],
    r: usize,
    par: Par,
) -> Result<(Vec<f64>, Mat<f64>), String> {
    let s = d.len();
    let mut dd = faer::diag::Diag::<f64>::zeros(s);
    let mut ee = faer::diag::Diag::<f64>::zeros(s);
    for i in 0..s {
        dd[i] = d[i];
        ee[i] = e.get(i).copied().unwrap_or(0.0);
    }
    let mut vals = faer::diag::Diag::<f64>::zeros(s);
    let mut u = Mat::<f64>::zeros(s, s);
    let req = evd::self_adjoint_evd_scratch::<f64>(
        s,
        evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    );
    let mut buf = MemBuffer::try_new(req).map_err(|e| format!("eigendecomposition: {e:?}"))?;
    evd::tridiagonal_self_adjoint_evd(
        dd.as_ref(),
        ee.as_ref(),
        vals.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| format!("eigendecomposition: {e:?}"))?;
    // Ascending: the last r, largest first.
    let values = (0..r).map(|l| vals[s - 1 - l]).collect();
    Ok((values, Mat::from_fn(s, r, |i, l| u[(i, s - 1 - l)])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::rng::gaussian_f64;

    /// `W·Wᵀ` of a seeded Gaussian `s × c` matrix (rank `min(s, c)`).
    fn gram(seed: u64, s: usize, c: usize) -> Mat<f64> {
        let w = gaussian_f64(seed, s, c);
        let w = MatRef::from_row_major_slice(&w, s, c);
        w * w.transpose()
    }

    use faer::MatRef;

    /// Every returned pair is an eigenpair of `a` to `1e-11·‖a‖`, the vectors orthonormal to
    /// 1e-10, and the values faer's largest `r` to `1e-12·‖a‖`.
    fn check(a: &Mat<f64>, r: usize) {
        let s = a.nrows();
        let (vals, x) = top_eigenpairs(a.as_ref(), r, Par::Seq).expect("eigenpairs");
        let r = r.min(s);
        assert_eq!((vals.len(), x.nrows(), x.ncols()), (r, s, r));
        let full = a.self_adjoint_eigenvalues(faer::Side::Lower).expect("faer");
        let scale = full.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for l in 0..r {
            let want = full[s - 1 - l];
            assert!(
                (vals[l] - want).abs() <= 1e-12 * scale,
                "value {l}: {} vs {want}",
                vals[l]
            );
            let ax = a * x.col(l);
            let res: f64 = (0..s)
                .map(|i| (ax[i] - vals[l] * x[(i, l)]).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(res <= 1e-11 * scale, "vector {l}: residual {res:e}");
        }
        let xtx = x.transpose() * &x;
        for i in 0..r {
            for j in 0..r {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (xtx[(i, j)] - want).abs() <= 1e-10,
                    "XᵀX[{i},{j}] = {}",
                    xtx[(i, j)]
                );
            }
        }
    }

    /// The tridiagonal of `a` (as `top_eigenpairs` forms it).
    fn tridiagonal(a: &Mat<f64>) -> (Vec<f64>, Vec<f64>) {
        let s = a.nrows();
        let mut trid = Mat::<f64>::zeros(s, s);
        trid.copy_from_triangular_lower(a.as_ref());
        let bs = faer::linalg::qr::no_pivoting::factor::recommended_block_size::<f64>(s, s);
        let mut h = Mat::<f64>::zeros(bs, s - 1);
        let req = evd::tridiag::tridiag_in_place_scratch::<f64>(s, Par::Seq, Default::default());
        let mut buf = MemBuffer::new(req);
        evd::tridiag::tridiag_in_place(
            trid.as_mut(),
            h.as_mut(),
            Par::Seq,
            MemStack::new(&mut buf),
            Default::default(),
        );
        let d = (0..s).map(|i| trid[(i, i)]).collect();
        let e = (0..s - 1).map(|i| trid[(i + 1, i)]).collect();
        (d, e)
    }

    #[test]
    fn top_pairs_of_gram_matrices() {
        for (seed, s, c, r) in [
            (1, 60, 180, 20),
            (2, 60, 180, 60),
            (3, 33, 33, 7),
            (4, 2, 5, 2),
        ] {
            let a = gram(seed, s, c);
            check(&a, r);
            let (d, e) = tridiagonal(&a);
            assert!(
                tridiagonal_top(&d, &e, r).is_some(),
                "inverse iteration on {s}×{s}"
            );
        }
    }

    #[test]
    fn rank_deficient_repeated_and_zero() {
        // Rank 5 of 40: the top 20 include 15 (numerically) zero eigenvalues, a cluster.
        check(&gram(5, 40, 5), 20);
        // Repeated values: a diagonal matrix (its tridiagonal splits everywhere) …
        let diag = [3.0, 1.0, 3.0, 2.0, 3.0, 1.0, 0.5, 2.0];
        let a = Mat::<f64>::from_fn(8, 8, |i, j| if i == j { diag[i] } else { 0.0 });
        check(&a, 6);
        // … the same values in a rotated basis, and a multiple of the identity.
        let q = {
            let g = gaussian_f64(6, 8, 8);
            let g = MatRef::from_row_major_slice(&g, 8, 8).to_owned();
            g.qr().compute_Q()
        };
        check(&(&q * &a * q.transpose()), 8);
        check(
            &Mat::<f64>::from_fn(12, 12, |i, j| if i == j { 2.5 } else { 0.0 }),
            5,
        );
        // Two eigenvalues 1e-13 apart (relative), inside one cluster.
        let b = Mat::<f64>::from_fn(6, 6, |i, j| {
            if i != j {
                0.0
            } else {
                [1.0, 1.0 + 1e-13, 0.3, 0.2, 0.1, 0.0][i]
            }
        });
        check(
            &(&q.as_ref().submatrix(0, 0, 6, 6).qr().compute_Q()
                * &b
                * q.as_ref()
                    .submatrix(0, 0, 6, 6)
                    .qr()
                    .compute_Q()
                    .transpose()),
            4,
        );
        // The zero matrix (no ‖T‖ to scale by: the fallback) and a 1 × 1 one.
        let (vals, x) =
            top_eigenpairs(Mat::<f64>::zeros(5, 5).as_ref(), 3, Par::Seq).expect("zero");
        assert_eq!(vals, vec![0.0; 3]);
        assert!((x.transpose() * &x - Mat::<f64>::identity(3, 3)).norm_max() <= 1e-15);
        let (vals, x) =
            top_eigenpairs(Mat::<f64>::from_fn(1, 1, |_, _| -4.0).as_ref(), 3, Par::Seq)
                .expect("1×1");
        assert_eq!((vals, x[(0, 0)]), (vec![-4.0], 1.0));
    }

    #[test]
    fn same_bits_every_time() {
        let a = gram(7, 50, 90);
        let (v1, x1) = top_eigenpairs(a.as_ref(), 17, Par::Seq).expect("seq");
        let (v2, x2) = top_eigenpairs(a.as_ref(), 17, Par::Seq).expect("seq again");
        assert_eq!(v1, v2);
        assert!(x1 == x2);
    }

    #[test]
    fn inverse_iteration_agrees_with_divide_and_conquer() {
        let a = gram(8, 70, 100);
        let (d, e) = tridiagonal(&a);
        let (vi, xi) = tridiagonal_top(&d, &e, 30).expect("inverse iteration");
        let (vd, xd) = tridiagonal_top_dc(&d, &e, 30, Par::Seq).expect("divide and conquer");
        for l in 0..30 {
            assert!((vi[l] - vd[l]).abs() <= 1e-12 * vd[0], "value {l}");
            let dot: f64 = xi
                .col(l)
                .iter()
                .zip(xd.col(l).iter())
                .map(|(a, b)| a * b)
                .sum();
            assert!(
                (dot.abs() - 1.0).abs() <= 1e-10,
                "vector {l}: |dot| = {}",
                dot.abs()
            );
        }
    }

    /// The counts of the dispatched (SIMD) path equal the plain loop's and the number of
    /// eigenvalues below each point; an eigenvalue's bits do not depend on how many others
    /// are computed with it (lanes stop once converged).
    #[test]
    fn sturm_counts_exact_and_values_independent_of_groups() {
        let a = gram(9, 90, 200);
        let (d, e) = tridiagonal(&a);
        let e2: Vec<f64> = e.iter().map(|v| v * v).collect();
        let full = a.self_adjoint_eigenvalues(faer::Side::Lower).expect("faer");
        // Points halfway between consecutive eigenvalues, and below and above all of them.
        let mut points = vec![full[0] - 1.0];
        points.extend((1..full.len()).map(|i| 0.5 * (full[i - 1] + full[i])));
        points.push(full[full.len() - 1] + 1.0);
        for chunk in points.chunks(LANES) {
            let x: [f64; LANES] = std::array::from_fn(|l| chunk[l.min(chunk.len() - 1)]);
            let got = sturm_counts(&d, &e2, &x, f64::MIN_POSITIVE);
            let plain = sturm_counts_body(&d, &e2, &x, f64::MIN_POSITIVE);
            assert_eq!(got, plain);
            for l in 0..chunk.len() {
                let below = full.iter().filter(|&&v| v < x[l]).count();
                assert_eq!(got[l], below, "count below {}", x[l]);
            }
        }
        let tnorm = norm_inf(&d, &e);
        let many = top_eigenvalues(&d, &e, 70, tnorm);
        let few = top_eigenvalues(&d, &e, 5, tnorm);
        assert_eq!(few[..], many[..5]);
    }
}
