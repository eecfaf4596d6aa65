//! Magnitude masks, exact thresholds (radix select on the bits of `|w|`) and norms.
//!
//! For finite `f32`, `|w|`'s bit pattern (sign cleared) orders exactly like `|w|`, so the k-th
//! largest magnitude is found with two 16-bit histogram passes: exact, O(n), deterministic, and
//! the same scheme a GPU runs as histogram shaders.

use rayon::prelude::*;

use super::{ComputeError, MaskPattern, MaskResult, Matrix, MatrixRef};

/// Elements per histogram task.
const HIST_CHUNK: usize = 1 << 20;

fn mag_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// Histogram of `(bits >> shift) & 0xffff` over the elements whose `bits >> 16 == prefix`
/// (or over all elements when `prefix` is `None`), summed over all slices.
fn histogram(slices: &[&[f32]], shift: u32, prefix: Option<u32>) -> Vec<u64> {
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

/// Bits of the `keep`-th largest magnitude over `slices` and the number of elements strictly
/// above it. `keep` must be in `1..=total`.
fn kth_largest_bits(slices: &[&[f32]], keep: u64) -> (u32, u64) {
    let h = histogram(slices, 16, None);
    let (hi, above_hi) = find_bin(&h, keep);
    let h = histogram(slices, 0, Some(hi));
    let (lo, above_lo) = find_bin(&h, keep - above_hi);
    ((hi << 16) | lo, above_hi + above_lo)
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

/// Global threshold (see `Backend::global_threshold`); inputs already validated.
pub(crate) fn global_threshold(batch: &[MatrixRef<'_>], sparsity: f32) -> f32 {
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    if keep == 0 {
        return f32::INFINITY;
    }
    f32::from_bits(kth_largest_bits(&slices, keep as u64).0)
}

/// Exact-count unstructured masks over several matrices with one threshold; ties keep the
/// lower (matrix, element) index. Inputs already validated.
pub(crate) fn global_masks(batch: &[MatrixRef<'_>], sparsity: f32) -> Vec<MaskResult> {
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    let (t, above) = if keep == 0 {
        (u32::MAX, 0)
    } else {
        kth_largest_bits(&slices, keep as u64)
    };
    // Ties at the threshold are granted in (matrix, element) order.
    let mut ties_left = keep as u64 - above;
    batch
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
        .collect()
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

/// A magnitude mask of one matrix; inputs already validated (finite, sparsity in range for
/// the patterns that use it).
pub(crate) fn magnitude_mask(
    w: MatrixRef<'_>,
    sparsity: f32,
    pattern: MaskPattern,
) -> Result<MaskResult, ComputeError> {
    let (rows, cols) = w.shape();
    match pattern {
        MaskPattern::Unstructured => {
            check_sparsity(sparsity)?;
            Ok(global_masks(&[w], sparsity).remove(0))
        }
        MaskPattern::NM { n, m } => {
            if m == 0 || n > m {
                return Err(ComputeError::InvalidPattern(format!(
                    "N:M needs 0 < m and n <= m, got {n}:{m}"
                )));
            }
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
            Ok(apply(w, mask))
        }
        MaskPattern::Rows | MaskPattern::Cols => {
            check_sparsity(sparsity)?;
            let by_rows = pattern == MaskPattern::Rows;
            let norms = if by_rows {
                row_sq_norms(w)
            } else {
                col_sq_norms(w)
            };
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
