//! Validation of caller input shared by every backend, so that all of them report the same
//! errors in the same order.

use rayon::prelude::*;

use super::{ComputeError, MatrixRef, SvdOptions};

/// Elements checked per task for NaN/Inf.
const FINITE_CHUNK: usize = 1 << 16;

/// The first non-finite element of `w` (as an error naming batch index `index`), if any.
pub(crate) fn check_finite(w: MatrixRef<'_>, index: usize) -> Result<(), ComputeError> {
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

/// [`check_finite`] for every matrix of `batch`, in order.
pub(crate) fn check_all_finite(batch: &[MatrixRef<'_>]) -> Result<(), ComputeError> {
    for (i, w) in batch.iter().enumerate() {
        check_finite(*w, i)?;
    }
    Ok(())
}

/// Checks a batch: one shape for all, then all finite. Returns the shape (`None` for an empty
/// batch).
pub(crate) fn check_batch(batch: &[MatrixRef<'_>]) -> Result<Option<(usize, usize)>, ComputeError> {
    let shape = check_shapes(batch)?;
    check_all_finite(batch)?;
    Ok(shape)
}

/// The shape check of [`check_batch`] alone (for a backend that checks finiteness while it
/// reads the data anyway, and keeps [`check_batch`]'s error order).
pub(crate) fn check_shapes(
    batch: &[MatrixRef<'_>],
) -> Result<Option<(usize, usize)>, ComputeError> {
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
    Ok(Some(shape))
}

/// A rank in `1..=min(rows, cols)`.
pub(crate) fn check_rank(rank: usize, (rows, cols): (usize, usize)) -> Result<(), ComputeError> {
    if rank == 0 || rank > rows.min(cols) {
        return Err(ComputeError::InvalidRank { rank, rows, cols });
    }
    Ok(())
}

/// The shape `(rows, cols)` of `op(a) · op(b)`; errors if the inner dimensions differ or the
/// output size overflows.
pub(crate) fn gemm_shape(
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    trans_a: bool,
    trans_b: bool,
) -> Result<(usize, usize), ComputeError> {
    let op = |x: MatrixRef<'_>, t: bool| if t { (x.cols(), x.rows()) } else { x.shape() };
    let ((rows, inner), (br, cols)) = (op(a, trans_a), op(b, trans_b));
    if inner != br {
        return Err(ComputeError::ShapeMismatch {
            what: "gemm: rows of op(b) must equal columns of op(a)",
            index: 1,
            expected: (inner, cols),
            found: (br, cols),
        });
    }
    rows.checked_mul(cols).ok_or(ComputeError::DataLength {
        rows,
        cols,
        len: 0,
        expected: usize::MAX,
    })?;
    Ok((rows, cols))
}

/// An error-mapping closure that attributes a numerical failure to batch index `index`.
pub(crate) fn numerical(index: usize) -> impl Fn(String) -> ComputeError {
    move |reason| ComputeError::Numerical { index, reason }
}

/// Whether a matrix of this shape is factorized exactly rather than sketched with `k` columns
/// (see [`SvdOptions::exact_below`]).
pub(crate) fn use_exact((m, n): (usize, usize), k: usize, opts: &SvdOptions) -> bool {
    let p = m.min(n);
    p <= opts.exact_below || k >= p
}
