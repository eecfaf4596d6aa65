//! Deterministic parallel dense kernels on faer.
//!
//! Work is split into pieces of a fixed size (never by thread count); each piece runs faer
//! sequentially (`Par::Seq`), and partial sums are added in piece order. The result is
//! therefore bit-identical for every rayon pool size.

use faer::linalg::matmul::matmul;
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Output rows per task of [`mul_rows`]: about an eighth of the rows (so one matrix alone
/// still spreads over the cores), between 64 and 256, a multiple of 16. A function of the
/// shape only, never of the thread count.
pub(crate) fn row_chunk(m: usize) -> usize {
    (m.div_ceil(8).div_ceil(16) * 16).clamp(64, 256)
}

/// Clears the upper halves of the calling thread's vector registers (`vzeroupper`) where the
/// CPU has AVX; nothing elsewhere.
///
/// faer's kernels (the `gemm` crate's AVX-512 and AVX2 microkernels) return with the upper
/// halves in use. On Intel cores that state makes every later SSE instruction of the thread
/// (the code this crate compiles for the baseline x86-64 target: conversions, loops, libm
/// calls) wait for a merge with the upper bits, until something runs `vzeroupper`: measured
/// on Sapphire/Emerald Rapids, the Gaussian sketch of GPT-2's table took 0.35 s after GEMMs
/// and 0.03 s before them. Every task that runs a faer kernel ends with this call.
#[inline]
pub(crate) fn clear_upper() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked above). `vzeroupper` only zeroes bits 128 and up
        // of the vector registers, which code compiled for the baseline target (this caller)
        // never keeps values in.
        unsafe { zero_upper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn zero_upper() {
    std::arch::x86_64::_mm256_zeroupper();
}

/// [`clear_upper`] on every thread of the current rayon pool and the calling one: after faer
/// ran its own parallel kernels (`Par::rayon`).
pub(crate) fn clear_upper_all() {
    rayon::broadcast(|_| clear_upper());
    clear_upper();
}

/// Scalars the kernels run on (`f32`, `f64`).
pub(crate) trait Scalar: ComplexField + Copy + Send + Sync + 'static {
    fn zero() -> Self;
    fn one() -> Self;
}

impl Scalar for f32 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
}

impl Scalar for f64 {
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
}

/// `a · x` as a row-major `a.nrows() × x.ncols()` vector; `a` and `x` may have any strides
/// (pass `w.transpose()` for `wᵀ · x`). Tasks are fixed blocks of output rows.
pub(crate) fn mul_rows<T: Scalar>(a: MatRef<'_, T>, x: MatRef<'_, T>) -> Vec<T> {
    let (m, k) = (a.nrows(), x.ncols());
    let mut out = vec![T::zero(); m * k];
    if m == 0 || k == 0 || a.ncols() == 0 {
        return out;
    }
    let chunk_rows = row_chunk(m);
    out.par_chunks_mut(chunk_rows * k)
        .enumerate()
        .for_each(|(c, chunk)| {
            let rows = chunk.len() / k;
            let dst = MatMut::from_row_major_slice_mut(chunk, rows, k);
            matmul(
                dst,
                Accum::Replace,
                a.subrows(c * chunk_rows, rows),
                x,
                T::one(),
                Par::Seq,
            );
            clear_upper();
        });
    out
}

/// Rows of `a` per partial product in [`mul_t`].
const REDUCE_CHUNK: usize = 4096;

/// `aᵀ · x` (`n × k`, row-major) for `a` (`m × n`) and `x` (`m × k`), both row-major slices.
///
/// Tall `a` (more than two [`REDUCE_CHUNK`]s of rows) goes through [`mul_tn`], so every task
/// streams whole rows of `a`; other shapes use [`mul_rows`] over blocks of columns of `a`.
pub(crate) fn mul_t(a: &[f32], m: usize, n: usize, x: &[f32], k: usize) -> Vec<f32> {
    let am = MatRef::from_row_major_slice(a, m, n);
    let xm = MatRef::from_row_major_slice(x, m, k);
    if m <= 2 * REDUCE_CHUNK || n == 0 || k == 0 {
        return mul_rows(am.transpose(), xm);
    }
    mul_tn(am, xm)
}

/// `xᵀ · y` (`x.ncols() × y.ncols()`, row-major) of two matrices with the same rows (any
/// strides): fixed blocks of [`REDUCE_CHUNK`] rows, whose partial products are added in block
/// order.
pub(crate) fn mul_tn(x: MatRef<'_, f32>, y: MatRef<'_, f32>) -> Vec<f32> {
    let (rows, a, c) = (x.nrows(), x.ncols(), y.ncols());
    let parts: Vec<Vec<f32>> = (0..rows.div_ceil(REDUCE_CHUNK))
        .into_par_iter()
        .map(|t| {
            let r0 = t * REDUCE_CHUNK;
            let r = REDUCE_CHUNK.min(rows - r0);
            let mut p = vec![0.0f32; a * c];
            matmul(
                MatMut::from_row_major_slice_mut(&mut p, a, c),
                Accum::Replace,
                x.subrows(r0, r).transpose(),
                y.subrows(r0, r),
                1.0,
                Par::Seq,
            );
            clear_upper();
            p
        })
        .collect();
    sum_in_order(parts, a * c)
}

/// Adds row-major partial results of the same length in order.
pub(crate) fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; len];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Rows per task of the Cholesky-QR sweeps: about an eighth of the rows, between 256 and
/// 4096. A function of `m` only, so partial Grams are summed in the same order on any pool.
fn sweep_chunk(m: usize) -> usize {
    (m.div_ceil(8).div_ceil(16) * 16).clamp(256, 4096)
}

/// Lower triangle of `xᵀx` for a row-major `rows × k` block, mirrored to the upper.
fn gram_block(x: &[f64], rows: usize, k: usize) -> Vec<f64> {
    use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
    let xm = MatRef::from_row_major_slice(x, rows, k);
    let mut p = vec![0.0f64; k * k];
    tri_matmul(
        MatMut::from_row_major_slice_mut(&mut p, k, k),
        BlockStructure::TriangularLower,
        Accum::Replace,
        xm.transpose(),
        BlockStructure::Rectangular,
        xm,
        BlockStructure::Rectangular,
        1.0,
        Par::Seq,
    );
    clear_upper();
    p
}

/// Sums partial `k × k` Grams in order and mirrors the lower triangle to the upper.
fn sum_grams(parts: Vec<Vec<f64>>, k: usize) -> Vec<f64> {
    let mut g = vec![0.0f64; k * k];
    for p in parts {
        for (a, b) in g.iter_mut().zip(p) {
            *a += b;
        }
    }
    for i in 0..k {
        for j in 0..i {
            g[j * k + i] = g[i * k + j];
        }
    }
    g
}

/// `yᵀ · y` (`k × k`, row-major, `f64`) of a row-major `m × k` matrix given in `f64` or `f32`,
/// accumulated in `f64` over fixed row blocks summed in block order.
pub(crate) fn gram<T: Copy + Into<f64> + Sync>(y: &[T], m: usize, k: usize) -> Vec<f64> {
    if m == 0 || k == 0 {
        return vec![0.0; k * k];
    }
    let ch = sweep_chunk(m);
    let parts: Vec<Vec<f64>> = y
        .par_chunks(ch * k)
        .map(|c| {
            let x: Vec<f64> = c.iter().map(|&v| v.into()).collect();
            gram_block(&x, c.len() / k, k)
        })
        .collect();
    sum_grams(parts, k)
}

/// A block of a sweep: index, rows of `q`, rows of the optional `f32` copy.
type SweepTask<'a> = (usize, &'a mut [f64], Option<&'a mut [f32]>);

/// One Cholesky-QR sweep: `q ← src · rinv` (`rinv` a `k × k` row-major upper-triangular
/// inverse; `src` is `from` converted to `f64` when given, else `q` itself), in fixed row
/// blocks. When `out32` is non-empty it receives `q` cast to `f32`. Returns the Gram of the new
/// `q` when `want_gram` (else an empty vector).
pub(crate) fn sweep(
    from: Option<&[f32]>,
    q: &mut [f64],
    out32: &mut [f32],
    m: usize,
    k: usize,
    rinv: &[f64],
    want_gram: bool,
) -> Vec<f64> {
    if m == 0 || k == 0 {
        return vec![0.0; k * k];
    }
    let ch = sweep_chunk(m);
    let rm = MatRef::from_row_major_slice(rinv, k, k);
    let mut outs = out32.chunks_mut(ch * k);
    let tasks: Vec<SweepTask<'_>> = q
        .chunks_mut(ch * k)
        .enumerate()
        .map(|(c, qc)| (c, qc, outs.next()))
        .collect();
    let parts: Vec<Vec<f64>> = tasks
        .into_par_iter()
        .map(|(c, qc, oc)| {
            let rows = qc.len() / k;
            let src: Vec<f64> = match from {
                Some(y) => y[c * ch * k..c * ch * k + qc.len()]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                None => qc.to_vec(),
            };
            matmul(
                MatMut::from_row_major_slice_mut(qc, rows, k),
                Accum::Replace,
                MatRef::from_row_major_slice(&src, rows, k),
                rm,
                1.0,
                Par::Seq,
            );
            clear_upper();
            if let Some(oc) = oc {
                for (o, &v) in oc.iter_mut().zip(qc.iter()) {
                    *o = v as f32;
                }
            }
            if want_gram {
                gram_block(qc, rows, k)
            } else {
                Vec::new()
            }
        })
        .collect();
    if want_gram {
        sum_grams(parts, k)
    } else {
        Vec::new()
    }
}

/// Upper Cholesky factor `R` (`g = Rᵀ R`, row-major `k × k`) of a symmetric matrix (faer,
/// sequential), or `None` if a pivot is not safely positive: `R_jj² ≤ 1e-14 · g_jj` means the
/// column was cancelled to rounding level.
pub(crate) fn cholesky_upper(g: &[f64], k: usize) -> Option<Vec<f64>> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
    let mut a = faer::Mat::<f64>::from_fn(k, k, |i, j| g[i * k + j]);
    let req = cholesky_in_place_scratch::<f64>(k, Par::Seq, Default::default());
    let mut buf = MemBuffer::try_new(req).ok()?;
    let info = cholesky_in_place(
        a.as_mut(),
        Default::default(),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    clear_upper();
    if info.dynamic_regularization_count != 0 {
        return None;
    }
    let mut r = vec![0.0f64; k * k];
    for j in 0..k {
        let d = a[(j, j)];
        if !(d.is_finite() && d > 0.0 && d * d > g[j * k + j] * 1e-14) {
            return None;
        }
        // The lower triangle of `a` holds L = Rᵀ.
        for i in 0..=j {
            r[i * k + j] = a[(j, i)];
        }
    }
    Some(r)
}

/// Inverse of an upper-triangular `k × k` matrix with non-zero diagonal (row-major; faer,
/// sequential).
pub(crate) fn inv_upper(r: &[f64], k: usize) -> Vec<f64> {
    let src = MatRef::from_row_major_slice(r, k, k);
    let mut x = vec![0.0f64; k * k];
    faer::linalg::triangular_inverse::invert_upper_triangular(
        MatMut::from_row_major_slice_mut(&mut x, k, k),
        src,
        Par::Seq,
    );
    clear_upper();
    // Only the upper triangle is written; the rest stays zero.
    x
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `(u, s, v)` of a thin SVD.
pub(crate) type SvdParts = (faer::Mat<f64>, Vec<f64>, faer::Mat<f64>);

/// Thin SVD in `f64`, sequential: `(u: m × p column-major faer, s: p, v: n × p)` with
/// `p = min(m, n)`; vectors only when `vectors` is set.
pub(crate) fn svd_f64(a: MatRef<'_, f64>, vectors: bool) -> Result<SvdParts, String> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::svd::{self, ComputeSvdVectors};
    let (m, n) = a.shape();
    let p = m.min(n);
    let mode = if vectors {
        ComputeSvdVectors::Thin
    } else {
        ComputeSvdVectors::No
    };
    let mut s = faer::diag::Diag::<f64>::zeros(p);
    let mut u = faer::Mat::<f64>::zeros(if vectors { m } else { 0 }, if vectors { p } else { 0 });
    let mut v = faer::Mat::<f64>::zeros(if vectors { n } else { 0 }, if vectors { p } else { 0 });
    let req = svd::svd_scratch::<f64>(m, n, mode, mode, Par::Seq, Default::default());
    let mut buf = MemBuffer::try_new(req).map_err(|_| "out of memory for SVD workspace")?;
    let stack = MemStack::new(&mut buf);
    let (uo, vo) = if vectors {
        (Some(u.as_mut()), Some(v.as_mut()))
    } else {
        (None, None)
    };
    let done = svd::svd(a, s.as_mut(), uo, vo, Par::Seq, stack, Default::default());
    clear_upper();
    done.map_err(|e| format!("SVD did not converge ({e:?})"))?;
    let s: Vec<f64> = s.column_vector().iter().copied().collect();
    Ok((u, s, v))
}
