//! Magnitude masks, thresholds and norms on the GPU, identical to the CPU backend's: the rules
//! (validation, counts, tie-breaking, applying the mask) are `compute::mask`'s, shared with the
//! CPU; this module supplies its data-parallel steps ([`MaskKernels`] for [`Ctx`]).
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
use crate::compute::mask::{radix_select, CpuMasks, MaskKernels};
use crate::compute::{ComputeError, MatrixRef};

/// Longest N:M group the shader handles (one bit per row of a group in a u32).
const MAX_NM_GROUP: usize = 32;
/// Workgroups of one histogram dispatch (each invocation strides over the rest).
const HIST_GROUPS: u64 = 1024;

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

/// The radix select of [`MaskKernels::kth_largest_bits`] with device histograms (one device
/// section).
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
    radix_select(keep, |prefix| histogram(ctx, &pieces, &resident, prefix))
}

/// N:M mask on the device (one device section); `None` where the shader cannot take it
/// (group longer than 32, or `m` rows of one column group larger than a binding).
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

/// Squared L2 norms of the rows (`rows_not_cols`) or columns of `w` in `f64`, bit-identical to
/// the CPU's (one device section; needs `ctx.f64`).
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

impl MaskKernels for Ctx {
    fn kth_largest_bits(&self, slices: &[&[f32]], keep: u64) -> GpuResult<(u32, u64)> {
        self.run(|| kth_largest_section(self, slices, keep))
    }

    /// On the device where the shader takes the pattern, else on the CPU.
    fn nm_mask(&self, w: MatrixRef<'_>, n: usize, m: usize) -> GpuResult<Vec<bool>> {
        match self.run(|| nm_mask_section(self, w, n, m))? {
            Some(mask) => Ok(mask),
            None => CpuMasks.nm_mask(w, n, m),
        }
    }

    /// On the device with `f64` shaders, else on the CPU.
    fn sq_norms(&self, w: MatrixRef<'_>, rows: bool) -> GpuResult<Vec<f64>> {
        if self.f64 {
            self.run(|| sq_norms_section(self, w, rows))
        } else {
            CpuMasks.sq_norms(w, rows)
        }
    }
}
