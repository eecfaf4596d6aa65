//! Magnitude masks, thresholds and norms on the GPU, identical to the CPU backend's.
//!
//! - Thresholds (unstructured masks, global thresholds and masks): the exact radix select of
//!   the CPU (two 16-bit histogram passes over the sign-cleared bits of `w`,
//!   shaders/histogram.wgsl, integer atomics), the bins walked on the CPU; the mask is then
//!   applied on the host, where the data already is, granting ties at the threshold in
//!   row-major (matrix, element) order — the CPU's rule, so masks are identical.
//! - N:M (shaders/nm_mask.wgsl): one invocation per (group, column) ranks its group by bits,
//!   ties to the lower row; groups up to 32 long (longer ones run on the CPU).
//! - Rows / columns: squared norms accumulated in `f64` in the CPU's order
//!   (shaders/norms.wgsl), bit-identical to the CPU's; the ordering (ties: higher index
//!   first) on the CPU. Without `f64` shaders the norms are computed on the CPU.

use super::device::{Ctx, GpuResult, Kernel, Session};
use crate::compute::{ComputeError, MaskPattern, MaskResult, Matrix, MatrixRef};

/// Longest N:M group the shader handles (one bit per row of a group in a u32).
const MAX_NM_GROUP: usize = 32;
/// Workgroups of one histogram dispatch (each invocation strides over the rest).
const HIST_GROUPS: u64 = 1024;

fn mag_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// `total − round(sparsity · total)`, the count kept (see [`MaskPattern`]).
pub(super) fn keep_count(total: usize, sparsity: f32) -> usize {
    let prune = ((sparsity as f64) * total as f64).round() as usize;
    total - prune.min(total)
}

/// `(bin, count above it)` for the bin holding the `keep`-th largest element.
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

/// Pieces of the data no larger than a binding.
fn chunks<'a>(ctx: &Ctx, slices: &[&'a [f32]]) -> Vec<&'a [f32]> {
    let lim = (ctx.binding_limit / 4).max(1) as usize;
    slices
        .iter()
        .flat_map(|s| s.chunks(lim))
        .filter(|c| !c.is_empty())
        .collect()
}

/// Histograms of the bits of `|x|` over `pieces`: pass 1 (`prefix` `None`) of `bits >> 16`,
/// pass 2 of `bits & 0xffff` where `bits >> 16 == prefix`.
fn histogram(
    ctx: &Ctx,
    pieces: &[&[f32]],
    resident: &[Option<wgpu::Buffer>],
    prefix: Option<u32>,
) -> GpuResult<Vec<u64>> {
    let hist = ctx.fixed_buffer(65536 * 4, "histogram")?;
    let mut total = vec![0u64; 65536];
    let mut s = Session::new(ctx);
    s.clear(&hist);
    let mut pending = 0u64;
    for (i, piece) in pieces.iter().enumerate() {
        let len = piece.len() as u64;
        if pending + len > u32::MAX as u64 {
            // Counts are u32 on the device: fold them into u64 before they could overflow.
            let h: Vec<u32> = s.read(&hist, 0, 65536)?;
            for (t, v) in total.iter_mut().zip(h) {
                *t += v as u64;
            }
            s.clear(&hist);
            pending = 0;
        }
        let owned;
        let buf = match &resident[i] {
            Some(b) => b,
            None => {
                owned = ctx.upload(&[*piece], "mask data")?;
                &owned
            }
        };
        let params = [
            0,
            len as u32,
            if prefix.is_some() { 0 } else { 16 },
            prefix.is_some() as u32,
            prefix.unwrap_or(0),
            0,
            0,
            0,
        ];
        let (x, y) = ctx.grid(len.div_ceil(256).min(HIST_GROUPS))?;
        s.dispatch(Kernel::Histogram, &params, &[buf, &hist], (x, y, 1))?;
        if resident[i].is_none() {
            // Not kept: submit now, so that at most one piece is resident.
            s.flush()?;
        }
        pending += len;
    }
    let h: Vec<u32> = s.read(&hist, 0, 65536)?;
    for (t, v) in total.iter_mut().zip(h) {
        *t += v as u64;
    }
    Ok(total)
}

/// Bits of the `keep`-th largest magnitude over `slices` and the count strictly above it
/// (`1 ≤ keep ≤ total`).
fn kth_largest_bits(ctx: &Ctx, slices: &[&[f32]], keep: u64) -> GpuResult<(u32, u64)> {
    ctx.run(|| kth_largest_section(ctx, slices, keep))
}

fn kth_largest_section(ctx: &Ctx, slices: &[&[f32]], keep: u64) -> GpuResult<(u32, u64)> {
    let pieces = chunks(ctx, slices);
    let bytes: u64 = pieces.iter().map(|p| p.len() as u64 * 4).sum();
    // Keep the data resident between the two passes when it fits the budget.
    let resident: Vec<Option<wgpu::Buffer>> = if bytes <= ctx.budget {
        pieces
            .iter()
            .map(|p| ctx.upload(&[*p], "mask data").map(Some))
            .collect::<GpuResult<_>>()?
    } else {
        vec![None; pieces.len()]
    };
    let h = histogram(ctx, &pieces, &resident, None)?;
    let (hi, above_hi) = find_bin(&h, keep);
    let h = histogram(ctx, &pieces, &resident, Some(hi))?;
    let (lo, above_lo) = find_bin(&h, keep - above_hi);
    Ok(((hi << 16) | lo, above_hi + above_lo))
}

/// The global threshold (see `Backend::global_threshold`); inputs validated.
pub(super) fn global_threshold(
    ctx: &Ctx,
    batch: &[MatrixRef<'_>],
    sparsity: f32,
) -> GpuResult<f32> {
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    if keep == 0 {
        return Ok(f32::INFINITY);
    }
    Ok(f32::from_bits(
        kth_largest_bits(ctx, &slices, keep as u64)?.0,
    ))
}

fn apply(w: MatrixRef<'_>, mask: Vec<bool>) -> GpuResult<MaskResult> {
    let data: Vec<f32> = w
        .data()
        .iter()
        .zip(&mask)
        .map(|(&x, &k)| if k { x } else { 0.0 })
        .collect();
    let kept = mask.iter().filter(|&&k| k).count();
    Ok(MaskResult {
        mask,
        masked: Matrix::new(w.rows(), w.cols(), data)?,
        kept,
    })
}

/// Exact-count unstructured masks under one threshold (see
/// `Backend::global_magnitude_masks`); inputs validated.
pub(super) fn global_masks(
    ctx: &Ctx,
    batch: &[MatrixRef<'_>],
    sparsity: f32,
) -> GpuResult<Vec<MaskResult>> {
    let slices: Vec<&[f32]> = batch.iter().map(|w| w.data()).collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let keep = keep_count(total, sparsity);
    let (t, above) = if keep == 0 {
        (u32::MAX, 0)
    } else {
        kth_largest_bits(ctx, &slices, keep as u64)?
    };
    let mut ties_left = keep as u64 - above;
    batch
        .iter()
        .map(|w| {
            let mask: Vec<bool> = w
                .data()
                .iter()
                .map(|&x| {
                    let b = mag_bits(x);
                    if keep == 0 {
                        false
                    } else if b > t {
                        true
                    } else if b == t && ties_left > 0 {
                        ties_left -= 1;
                        true
                    } else {
                        false
                    }
                })
                .collect();
            apply(*w, mask)
        })
        .collect()
}

/// N:M mask on the device; `None` where the shader cannot take it (group longer than 32,
/// or `m` rows of one column group larger than a binding).
fn nm_mask(ctx: &Ctx, w: MatrixRef<'_>, n: usize, m: usize) -> GpuResult<Option<Vec<bool>>> {
    ctx.run(|| nm_mask_section(ctx, w, n, m))
}

fn nm_mask_section(
    ctx: &Ctx,
    w: MatrixRef<'_>,
    n: usize,
    m: usize,
) -> GpuResult<Option<Vec<bool>>> {
    let (rows, cols) = w.shape();
    if m > MAX_NM_GROUP {
        return Ok(None);
    }
    let mut mask = vec![false; rows * cols];
    if rows == 0 || cols == 0 {
        return Ok(Some(mask));
    }
    let lim = (ctx.binding_limit / 4) as usize;
    let chunk_rows = (lim / cols / m) * m;
    if chunk_rows == 0 {
        return Ok(None);
    }
    let data = w.data();
    let mut r0 = 0usize;
    while r0 < rows {
        let nrows = chunk_rows.min(rows - r0);
        let groups = nrows.div_ceil(m);
        let input = ctx.upload(&[&data[r0 * cols..(r0 + nrows) * cols]], "N:M input")?;
        let out = ctx.buffer((groups * cols * 4) as u64, "N:M bits")?;
        let mut s = Session::new(ctx);
        let params = [
            nrows as u32,
            cols as u32,
            n as u32,
            m as u32,
            0,
            groups as u32,
            0,
            0,
        ];
        let (x, y) = ctx.grid(((groups * cols) as u64).div_ceil(256))?;
        s.dispatch(Kernel::NmMask, &params, &[&input, &out], (x, y, 1))?;
        let bits: Vec<u32> = s.read(&out, 0, (groups * cols) as u64)?;
        for g in 0..groups {
            for j in 0..cols {
                let word = bits[g * cols + j];
                for t in 0..m {
                    if word >> t & 1 == 1 {
                        mask[(r0 + g * m + t) * cols + j] = true;
                    }
                }
            }
        }
        r0 += nrows;
    }
    Ok(Some(mask))
}

/// Squared L2 norms of the rows (`rows`) or columns of `w` in `f64`, bit-identical to the
/// CPU's (needs `ctx.f64`).
pub(super) fn sq_norms(ctx: &Ctx, w: MatrixRef<'_>, rows_not_cols: bool) -> GpuResult<Vec<f64>> {
    ctx.run(|| sq_norms_section(ctx, w, rows_not_cols))
}

fn sq_norms_section(ctx: &Ctx, w: MatrixRef<'_>, rows_not_cols: bool) -> GpuResult<Vec<f64>> {
    let (rows, cols) = w.shape();
    let len = if rows_not_cols { rows } else { cols };
    if cols == 0 || rows == 0 {
        return Ok(vec![0.0; len]);
    }
    let lim = (ctx.binding_limit / 4) as usize;
    let chunk_rows = (lim / cols).max(1);
    if cols > lim {
        return Err(ComputeError::Device(format!(
            "a row of {cols} elements does not fit the binding limit"
        )));
    }
    let out = ctx.buffer((len * 8) as u64, "norms")?;
    let mut s = Session::new(ctx);
    s.clear(&out);
    let data = w.data();
    let mut r0 = 0usize;
    while r0 < rows {
        let nrows = chunk_rows.min(rows - r0);
        let input = ctx.upload(&[&data[r0 * cols..(r0 + nrows) * cols]], "norm input")?;
        let params = [nrows as u32, cols as u32, 0, r0 as u32];
        let (kernel, threads) = if rows_not_cols {
            (Kernel::RowSq, nrows)
        } else {
            (Kernel::ColSq, cols)
        };
        let (x, y) = ctx.grid((threads as u64).div_ceil(64))?;
        s.dispatch(kernel, &params, &[&input, &out], (x, y, 1))?;
        // Column sums continue across chunks; keep at most one chunk resident.
        s.flush()?;
        r0 += nrows;
    }
    s.read(&out, 0, len as u64)
}

/// A magnitude mask of one matrix (see `Backend::magnitude_mask`); `w` validated finite.
pub(super) fn magnitude_mask(
    ctx: &Ctx,
    w: MatrixRef<'_>,
    sparsity: f32,
    pattern: MaskPattern,
) -> GpuResult<MaskResult> {
    let (rows, cols) = w.shape();
    match pattern {
        MaskPattern::Unstructured => {
            check_sparsity(sparsity)?;
            Ok(global_masks(ctx, &[w], sparsity)?.remove(0))
        }
        MaskPattern::NM { n, m } => {
            if m == 0 || n > m {
                return Err(ComputeError::InvalidPattern(format!(
                    "N:M needs 0 < m and n <= m, got {n}:{m}"
                )));
            }
            match nm_mask(ctx, w, n, m)? {
                Some(mask) => apply(w, mask),
                None => crate::compute::mask::magnitude_mask(w, sparsity, pattern),
            }
        }
        MaskPattern::Rows | MaskPattern::Cols => {
            check_sparsity(sparsity)?;
            let by_rows = pattern == MaskPattern::Rows;
            let norms = if ctx.f64 {
                sq_norms(ctx, w, by_rows)?
            } else if by_rows {
                crate::compute::mask::row_sq_norms(w)
            } else {
                crate::compute::mask::col_sq_norms(w)
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
            let c = cols.max(1);
            let mask: Vec<bool> = (0..rows * cols)
                .map(|e| if by_rows { keep[e / c] } else { keep[e % c] })
                .collect();
            apply(w, mask)
        }
    }
}

pub(super) fn check_sparsity(s: f32) -> GpuResult<()> {
    crate::compute::mask::check_sparsity(s)
}
