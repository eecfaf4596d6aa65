//! The CPU backend: faer GEMMs and `f64` dense factorizations, parallel with rayon.

use super::check::{check_finite, check_rank, gemm_shape, numerical};
use super::dense::mul_rows;
use super::mask::{self, CpuMasks};
use super::rng::gaussian_f32;
use super::rsvd::{
    check_lowrank, check_spectrum, exact_one, exact_spectrum, gram_one, gram_singular_values,
    long_side, lowrank_one, per_matrix, spectrum_one, LowrankRoute, SpectrumRoute,
};
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
        match check_lowrank(batch, rank, opts)? {
            None => Ok(Vec::new()),
            Some(LowrankRoute::Exact) => per_matrix(batch, |w| exact_one(w, rank)),
            Some(LowrankRoute::Gram) => per_matrix(batch, |w| gram_one(w, rank)),
            Some(LowrankRoute::Sketch(shape)) => {
                let (l, b) = (long_side(batch), shape.block);
                let omega = gaussian_f32(opts.seed, l, b);
                per_matrix(batch, |w| lowrank_one(w, rank, &omega, b, shape.depth))
            }
        }
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
        match check_spectrum(batch, k, opts)? {
            SpectrumRoute::Trivial => Ok(vec![Vec::new(); batch.len()]),
            SpectrumRoute::Exact(kk) => per_matrix(batch, |w| exact_spectrum(w, kk)),
            SpectrumRoute::Sketch { kk, shape } => {
                let (l, b) = (long_side(batch), shape.block);
                let omega = gaussian_f32(opts.seed, l, b);
                per_matrix(batch, |w| spectrum_one(w, kk, &omega, b, shape.depth))
            }
        }
    }

    fn gemm(
        &self,
        a: MatrixRef<'_>,
        b: MatrixRef<'_>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Matrix, ComputeError> {
        let (rows, cols) = gemm_shape(a, b, trans_a, trans_b)?;
        if rows * cols == 0 {
            return Ok(Matrix::zeros(rows, cols));
        }
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
        mask::magnitude_mask(&CpuMasks, w, sparsity, pattern)
    }

    fn global_threshold(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<f32, ComputeError> {
        mask::global_threshold(&CpuMasks, batch, sparsity)
    }

    fn global_magnitude_masks(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<Vec<MaskResult>, ComputeError> {
        mask::global_masks(&CpuMasks, batch, sparsity)
    }

    fn full_spectrum(&self, w: MatrixRef<'_>) -> Result<Vec<f32>, ComputeError> {
        let (m, n) = w.shape();
        if m == 0 || n == 0 {
            return Ok(Vec::new());
        }
        check_finite(w, 0)?;
        let g = if m >= n {
            super::dense::gram(w.data(), m, n)
        } else {
            super::dense::gram(w.to_matrix().transpose().data(), n, m)
        };
        gram_singular_values(&g, m.min(n))
    }

    fn row_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        mask::norms(mask::row_sq_norms(w))
    }

    fn col_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        mask::norms(mask::col_sq_norms(w))
    }
}
