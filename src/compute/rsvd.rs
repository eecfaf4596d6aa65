//! Randomized SVD (Halko–Martinsson–Tropp) with Cholesky-QR2 orthonormalisation.
//!
//! The randomized routes work on the matrix short side first ([`ShortFirst`]): the basis and
//! its orthonormalisation on the short side, `Bᵀ` on the long side. The large products
//! (`A·X`, `Aᵀ·X`, `Q·U_B`, `Bᵀ·E·Σ⁻¹`) run in `f32`; everything that decides orthogonality
//! (Gram matrices, Cholesky, `Y·R⁻¹`) and the small SVD of `B` run in `f64`.

use faer::{MatRef, Par};
use rayon::prelude::*;

use super::check::{check_batch, check_rank, numerical, use_exact};
use super::dense::{
    cholesky_upper, clear_upper, clear_upper_all, gram, inv_upper, mul_rows, mul_t, mul_tn,
    sum_in_order, svd_f64, sweep, to_f64,
};
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
    /// The randomized SVD from a block Krylov basis of this shape (see [`KrylovShape`]).
    Sketch(KrylovShape),
}

impl SvdOptions {
    /// The route [`super::Backend::lowrank`] takes for `m × n` matrices at `rank` (assumed
    /// valid: `1..=min(m, n)`). Every backend follows it, so they compute the same thing.
    pub fn lowrank_route(&self, (m, n): (usize, usize), rank: usize) -> LowrankRoute {
        let short = m.min(n);
        let k = rank.saturating_add(self.oversample).min(short);
        if use_exact((m, n), k, self) {
            return LowrankRoute::Exact;
        }
        // The randomized method sketches where its basis (about 2r + p columns) spans at most
        // three quarters of the short side; past that the exact Gram route costs about as much
        // (its eigendecomposition is the short side's, the sketch's small SVD nearly so).
        let basis = (2 * rank).saturating_add(self.oversample);
        if self.method == super::SvdMethod::Randomized && 4 * basis <= 3 * short {
            let shape = KrylovShape::capped(
                rank,
                self.oversample,
                self.depth,
                short,
                super::MAX_RANDOMIZED_BLOCK,
            );
            if shape.width() >= k {
                return LowrankRoute::Sketch(shape);
            }
        }
        if 4 * k >= short {
            LowrankRoute::Gram
        } else {
            LowrankRoute::Sketch(KrylovShape::new(rank, self.oversample, self.depth, short))
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
    /// The top `kk` values from a block Krylov basis.
    Sketch {
        /// Values returned.
        kk: usize,
        /// The basis.
        shape: KrylovShape,
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
        SpectrumRoute::Sketch {
            kk,
            shape: KrylovShape::new(kk, opts.oversample.max(kk), opts.depth, m.min(n)),
        }
    })
}

/// The long side `max(m, n)` of a same-shape batch's matrices (0 for an empty batch): the rows
/// of the Gaussian start Ω of the randomized routes ([`ShortFirst`]).
pub(crate) fn long_side(batch: &[MatrixRef<'_>]) -> usize {
    batch.first().map_or(0, |w| w.rows().max(w.cols()))
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
/// rounding; an input that is already that close takes a single pass). If that does not happen within [`MAX_PASSES`] (numerically rank-deficient `y`),
/// the basis comes from an `f64` SVD of `y`, which is orthonormal whatever the rank.
/// With [`Orth::Iterate`], a well-conditioned `y` takes a single pass.
pub(crate) fn orth(y: &[f32], m: usize, k: usize, need: Orth) -> Result<Vec<f32>, String> {
    let mut out = vec![0.0f32; m * k];
    let mut q = vec![0.0f64; m * k];
    let mut g = gram(y, m, k);
    for pass in 0..MAX_PASSES {
        let mut finishes = max_dev_from_identity(&g, k) < 0.5;
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

/// The shape of the block Krylov range finder: `depth + 1` blocks of `block` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KrylovShape {
    /// Columns per block (`b`); also the width of the Gaussian start Ω (`n × b`).
    pub block: usize,
    /// Applications of `W·Wᵀ` after the first block (`d`).
    pub depth: usize,
}

impl KrylovShape {
    /// The shape for `rank` values of an `m × n` matrix whose short side is `short`:
    /// `b = ⌈(2·rank + oversample) / (depth + 1)⌉`, so that the whole basis has about
    /// `2·rank + oversample` columns, with the depth shortened where the basis would not fit
    /// the short side.
    pub fn new(rank: usize, oversample: usize, depth: usize, short: usize) -> Self {
        let short = short.max(1);
        let block = (2 * rank + oversample).div_ceil(depth + 1).clamp(1, short);
        let depth = depth.min(short / block - 1);
        KrylovShape { block, depth }
    }

    /// [`KrylovShape::new`] with blocks of at most `max_block` columns: the depth is raised
    /// (never lowered) until `⌈(2r + p)/(depth + 1)⌉ ≤ max_block`, then clamped to the short
    /// side as in `new`.
    pub fn capped(
        rank: usize,
        oversample: usize,
        depth: usize,
        short: usize,
        max_block: usize,
    ) -> Self {
        let want = (2 * rank + oversample).div_ceil(max_block.max(1)).max(1);
        KrylovShape::new(rank, oversample, depth.max(want - 1), short)
    }

    /// Columns of the whole basis, `(depth + 1) · block`.
    pub fn width(&self) -> usize {
        (self.depth + 1) * self.block
    }
}

/// `y −= Qa·(Qaᵀ·y)` for every block `Qa` of `basis` (block Gram–Schmidt, classical: all
/// coefficients from the same `y`), in `f32`; `y` is `m × b`, each block `m × b`, row-major.
fn project_out(y: &mut [f32], basis: &[Vec<f32>], m: usize, b: usize) {
    let coefs: Vec<Vec<f32>> = basis.iter().map(|q| mul_t(q, m, b, y, b)).collect();
    subtract(y, basis, &coefs, m, b);
}

/// `y −= Σⱼ basisⱼ · coefsⱼ` (`m × b` blocks, `b × b` coefficients, row-major `f32`).
fn subtract(y: &mut [f32], basis: &[Vec<f32>], coefs: &[Vec<f32>], m: usize, b: usize) {
    let ch = super::dense::row_chunk(m);
    y.par_chunks_mut(ch * b).enumerate().for_each(|(c, yc)| {
        let rows = yc.len() / b;
        for (q, coef) in basis.iter().zip(coefs) {
            faer::linalg::matmul::matmul(
                faer::MatMut::from_row_major_slice_mut(yc, rows, b),
                faer::Accum::Add,
                MatRef::from_row_major_slice(&q[c * ch * b..c * ch * b + rows * b], rows, b),
                MatRef::from_row_major_slice(coef, b, b),
                -1.0f32,
                faer::Par::Seq,
            );
        }
        clear_upper();
    });
}

/// A matrix seen short side first: `A = W` (`s × l`, `s = m ≤ l = n`) when `W` is wide or
/// square, `A = Wᵀ` (a view, no copy) when it is tall. The block Krylov basis is built for `A`,
/// so it lives on the short side of every matrix, where orthonormalising it is cheap, and
/// `Bᵀ = Aᵀ·Q` on the long side. Every backend factorizes this orientation, from a Gaussian
/// start `Ω` of `l` rows.
#[derive(Clone, Copy)]
pub(crate) struct ShortFirst<'a> {
    w: MatrixRef<'a>,
    /// `A = Wᵀ`.
    tall: bool,
}

/// Columns of `A` per panel of the passes over its long side: one panel (`s × PANEL`,
/// 768 KB for `s = 768`) stays in a core's L2 cache between the two products of
/// [`ShortFirst::fused`].
const PANEL: usize = 256;

/// Matrices of more bytes than this take a Krylov block's two products in one pass
/// ([`ShortFirst::fused`]). Smaller ones stay in the last-level cache between two passes,
/// where the two large products are faster than the fused panels' small ones.
const FUSE_MIN_BYTES: usize = 32 << 20;

/// Columns of `A` per task of the passes over its long side: about an eighth of it, whole
/// panels, at most 4096. A function of `l` only, so partial sums are added in the same
/// order on any pool.
fn long_chunk(l: usize) -> usize {
    l.div_ceil(8).next_multiple_of(PANEL).clamp(PANEL, 4096)
}

/// A row-major `rows × cols` view of `slice` whose rows start `ld` elements apart.
///
/// faer 0.24.4's `MatMut::from_row_major_slice_with_stride_mut` builds a column-major view
/// (it passes the row stride as the column stride); the column-major constructor, transposed,
/// is right.
fn strided_rows_mut(
    slice: &mut [f32],
    rows: usize,
    cols: usize,
    ld: usize,
) -> faer::MatMut<'_, f32> {
    faer::MatMut::from_column_major_slice_with_stride_mut(slice, cols, rows, ld).transpose_mut()
}

/// `x · y` written into columns `col..col + y.ncols()` of the row-major `out`
/// (`x.nrows() × ld`), in fixed blocks of rows ([`super::dense::row_chunk`]).
fn rows_into(x: MatRef<'_, f32>, y: MatRef<'_, f32>, out: &mut [f32], ld: usize, col: usize) {
    let (rows, c) = (x.nrows(), y.ncols());
    if rows == 0 || c == 0 {
        return;
    }
    let ch = super::dense::row_chunk(rows);
    out.par_chunks_mut(ch * ld).enumerate().for_each(|(t, oc)| {
        let r = oc.len() / ld;
        faer::linalg::matmul::matmul(
            strided_rows_mut(&mut oc[col..], r, c, ld),
            faer::Accum::Replace,
            x.subrows(t * ch, r),
            y,
            1.0f32,
            Par::Seq,
        );
        clear_upper();
    });
}

impl<'a> ShortFirst<'a> {
    pub(crate) fn new(w: MatrixRef<'a>) -> Self {
        ShortFirst {
            w,
            tall: w.rows() > w.cols(),
        }
    }

    /// `(s, l)`: the short and the long side.
    fn dims(&self) -> (usize, usize) {
        let (m, n) = self.w.shape();
        if self.tall {
            (n, m)
        } else {
            (m, n)
        }
    }

    fn a(&self) -> MatRef<'a, f32> {
        if self.tall {
            self.w.faer().transpose()
        } else {
            self.w.faer()
        }
    }

    /// `A·X` (`s × c`, row-major) for `x` (`l × c`, any strides). Wide: blocks of rows of
    /// `W`. Tall: panels of rows of `W` (columns of `A`), partial products added in order.
    fn times(&self, x: MatRef<'_, f32>) -> Vec<f32> {
        let (s, l) = self.dims();
        let c = x.ncols();
        if !self.tall {
            return mul_rows(self.w.faer(), x);
        }
        if s == 0 || l == 0 || c == 0 {
            return vec![0.0f32; s * c];
        }
        let a = self.a();
        let ch = long_chunk(l);
        let parts: Vec<Vec<f32>> = (0..l.div_ceil(ch))
            .into_par_iter()
            .map(|t| {
                let mut y = vec![0.0f32; s * c];
                let cols = ch.min(l - t * ch);
                for p0 in (0..cols).step_by(PANEL) {
                    let (j, pc) = (t * ch + p0, PANEL.min(cols - p0));
                    faer::linalg::matmul::matmul(
                        faer::MatMut::from_row_major_slice_mut(&mut y, s, c),
                        faer::Accum::Add,
                        a.subcols(j, pc),
                        x.subrows(j, pc),
                        1.0f32,
                        Par::Seq,
                    );
                }
                clear_upper();
                y
            })
            .collect();
        sum_in_order(parts, s * c)
    }

    /// `Z = Aᵀ·Q` into columns `col..col + c` of `bt` (`l × ld`, row-major), for `q`
    /// (`s × c`, row-major), by blocks of rows of `Aᵀ`.
    fn t_times_into(&self, q: &[f32], c: usize, bt: &mut [f32], ld: usize, col: usize) {
        let (s, _) = self.dims();
        rows_into(
            self.a().transpose(),
            MatRef::from_row_major_slice(q, s, c),
            bt,
            ld,
            col,
        );
    }

    /// `Z = Aᵀ·Q` into columns `col..col + c` of `bt` (`l × ld`, row-major) and `Y = A·Z`
    /// (`s × c`, returned row-major), for `q` (`s × c`, row-major). Large matrices
    /// ([`FUSE_MIN_BYTES`]) in one pass over `A`: panel by panel of [`PANEL`] columns,
    /// `Zₚ = Aₚᵀ·Q`, then `Y += Aₚ·Zₚ` while the panel is in cache; tasks are fixed runs of
    /// panels whose partial `Y`s are added in order. Others in two passes.
    fn times_t_times(
        &self,
        q: &[f32],
        c: usize,
        bt: &mut [f32],
        ld: usize,
        col: usize,
    ) -> Vec<f32> {
        let (s, l) = self.dims();
        if s * l * 4 < FUSE_MIN_BYTES {
            self.t_times_into(q, c, bt, ld, col);
            return self.times(MatRef::from_row_major_slice_with_stride(
                &bt[col..],
                l,
                c,
                ld,
            ));
        }
        self.fused(q, c, bt, ld, col)
    }

    /// [`ShortFirst::times_t_times`] in one pass, whatever the size.
    fn fused(&self, q: &[f32], c: usize, bt: &mut [f32], ld: usize, col: usize) -> Vec<f32> {
        use faer::reborrow::{Reborrow, ReborrowMut};
        let (s, l) = self.dims();
        if s == 0 || l == 0 || c == 0 {
            return vec![0.0f32; s * c];
        }
        let a = self.a();
        let qm = MatRef::from_row_major_slice(q, s, c);
        let ch = long_chunk(l);
        let parts: Vec<Vec<f32>> = bt
            .par_chunks_mut(ch * ld)
            .enumerate()
            .map(|(t, zc)| {
                let cols = zc.len() / ld;
                let mut y = vec![0.0f32; s * c];
                let mut ym = faer::MatMut::from_row_major_slice_mut(&mut y, s, c);
                for p0 in (0..cols).step_by(PANEL) {
                    let pc = PANEL.min(cols - p0);
                    let ap = a.subcols(t * ch + p0, pc);
                    let mut zp = strided_rows_mut(&mut zc[p0 * ld + col..], pc, c, ld);
                    faer::linalg::matmul::matmul(
                        zp.rb_mut(),
                        faer::Accum::Replace,
                        ap.transpose(),
                        qm,
                        1.0f32,
                        Par::Seq,
                    );
                    faer::linalg::matmul::matmul(
                        ym.rb_mut(),
                        faer::Accum::Add,
                        ap,
                        zp.rb(),
                        1.0f32,
                        Par::Seq,
                    );
                }
                clear_upper();
                y
            })
            .collect();
        sum_in_order(parts, s * c)
    }
}

/// The block Krylov range finder (randomized block Lanczos with full re-orthogonalisation) of
/// `A` ([`ShortFirst`], `s × l`): an orthonormal basis `Q = [Q₀ … Q_d]` (`s × (d+1)b`,
/// returned as its blocks, `f32`) of `span[A·Ω, (A·Aᵀ)·A·Ω, …, (A·Aᵀ)^d·A·Ω]` for `omega`
/// (`l × b`, row-major), and `Bᵀ = Aᵀ·Q` (`l × (d+1)b`, row-major `f32`), which the
/// iteration computes anyway: block `i` of `Bᵀ` is `Zᵢ = Aᵀ·Qᵢ`, and the next block is `A·Zᵢ`
/// (the same pass over a large `A`, [`ShortFirst::times_t_times`]) with every earlier block
/// projected out twice (orthonormalised between the two projections, so that what leaks back
/// through `R⁻¹` is removed by the second).
///
/// Each block costs one product with `A` and one with `Aᵀ`, `2(d+1)b·2ls` flops in all,
/// `Bᵀ` included; for the same accuracy this is 55–65 % of subspace iteration with `q = 2`
/// and `b = r + 10` (docs/PERF.md).
fn krylov(
    a: ShortFirst<'_>,
    omega: &[f32],
    b: usize,
    depth: usize,
) -> Result<(Vec<Vec<f32>>, Vec<f32>), String> {
    let (s, l) = a.dims();
    let k = (depth + 1) * b;
    let mut blocks: Vec<Vec<f32>> = Vec::with_capacity(depth + 1);
    // Bᵀ (l × k), filled block by block: Zᵢ = Aᵀ·Qᵢ in columns ib..(i+1)b.
    let mut bt = vec![0.0f32; l * k];
    let y = a.times(MatRef::from_row_major_slice(omega, l, b));
    let mut q = orth(&y, s, b, Orth::Final)?;
    for i in 0..=depth {
        if i == depth {
            a.t_times_into(&q, b, &mut bt, k, i * b);
            blocks.push(q);
            break;
        }
        let mut y = a.times_t_times(&q, b, &mut bt, k, i * b);
        blocks.push(q);
        // The first projection's coefficients from the long side: Qⱼᵀ·y = Qⱼᵀ·A·Aᵀ·Qᵢ = Zⱼᵀ·Zᵢ,
        // for every j ≤ i in one product.
        let done = MatRef::from_row_major_slice_with_stride(&bt, l, (i + 1) * b, k);
        let all = mul_tn(done, done.subcols(i * b, b));
        let coefs: Vec<Vec<f32>> = all.chunks(b * b).map(<[f32]>::to_vec).collect();
        subtract(&mut y, &blocks, &coefs, s, b);
        q = orth_against(y, &blocks, s, b, i)?;
    }
    Ok((blocks, bt))
}

/// Most re-orthogonalisations of one Krylov block after the first projection.
pub(crate) const MAX_REORTH: usize = 4;

/// A column keeps more than this fraction of its squared length under a projection when the
/// projection is accurate enough that no further one is needed (Kahan–Parlett: "twice is
/// enough" unless a column lost most of its length).
pub(crate) const REORTH_KEEP: f64 = 0.25;

/// Seed of the Gaussian block that replaces Krylov block `i + 1` when the space is exhausted
/// (`RESTART_SEED + i`).
pub(crate) const RESTART_SEED: u64 = 0x6b72_796c_6f76;

/// An orthonormal basis (`m × b`, `f32`) of the part of `y` (`m × b`, block `i + 1`, already
/// projected once against the earlier `blocks`) orthogonal to those blocks: orthonormalise,
/// then project and orthonormalise again until no column of the (orthonormal) iterate loses
/// more than `1 − REORTH_KEEP` of its squared length to the projection, at most
/// [`MAX_REORTH`] rounds. If the first two rounds both lose that much, the Krylov space is
/// exhausted (`W` has lower rank than the basis, and what is left of `y` is rounding noise,
/// possibly inside the span already found): the block continues from a Gaussian block (seed
/// `RESTART_SEED + i`), so that the basis stays orthonormal.
fn orth_against(
    y: Vec<f32>,
    blocks: &[Vec<f32>],
    m: usize,
    b: usize,
    i: usize,
) -> Result<Vec<f32>, String> {
    // Projected and orthonormalised again below: a well-conditioned basis is enough here.
    let mut q = orth(&y, m, b, Orth::Iterate)?;
    for round in 0..MAX_REORTH {
        if round == MAX_REORTH / 2 {
            q = super::rng::gaussian_f32(RESTART_SEED + i as u64, m, b);
            project_out(&mut q, blocks, m, b);
            q = orth(&q, m, b, Orth::Final)?;
        }
        project_out(&mut q, blocks, m, b);
        let kept = min_column_norm2(&q, b);
        q = orth(&q, m, b, Orth::Final)?;
        if kept > REORTH_KEEP {
            break;
        }
    }
    Ok(q)
}

/// The smallest squared column norm of a row-major matrix with `b` columns (`f64` sums).
fn min_column_norm2(y: &[f32], b: usize) -> f64 {
    let mut norms = vec![0.0f64; b];
    for row in y.chunks(b) {
        for (acc, &v) in norms.iter_mut().zip(row) {
            *acc += (v as f64) * (v as f64);
        }
    }
    norms.into_iter().fold(f64::INFINITY, f64::min)
}

/// The blocks of a Krylov basis side by side: `m × (blocks · b)`, row-major.
fn join_blocks(blocks: &[Vec<f32>], m: usize, b: usize) -> Vec<f32> {
    let width = blocks.len() * b;
    let mut out = vec![0.0f32; m * width];
    for (j, q) in blocks.iter().enumerate() {
        for (row, qr) in out.chunks_mut(width).zip(q.chunks(b)) {
            row[j * b..(j + 1) * b].copy_from_slice(qr);
        }
    }
    out
}

/// Randomized rank-`rank` factors of `w` from the block Krylov basis of its short-side-first
/// view `A` ([`ShortFirst`]) started at `omega` (`l × b`, row-major, `l = max(m, n)`) with
/// `depth` further blocks ([`KrylovShape`]): the SVD of `B = Qᵀ·A` truncated to `rank`,
/// `A ≈ (Q·U_B)·S·V_Bᵀ`, transposed back for a tall `W`.
pub(crate) fn lowrank_one(
    w: MatrixRef<'_>,
    rank: usize,
    omega: &[f32],
    b: usize,
    depth: usize,
) -> Result<Factors, String> {
    let (m, n) = w.shape();
    let a = ShortFirst::new(w);
    let (s, l) = a.dims();
    let (blocks, bt) = krylov(a, omega, b, depth)?;
    let k = blocks.len() * b;
    let q = join_blocks(&blocks, s, b);
    drop(blocks);
    let (long, sig, ub) = small_factors(&bt, l, k, rank)?;
    drop(bt);
    let r = sig.len();
    // The short side: Q · U_B[:, :r] (Q is orthonormal to f32 rounding already).
    let short = mul_rows(
        MatRef::from_row_major_slice(&q, s, k),
        MatRef::from_row_major_slice(&ub, k, r),
    );
    let (u, vt) = if a.tall {
        (long, transpose_rm(&short, s, r))
    } else {
        (short, transpose_rm(&long, l, r))
    };
    Ok(finish(u, &sig, vt, m, n, r))
}

/// `(V_B, σ, U_B)` of [`small_factors`], the vectors row-major `f32`.
type SmallFactors = (Vec<f32>, Vec<f64>, Vec<f32>);

/// The rank-`rank` SVD of `B` from `Bᵀ` (`l × k`, row-major `f32`) as `(V_B, σ, U_B)`:
/// `V_B` (`l × r`) and `U_B` (`k × r`) row-major `f32`, through the eigendecomposition of
/// the `k × k` Gram `B·Bᵀ` accumulated in `f64` (`B·Bᵀ = U_B Σ² U_Bᵀ`, `V_B = Bᵀ·U_B·Σ⁻¹`,
/// the product in `f32` as on the GPU); σ accurate to ~`u·σ₁²/σᵢ`. Falls back to the dense
/// `f64` SVD of `Bᵀ` when a kept σ is below the Gram's resolution floor (1e-7·σ₁: a
/// numerically rank-deficient sketch), whose vectors the Gram cannot give.
fn small_factors(bt: &[f32], l: usize, k: usize, rank: usize) -> Result<SmallFactors, String> {
    let g = gram(bt, l, k);
    let top = top_eigen(&g, k, rank.min(k))?;
    if top.inv.contains(&0.0) {
        let (vb, sig, ub) = svd_f64(MatRef::from_row_major_slice(&to_f64(bt), l, k), true)?;
        let r = rank.min(sig.len());
        let rm = |x: &faer::Mat<f64>, rows: usize| -> Vec<f32> {
            (0..rows)
                .flat_map(|i| (0..r).map(move |j| x[(i, j)] as f32))
                .collect()
        };
        return Ok((rm(&vb, l), sig[..r].to_vec(), rm(&ub, k)));
    }
    let r = top.sig.len();
    let mut es = vec![0.0f32; k * r];
    for a in 0..k {
        for j in 0..r {
            es[a * r + j] = (top.e[(a, j)] * top.inv[j]) as f32;
        }
    }
    let long = mul_rows(
        MatRef::from_row_major_slice(bt, l, k),
        MatRef::from_row_major_slice(&es, k, r),
    );
    Ok((long, top.sig, top.short))
}

/// The top `kk` singular values of `w` from the block Krylov basis of its short-side-first
/// view ([`ShortFirst`]) started at `omega` (`l × b`, row-major) with `depth` further blocks.
pub(crate) fn spectrum_one(
    w: MatrixRef<'_>,
    kk: usize,
    omega: &[f32],
    b: usize,
    depth: usize,
) -> Result<Vec<f32>, String> {
    let a = ShortFirst::new(w);
    let (blocks, bt) = krylov(a, omega, b, depth)?;
    let k = blocks.len() * b;
    let g = gram(&bt, a.dims().1, k);
    let s = gram_singular_values(&g, k).map_err(|e| e.to_string())?;
    Ok(s.into_iter().take(kk).collect())
}

/// The SVD of `Bᵀ` (`n × k`, row-major `f64`) as `svd_f64` gives it — `(V_B, σ, U_B)` — with
/// `rank` vectors, through the eigendecomposition of its `k × k` Gram `B·Bᵀ`: `n·k²` work
/// instead of a dense SVD's several times that, and σ accurate to ~`u·σ₁²/σᵢ` (1e-8 relative
/// for σ down to 1e-4·σ₁). Falls back to the dense SVD when a kept σ is below the resolution
/// floor (1e-7·σ₁: a numerically rank-deficient sketch), whose vectors the Gram cannot give.
/// Without `vectors`, all `k` singular values.
pub(crate) fn small_svd(
    bt: &[f64],
    n: usize,
    k: usize,
    rank: usize,
    vectors: bool,
) -> Result<super::dense::SvdParts, String> {
    let g = gram(bt, n, k);
    if !vectors {
        let sv: Vec<f64> = gram_singular_values(&g, k)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|&x| x as f64)
            .collect();
        return Ok((faer::Mat::zeros(0, 0), sv, faer::Mat::zeros(0, 0)));
    }
    let r = rank.min(k);
    let top = top_eigen(&g, k, r)?;
    if top.inv.contains(&0.0) {
        return svd_f64(MatRef::from_row_major_slice(bt, n, k), true);
    }
    // V_B = Bᵀ · E · diag(1/σ).
    let btm = MatRef::from_row_major_slice(bt, n, k);
    let mut vb = btm * &top.e;
    for l in 0..r {
        for j in 0..n {
            vb[(j, l)] *= top.inv[l];
        }
    }
    Ok((vb, top.sig, top.e))
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
    u: Vec<f32>,
    s: &[f64],
    vt: Vec<f32>,
    m: usize,
    n: usize,
    r: usize,
) -> Factors {
    finish_on(u, s, vt, (m, n, r), true)
}

/// [`finish`] without the rayon pool (`u`'s flips on this thread): for callers whose pool is
/// busy with other work queued first (the GPU backend's concurrent jobs).
pub(crate) fn finish_seq(
    u: Vec<f32>,
    s: &[f64],
    vt: Vec<f32>,
    m: usize,
    n: usize,
    r: usize,
) -> Factors {
    finish_on(u, s, vt, (m, n, r), false)
}

fn finish_on(
    mut u: Vec<f32>,
    s: &[f64],
    mut vt: Vec<f32>,
    (m, n, r): (usize, usize, usize),
    par: bool,
) -> Factors {
    let mut flip = vec![false; r];
    for (l, f) in flip.iter_mut().enumerate() {
        let row = &mut vt[l * n..(l + 1) * n];
        let mut best = 0usize;
        for (j, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = j;
            }
        }
        if n > 0 && row[best] < 0.0 {
            *f = true;
            for v in row.iter_mut() {
                *v = -*v;
            }
        }
    }
    if flip.contains(&true) {
        let flip_row = |row: &mut [f32]| {
            for (v, &f) in row.iter_mut().zip(&flip) {
                if f {
                    *v = -*v;
                }
            }
        };
        if par {
            u.par_chunks_mut(r.max(1)).for_each(flip_row);
        } else {
            u.chunks_mut(r.max(1)).for_each(flip_row);
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

/// The `min(rank, s)` largest eigenpairs of the `s × s` row-major Gram `g` (`f64`; only the
/// kept pairs are computed, `compute::eigen`), with faer's kernels on the rayon pool.
pub(crate) fn top_eigen(g: &[f64], s_dim: usize, rank: usize) -> Result<TopEigen, String> {
    top_eigen_par(g, s_dim, rank, Par::rayon(0))
}

/// [`top_eigen`] on one thread (for callers that run one per matrix in parallel, where
/// faer's own threads would only contend).
pub(crate) fn top_eigen_seq(g: &[f64], s_dim: usize, rank: usize) -> Result<TopEigen, String> {
    top_eigen_par(g, s_dim, rank, Par::Seq)
}

fn top_eigen_par(g: &[f64], s_dim: usize, rank: usize, par: Par) -> Result<TopEigen, String> {
    let gm = MatRef::from_row_major_slice(g, s_dim, s_dim);
    let got = super::eigen::top_eigenpairs(gm, rank, par);
    match par {
        Par::Seq => clear_upper(),
        _ => clear_upper_all(),
    }
    let (vals, e) = got?;
    let r = vals.len();
    let sig: Vec<f64> = vals.iter().map(|&v| v.max(0.0).sqrt()).collect();
    let floor = sig.first().copied().unwrap_or(0.0) * 1e-7;
    let inv = sig
        .iter()
        .map(|&s| if s > floor { 1.0 / s } else { 0.0 })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::rng::gaussian_f32;
    use crate::compute::Matrix;

    /// `Aᵀ` of [`ShortFirst`] as a row-major copy (`l × s`): `W` itself when tall.
    fn explicit_at(w: &Matrix) -> Vec<f32> {
        if w.rows() > w.cols() {
            w.data().to_vec()
        } else {
            transpose_rm(w.data(), w.rows(), w.cols())
        }
    }

    /// The Krylov basis stays orthonormal across blocks for a random matrix, one of rank 2
    /// (the space is exhausted after the first block: later blocks are rounding noise) and
    /// the zero matrix.
    #[test]
    fn krylov_basis_is_orthonormal_when_the_space_runs_out() {
        let (b, depth) = (10, 4);
        // Tall (the basis on the 300 side, A = Wᵀ) and wide (A = W).
        for (m, n) in [(600, 300), (300, 700)] {
            let x = gaussian_f32(5, m, 2);
            let y = gaussian_f32(6, 2, n);
            let low =
                Matrix::from_fn(m, n, |i, j| x[i * 2] * y[j] + x[i * 2 + 1] * y[n + j]).unwrap();
            let random = Matrix::new(m, n, gaussian_f32(7, m, n)).unwrap();
            let zero = Matrix::zeros(m, n);
            let (s, l) = (m.min(n), m.max(n));
            let om = gaussian_f32(0, l, b);
            for (name, w) in [("random", &random), ("rank 2", &low), ("zero", &zero)] {
                let a = ShortFirst::new(w.view());
                assert_eq!(a.dims(), (s, l));
                let (blocks, bt) = krylov(a, &om, b, depth).unwrap();
                let k = blocks.len() * b;
                assert_eq!((blocks.len(), bt.len()), (depth + 1, l * k));
                let q = join_blocks(&blocks, s, b);
                let dev = max_dev_from_identity(&gram(&q, s, k), k);
                assert!(dev < 1e-5, "{m}×{n} {name}: max |QᵀQ − I| = {dev:e}");
                // Bᵀ = Aᵀ·Q, against a plain product with the explicit A.
                let at = explicit_at(w);
                let want = mul_rows(
                    MatRef::from_row_major_slice(&at, l, s),
                    MatRef::from_row_major_slice(&q, s, k),
                );
                let scale = want.iter().fold(1.0f32, |a, v| a.max(v.abs()));
                for (g, w) in bt.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-5 * scale,
                        "{m}×{n} {name}: Bᵀ {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The fused pass gives the two products of the separate passes (to `f32` rounding), for
    /// both orientations and a long side that is not a whole number of panels; the columns of
    /// `Bᵀ` around the block it writes are left alone.
    #[test]
    fn fused_pass_matches_two_products() {
        for (m, n) in [(1300, 70), (70, 1300), (64, 64)] {
            let w = Matrix::new(m, n, gaussian_f32(11, m, n)).unwrap();
            let a = ShortFirst::new(w.view());
            let (s, l) = a.dims();
            let (c, ld, col) = (5, 12, 3);
            let q = gaussian_f32(12, s, c);
            let mut bt = vec![7.0f32; l * ld];
            let y = a.fused(&q, c, &mut bt, ld, col);
            let mut bt2 = vec![7.0f32; l * ld];
            a.t_times_into(&q, c, &mut bt2, ld, col);
            let y2 = a.times(MatRef::from_row_major_slice_with_stride(
                &bt2[col..],
                l,
                c,
                ld,
            ));
            // Against the explicit A.
            let at = explicit_at(&w);
            let z3 = mul_rows(
                MatRef::from_row_major_slice(&at, l, s),
                MatRef::from_row_major_slice(&q, s, c),
            );
            for i in 0..l {
                for j in 0..ld {
                    let (g, g2) = (bt[i * ld + j], bt2[i * ld + j]);
                    if (col..col + c).contains(&j) {
                        let want = z3[i * c + j - col];
                        assert!(
                            (g - want).abs() <= 1e-4,
                            "{m}×{n} Z ({i}, {j}): {g} vs {want}, two-pass {g2}"
                        );
                        assert!((g2 - want).abs() <= 1e-4, "{m}×{n} Z: {g2} vs {want}");
                    } else {
                        assert_eq!((g, g2), (7.0, 7.0), "{m}×{n}: column {j} written");
                    }
                }
            }
            let scale = y2.iter().fold(1.0f32, |a, v| a.max(v.abs()));
            for (g, w) in y.iter().zip(&y2) {
                assert!((g - w).abs() <= 1e-5 * scale, "{m}×{n} Y: {g} vs {w}");
            }
            assert_eq!(y.len(), s * c);
        }
    }

    #[test]
    fn krylov_shapes() {
        // r = 64, p = 10, d = 4: 5 blocks of 28 (GPT-2's rank-64 benchmark).
        assert_eq!(
            KrylovShape::new(64, 10, 4, 768),
            KrylovShape {
                block: 28,
                depth: 4
            }
        );
        // The basis is cut to the short side.
        assert_eq!(
            KrylovShape::new(64, 10, 4, 100),
            KrylovShape {
                block: 28,
                depth: 2
            }
        );
        // d = 0: one block of 2r + p.
        assert_eq!(KrylovShape::new(8, 10, 0, 768).width(), 26);
        assert_eq!(
            KrylovShape::new(8, 10, 0, 20),
            KrylovShape {
                block: 20,
                depth: 0
            }
        );
    }
}
