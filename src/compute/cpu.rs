//! The CPU backend: faer GEMMs and `f64` dense factorizations, parallel with rayon.

use faer::MatRef;
use rayon::prelude::*;

use super::dense::mul_rows;
use super::mask;
use super::rng::gaussian_f32;
use super::rsvd::{exact_one, exact_spectrum, lowrank_one, spectrum_one};
use super::{
    Backend, ComputeError, Factors, MaskPattern, MaskResult, Matrix, MatrixRef, SvdOptions,
};

/// The CPU backend (faer + rayon). Runs on the current rayon pool: call it inside
/// `ThreadPool::install` to choose the threads. Results do not depend on the pool size.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Cpu {
    /// The CPU backend.
    pub fn new() -> Self {
        Cpu
    }
}

/// Elements checked per task for NaN/Inf.
const FINITE_CHUNK: usize = 1 << 16;

/// The first non-finite element of `w` (as an error naming batch index `index`), if any.
fn check_finite(w: MatrixRef<'_>, index: usize) -> Result<(), ComputeError> {
    let data = w.data();
    let bad = data.par_chunks(FINITE_CHUNK).any(|c| {
        // Exponent all ones ⇔ NaN or ±∞; integer ops so that the loop vectorises.
        c.iter().fold(0u32, |acc, x| {
            acc | ((x.to_bits() & 0x7f80_0000) == 0x7f80_0000) as u32
        }) != 0
    });
    if !bad {
        return Ok(());
    }
    let pos = data.iter().position(|x| !x.is_finite()).unwrap_or(0);
    let cols = w.cols().max(1);
    Err(ComputeError::NonFinite {
        index,
        row: pos / cols,
        col: pos % cols,
        value: data.get(pos).copied().unwrap_or(f32::NAN),
    })
}

/// Checks a batch: one shape for all, all finite. Returns the shape (`None` for an empty
/// batch).
fn check_batch(batch: &[MatrixRef<'_>]) -> Result<Option<(usize, usize)>, ComputeError> {
    let Some(first) = batch.first() else {
        return Ok(None);
    };
    let shape = first.shape();
    for (i, w) in batch.iter().enumerate() {
        if w.shape() != shape {
            return Err(ComputeError::ShapeMismatch {
                what: "batch matrices must share one shape",
                index: i,
                expected: shape,
                found: w.shape(),
            });
        }
    }
    for (i, w) in batch.iter().enumerate() {
        check_finite(*w, i)?;
    }
    Ok(Some(shape))
}

fn check_rank(rank: usize, (rows, cols): (usize, usize)) -> Result<(), ComputeError> {
    if rank == 0 || rank > rows.min(cols) {
        return Err(ComputeError::InvalidRank { rank, rows, cols });
    }
    Ok(())
}

fn numerical(index: usize) -> impl Fn(String) -> ComputeError {
    move |reason| ComputeError::Numerical { index, reason }
}

/// Whether a matrix of this shape is factorized exactly rather than sketched with `k` columns.
fn use_exact((m, n): (usize, usize), k: usize, opts: &SvdOptions) -> bool {
    let p = m.min(n);
    p <= opts.exact_below || k >= p
}

impl Backend for Cpu {
    fn name(&self) -> &str {
        "cpu"
    }

    fn lowrank(
        &self,
        batch: &[MatrixRef<'_>],
        rank: usize,
        opts: &SvdOptions,
    ) -> Result<Vec<Factors>, ComputeError> {
        let Some(shape) = check_batch(batch)? else {
            return Ok(Vec::new());
        };
        check_rank(rank, shape)?;
        let (m, n) = shape;
        let k = rank.saturating_add(opts.oversample).min(m.min(n));
        if use_exact(shape, k, opts) {
            return batch
                .par_iter()
                .enumerate()
                .map(|(i, w)| exact_one(*w, rank).map_err(numerical(i)))
                .collect();
        }
        if 4 * k >= m.min(n) {
            // A large fraction of the spectrum: the Gram eigendecomposition is cheaper than
            // sketching with (2q + 2) passes at this width, and as accurate for the kept part.
            for (i, w) in batch.iter().enumerate() {
                check_finite(*w, i)?;
            }
            return batch
                .par_iter()
                .enumerate()
                .map(|(i, w)| super::rsvd::gram_one(*w, rank).map_err(numerical(i)))
                .collect();
        }
        let omega = gaussian_f32(opts.seed, n, k);
        let omega = MatRef::from_row_major_slice(&omega, n, k);
        batch
            .par_iter()
            .enumerate()
            .map(|(i, w)| lowrank_one(*w, rank, omega, opts.power_iters).map_err(numerical(i)))
            .collect()
    }

    fn svd_exact(&self, w: MatrixRef<'_>, rank: usize) -> Result<Factors, ComputeError> {
        check_finite(w, 0)?;
        check_rank(rank, w.shape())?;
        exact_one(w, rank).map_err(numerical(0))
    }

    fn spectrum_with(
        &self,
        batch: &[MatrixRef<'_>],
        k: usize,
        opts: &SvdOptions,
    ) -> Result<Vec<Vec<f32>>, ComputeError> {
        let Some((m, n)) = check_batch(batch)? else {
            return Ok(Vec::new());
        };
        let kk = k.min(m.min(n));
        if kk == 0 {
            return Ok(vec![Vec::new(); batch.len()]);
        }
        let sketch = kk.saturating_add(opts.oversample.max(kk)).min(m.min(n));
        if use_exact((m, n), sketch, opts) {
            return batch
                .par_iter()
                .enumerate()
                .map(|(i, w)| exact_spectrum(*w, kk).map_err(numerical(i)))
                .collect();
        }
        let omega = gaussian_f32(opts.seed, n, sketch);
        let omega = MatRef::from_row_major_slice(&omega, n, sketch);
        batch
            .par_iter()
            .enumerate()
            .map(|(i, w)| spectrum_one(*w, kk, omega, opts.power_iters).map_err(numerical(i)))
            .collect()
    }

    fn gemm(
        &self,
        a: MatrixRef<'_>,
        b: MatrixRef<'_>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Matrix, ComputeError> {
        let fa = if trans_a {
            a.faer().transpose()
        } else {
            a.faer()
        };
        let fb = if trans_b {
            b.faer().transpose()
        } else {
            b.faer()
        };
        if fa.ncols() != fb.nrows() {
            return Err(ComputeError::ShapeMismatch {
                what: "gemm: rows of op(b) must equal columns of op(a)",
                index: 1,
                expected: (fa.ncols(), fb.ncols()),
                found: (fb.nrows(), fb.ncols()),
            });
        }
        let (rows, cols) = (fa.nrows(), fb.ncols());
        let expected = rows.checked_mul(cols).ok_or(ComputeError::DataLength {
            rows,
            cols,
            len: 0,
            expected: usize::MAX,
        })?;
        if expected == 0 {
            return Ok(Matrix::zeros(rows, cols));
        }
        Ok(Matrix {
            rows,
            cols,
            data: mul_rows(fa, fb),
        })
    }

    fn magnitude_mask(
        &self,
        w: MatrixRef<'_>,
        sparsity: f32,
        pattern: MaskPattern,
    ) -> Result<MaskResult, ComputeError> {
        check_finite(w, 0)?;
        mask::magnitude_mask(w, sparsity, pattern)
    }

    fn global_threshold(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<f32, ComputeError> {
        mask::check_sparsity(sparsity)?;
        for (i, w) in batch.iter().enumerate() {
            check_finite(*w, i)?;
        }
        Ok(mask::global_threshold(batch, sparsity))
    }

    fn global_magnitude_masks(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<Vec<MaskResult>, ComputeError> {
        mask::check_sparsity(sparsity)?;
        for (i, w) in batch.iter().enumerate() {
            check_finite(*w, i)?;
        }
        Ok(mask::global_masks(batch, sparsity))
    }

    fn full_spectrum(&self, w: MatrixRef<'_>) -> Result<Vec<f32>, ComputeError> {
        let (m, n) = w.shape();
        if m == 0 || n == 0 {
            return Ok(Vec::new());
        }
        if let Some(i) = w.data().iter().position(|x| !x.is_finite()) {
            return Err(ComputeError::NonFinite {
                index: 0,
                row: i / n,
                col: i % n,
                value: w.data()[i],
            });
        }
        let g = if m >= n {
            super::dense::gram(w.data(), m, n)
        } else {
            super::dense::gram(w.to_matrix().transpose().data(), n, m)
        };
        let k = m.min(n);
        let mat = faer::Mat::<f64>::from_fn(k, k, |i, j| g[i * k + j]);
        let ev = mat
            .self_adjoint_eigenvalues(faer::Side::Lower)
            .map_err(|e| ComputeError::Numerical {
                index: 0,
                reason: format!("eigenvalues of the Gram matrix: {e:?}"),
            })?;
        let mut s: Vec<f32> = ev.iter().map(|&e| e.max(0.0).sqrt() as f32).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        Ok(s)
    }

    fn row_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        mask::row_sq_norms(w)
            .into_iter()
            .map(|s| s.sqrt() as f32)
            .collect()
    }

    fn col_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        mask::col_sq_norms(w)
            .into_iter()
            .map(|s| s.sqrt() as f32)
            .collect()
    }
}
