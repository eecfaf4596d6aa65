//! Deterministic parallel dense kernels on faer.
//!
//! Work is split into pieces of a fixed size (never by thread count); each piece runs faer
//! sequentially (`Par::Seq`), and partial sums are added in piece order. The result is
//! therefore bit-identical for every rayon pool size.

use faer::linalg::matmul::matmul;
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Output rows per task of [`mul_rows`].
const ROW_CHUNK: usize = 256;
/// Rows per partial Gram in [`gram`].
const GRAM_CHUNK: usize = 4096;

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
    out.par_chunks_mut(ROW_CHUNK * k)
        .enumerate()
        .for_each(|(c, chunk)| {
            let rows = chunk.len() / k;
            let dst = MatMut::from_row_major_slice_mut(chunk, rows, k);
            matmul(
                dst,
                Accum::Replace,
                a.subrows(c * ROW_CHUNK, rows),
                x,
                T::one(),
                Par::Seq,
            );
        });
    out
}

/// `yᵀ · y` (`k × k`, row-major) of a row-major `m × k` matrix, summed over fixed row blocks in
/// block order.
pub(crate) fn gram(y: &[f64], m: usize, k: usize) -> Vec<f64> {
    let mut g = vec![0.0f64; k * k];
    if m == 0 || k == 0 {
        return g;
    }
    let ym = MatRef::from_row_major_slice(y, m, k);
    let parts: Vec<Vec<f64>> = (0..m.div_ceil(GRAM_CHUNK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * GRAM_CHUNK;
            let rows = GRAM_CHUNK.min(m - r0);
            let yc = ym.subrows(r0, rows);
            let mut p = vec![0.0f64; k * k];
            matmul(
                MatMut::from_row_major_slice_mut(&mut p, k, k),
                Accum::Replace,
                yc.transpose(),
                yc,
                1.0,
                Par::Seq,
            );
            p
        })
        .collect();
    for p in parts {
        for (a, b) in g.iter_mut().zip(p) {
            *a += b;
        }
    }
    // Exact symmetry (the two triangles may differ in the last bit).
    for i in 0..k {
        for j in 0..i {
            let v = 0.5 * (g[i * k + j] + g[j * k + i]);
            g[i * k + j] = v;
            g[j * k + i] = v;
        }
    }
    g
}

/// Upper Cholesky factor `R` (`g = Rᵀ R`, row-major `k × k`) of a symmetric matrix, or `None`
/// if a pivot is not safely positive.
pub(crate) fn cholesky_upper(g: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut r = vec![0.0f64; k * k];
    for j in 0..k {
        let mut d = g[j * k + j];
        for i in 0..j {
            d -= r[i * k + j] * r[i * k + j];
        }
        // A pivot that lost (almost) all of its diagonal to cancellation is numerically zero.
        if !(d.is_finite() && d > g[j * k + j] * 1e-14 && d > 0.0) {
            return None;
        }
        let rjj = d.sqrt();
        r[j * k + j] = rjj;
        for l in j + 1..k {
            let mut s = g[j * k + l];
            for i in 0..j {
                s -= r[i * k + j] * r[i * k + l];
            }
            r[j * k + l] = s / rjj;
        }
    }
    Some(r)
}

/// Inverse of an upper-triangular `k × k` matrix with non-zero diagonal (row-major).
pub(crate) fn inv_upper(r: &[f64], k: usize) -> Vec<f64> {
    let mut x = vec![0.0f64; k * k];
    // Column j of X solves R x = e_j; x is zero below j.
    for j in 0..k {
        x[j * k + j] = 1.0 / r[j * k + j];
        for i in (0..j).rev() {
            let mut s = 0.0;
            for l in i + 1..=j {
                s += r[i * k + l] * x[l * k + j];
            }
            x[i * k + j] = -s / r[i * k + i];
        }
    }
    x
}

pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub(crate) fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
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
    svd::svd(a, s.as_mut(), uo, vo, Par::Seq, stack, Default::default())
        .map_err(|e| format!("SVD did not converge ({e:?})"))?;
    let s: Vec<f64> = s.column_vector().iter().copied().collect();
    Ok((u, s, v))
}
