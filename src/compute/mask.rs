//! Magnitude masks, exact thresholds (radix select on the bits of `|w|`) and norms.
//!
//! For finite `f32`, `|w|`'s bit pattern (sign cleared) orders exactly like `|w|`, so the k-th
//! largest magnitude is found with two 16-bit histogram passes: exact, O(n), deterministic, and
//! the same scheme a GPU runs as histogram shaders.
//!
//! Every backend shares this module's rules — validation, counts, tie-breaking, applying a
//! mask — and supplies only the data-parallel steps ([`MaskKernels`]: histograms, N:M groups,
//! squared norms), so masks are identical across backends by construction.

use rayon::prelude::*;

use super::check::{check_all_finite, check_finite};
use super::{ComputeError, MaskPattern, MaskResult, Matrix, MatrixRef};

/// Elements per histogram task.
const HIST_CHUNK: usize = 1 << 20;

/// The steps of masks and thresholds that a backend may run on its device. Each must return
/// exactly what [`CpuMasks`] returns.
pub(crate) trait MaskKernels {
    /// Bits of the `keep`-th largest magnitude over `slices` and the number of elements
    /// strictly above it (`1 ≤ keep ≤ total`; see [`radix_select`]).
    fn kth_largest_bits(&self, slices: &[&[f32]], keep: u64) -> Result<(u32, u64), ComputeError>;

    /// The N:M mask of `w` along the rows (pattern validated: `0 < m`, `n ≤ m`).
    fn nm_mask(&self, w: MatrixRef<'_>, n: usize, m: usize) -> Result<Vec<bool>, ComputeError>;

    /// Squared L2 norms of the rows (`rows`) or columns of `w`, in `f64`, summed in the order of
    /// [`row_sq_norms`] / [`col_sq_norms`].
    fn sq_norms(&self, w: MatrixRef<'_>, rows: bool) -> Result<Vec<f64>, ComputeError>;
}

/// The host implementation of [`MaskKernels`] (rayon).
pub(crate) struct CpuMasks;

impl MaskKernels for CpuMasks {
    fn kth_largest_bits(&self, slices: &[&[f32]], keep: u64) -> Result<(u32, u64), ComputeError> {
        radix_select(keep, |prefix| Ok(histogram(slices, prefix)))
    }

    fn nm_mask(&self, w: MatrixRef<'_>, n: usize, m: usize) -> Result<Vec<bool>, ComputeError> {
        let (rows, cols) = w.shape();
        let data = w.data();
        let mut mask = vec![false; data.len()];
        let mut idx: Vec<usize> = Vec::with_capacity(m.min(rows));
        for j in 0..cols {
            for g0 in (0..rows).step_by(m) {
                idx.clear();
                idx.extend(g0..g0.saturating_add(m).min(rows));
                // Largest magnitude first; ties: lower row first.
                idx.sort_by(|&a, &b| {
                    mag_bits(data[b * cols + j])
                        .cmp(&mag_bits(data[a * cols + j]))
                        .then(a.cmp(&b))
                });
                for &i in idx.iter().take(n) {
                    mask[i * cols + j] = true;
                }
            }
        }
        Ok(mask)
    }

    fn sq_norms(&self, w: MatrixRef<'_>, rows: bool) -> Result<Vec<f64>, ComputeError> {
        Ok(if rows {
            row_sq_norms(w)
        } else {
            col_sq_norms(w)
        })
    }
}

/// `|x|` as bits (sign cleared): for finite `x` these order exactly like `|x|`.
pub(crate) fn mag_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Histogram over all slices of the magnitude bits: pass 1 (`prefix` `None`) counts
/// `bits >> 16` over all elements, pass 2 counts `bits & 0xffff` over the elements whose
/// `bits >> 16 == prefix`.
fn histogram(slices: &[&[f32]], prefix: Option<u32>) -> Vec<u64> {
    let shift = if prefix.is_some() { 0 } else { 16 };
    let tasks: Vec<&[f32]> = slices.iter().flat_map(|s| s.chunks(HIST_CHUNK)).collect();
    let parts: Vec<Vec<u64>> = tasks
        .par_iter()
        .map(|chunk| {
            let mut h = vec![0u64; 1 << 16];
            for &x in chunk.iter() {
                let b = mag_bits(x);
                if prefix.is_none_or(|p| b >> 16 == p) {
                    h[((b >> shift) & 0xffff) as usize] += 1;
                }
            }
            h
        })
        .collect();
    let mut h = vec![0u64; 1 << 16];
    for p in parts {
        for (a, b) in h.iter_mut().zip(p) {
            *a += b;
        }
    }
    h
}

/// Walks a histogram from the top bin down; returns `(bin, count above bin)` for the bin that
/// holds the `keep`-th largest element (`1 ≤ keep ≤ total`).
fn find_bin(h: &[u64], keep: u64) -> (u32, u64) {
    let mut above = 0u64;
    for bin in (0..h.len()).rev() {
        if above + h[bin] >= keep {
            return (bin as u32, above);
        }
        above += h[bin];
    }
    (0, above)
}

/// The exact radix select: bits of the `keep`-th largest magnitude and the number of elements
/// strictly above it, from the two 16-bit histogram passes `hist(None)` (high halves) and
/// `hist(Some(high half))` (low halves within that bin), as [`histogram`] computes them.
/// `keep` must be in `1..=total`.
pub(crate) fn radix_select(
    keep: u64,
    mut hist: impl FnMut(Option<u32>) -> Result<Vec<u64>, ComputeError>,
) -> Result<(u32, u64), ComputeError> {
    let h = hist(None)?;
    let (hi, above_hi) = find_bin(&h, keep);
    let h = hist(Some(hi))?;
    let (lo, above_lo) = find_bin(&h, keep - above_hi);
    Ok(((hi << 16) | lo, above_hi + above_lo))
}

pub(crate) fn check_sparsity(s: f32) -> Result<(), ComputeError> {
    if (0.0..=1.0).contains(&s) {
        Ok(())
    } else {
        Err(ComputeError::InvalidSparsity(s))
    }
}

/// Number kept out of `total` for a sparsity: `total − round(sparsity · total)`.
fn keep_count(total: usize, sparsity: f32) -> usize {
    let prune = ((sparsity as f64) * total as f64).round() as usize;
    total - prune.min(total)
}

/// `Backend::global_threshold`: validation, then the radix select of `kernels`.
pub(crate) fn global_threshold(
    kernels: &impl MaskKernels,
    batch: &[MatrixRef<'_>],
    sparsity: f32,
) -> Result<f32, ComputeError> {
    check_sparsity(sparsity)?;
    check_all_finite(batch)?;
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    if keep == 0 {
        return Ok(f32::INFINITY);
    }
    Ok(f32::from_bits(
        kernels.kth_largest_bits(&slices, keep as u64)?.0,
    ))
}

/// `Backend::global_magnitude_masks`: validation, then [`unstructured`].
pub(crate) fn global_masks(
    kernels: &impl MaskKernels,
    batch: &[MatrixRef<'_>],
    sparsity: f32,
) -> Result<Vec<MaskResult>, ComputeError> {
    check_sparsity(sparsity)?;
    check_all_finite(batch)?;
    unstructured(kernels, batch, sparsity)
}

/// Exact-count unstructured masks over several matrices with one threshold; ties keep the
/// lower (matrix, element) index. Inputs already validated.
fn unstructured(
    kernels: &impl MaskKernels,
    batch: &[MatrixRef<'_>],
    sparsity: f32,
) -> Result<Vec<MaskResult>, ComputeError> {
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    let (t, above) = if keep == 0 {
        (u32::MAX, 0)
    } else {
        kernels.kth_largest_bits(&slices, keep as u64)?
    };
    // Ties at the threshold are granted in (matrix, element) order.
    let mut ties_left = keep as u64 - above;
    Ok(batch
        .iter()
        .map(|w| {
            let mut mask = Vec::with_capacity(w.data().len());
            for &x in w.data() {
                let b = mag_bits(x);
                let k = if keep == 0 {
                    false
                } else if b > t {
                    true
                } else if b == t && ties_left > 0 {
                    ties_left -= 1;
                    true
                } else {
                    false
                };
                mask.push(k);
            }
            apply(*w, mask)
        })
        .collect())
}

fn apply(w: MatrixRef<'_>, mask: Vec<bool>) -> MaskResult {
    let data: Vec<f32> = w
        .data()
        .iter()
        .zip(&mask)
        .map(|(&x, &k)| if k { x } else { 0.0 })
        .collect();
    let kept = mask.iter().filter(|&&k| k).count();
    MaskResult {
        mask,
        masked: Matrix {
            rows: w.rows(),
            cols: w.cols(),
            data,
        },
        kept,
    }
}

/// `Backend::magnitude_mask`: validation (finiteness first, then the pattern's arguments),
/// then the pattern's rule with the steps of `kernels`.
pub(crate) fn magnitude_mask(
    kernels: &impl MaskKernels,
    w: MatrixRef<'_>,
    sparsity: f32,
    pattern: MaskPattern,
) -> Result<MaskResult, ComputeError> {
    check_finite(w, 0)?;
    let (rows, cols) = w.shape();
    match pattern {
        MaskPattern::Unstructured => {
            check_sparsity(sparsity)?;
            Ok(unstructured(kernels, &[w], sparsity)?.remove(0))
        }
        MaskPattern::NM { n, m } => {
            if m == 0 || n > m {
                return Err(ComputeError::InvalidPattern(format!(
                    "N:M needs 0 < m and n <= m, got {n}:{m}"
                )));
            }
            Ok(apply(w, kernels.nm_mask(w, n, m)?))
        }
        MaskPattern::Rows | MaskPattern::Cols => {
            check_sparsity(sparsity)?;
            let by_rows = pattern == MaskPattern::Rows;
            let norms = kernels.sq_norms(w, by_rows)?;
            let count = norms.len();
            let prune = count - keep_count(count, sparsity);
            let mut order: Vec<usize> = (0..count).collect();
            // Smallest norm first; ties: higher index first.
            order.sort_by(|&a, &b| norms[a].total_cmp(&norms[b]).then(b.cmp(&a)));
            let mut keep = vec![true; count];
            for &i in order.iter().take(prune) {
                keep[i] = false;
            }
            let mask: Vec<bool> = (0..rows * cols)
                .map(|e| {
                    if by_rows {
                        keep[e / cols.max(1)]
                    } else {
                        keep[e % cols.max(1)]
                    }
                })
                .collect();
            Ok(apply(w, mask))
        }
    }
}

/// L2 norms from squared norms (`Backend::row_norms` / `col_norms`).
pub(crate) fn norms(sq: Vec<f64>) -> Vec<f32> {
    sq.into_iter().map(|s| s.sqrt() as f32).collect()
}

/// Squared L2 norms of the rows, in `f64`.
pub(crate) fn row_sq_norms(w: MatrixRef<'_>) -> Vec<f64> {
    let cols = w.cols();
    if cols == 0 {
        return vec![0.0; w.rows()];
    }
    w.data()
        .par_chunks(cols)
        .map(|row| row.iter().map(|&x| (x as f64) * (x as f64)).sum())
        .collect()
}

/// Squared L2 norms of the columns, in `f64` (rows summed in order).
pub(crate) fn col_sq_norms(w: MatrixRef<'_>) -> Vec<f64> {
    let cols = w.cols();
    let mut acc = vec![0.0f64; cols];
    if cols == 0 {
        return acc;
    }
    for row in w.data().chunks(cols) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += (x as f64) * (x as f64);
        }
    }
    acc
}
