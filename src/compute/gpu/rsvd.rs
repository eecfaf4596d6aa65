//! Randomized SVD, spectra and the Gram-eigendecomposition path on the GPU.
//!
//! The algorithm is the CPU backend's (see `compute::rsvd`): the matrix short side first (a
//! tall group is uploaded by blocks of its rows and transposed on the device,
//! shaders/transpose.wgsl, so that everything below runs on `A = Wᵀ` and the m side of this
//! file is the short side), the same Ω (from `rng::gaussian_f32` and the seed), the same
//! block Krylov basis (block width, depth, two block Gram–Schmidt projections with a
//! Cholesky-QR2 orthonormalisation after each). What runs where:
//! - on the GPU, in `f32`: `W·X`, `Wᵀ·X`, `Y·R⁻¹`, the projections `Y −= Qⱼ·(Qⱼᵀ·Y)`, `Q·U_B`
//!   (the GEMM of gemm.wgsl, batched over the matrices of a group);
//! - on the GPU, accumulated in `f64` where the adapter has `SHADER_F64`: the Gram matrices
//!   `YᵀY` of Cholesky-QR (else in `f32`, with the check described at `Group::orth`), the Gram of
//!   the short side and the long-side products of the Gram path (else in `f32`);
//! - on the GPU, the Grams of the small problems (`B·Bᵀ` from `Bᵀ`, and the Gram path's short
//!   side without `f64` GEMMs): in `f64` where the adapter runs it fast (`Ctx::f64_gram`,
//!   shaders/gram64.wgsl), else in double-`f32` (shaders/gram2.wgsl);
//! - on the CPU, in `f64`: the `k × k` Cholesky factorizations and triangular inverses, the SVD
//!   of `Bᵀ` (`n × k`), the eigendecompositions of the Gram path.
//!
//! Each matrix is uploaded once and stays resident for its whole factorization; only `k × k`
//! Grams, `Bᵀ` and the final factors come back. Same-shape matrices are processed in groups
//! that fit the memory budget; a matrix larger than a storage binding is split into blocks of
//! rows (every m-side buffer follows the same blocks, and products over m accumulate the blocks
//! in order).

use rayon::prelude::*;

use super::device::{device_err, Ctx, GpuResult, Kernel, Session};
use super::gemm::{record, Gemm, Operand, Output};
use crate::compute::dense::{cholesky_upper, inv_upper, to_f64};
use crate::compute::rng::gaussian_f32;
use crate::compute::rsvd::{
    finish, finish_seq, gram_factors, gram_one, gram_singular_values, max_dev_from_identity,
    per_matrix, shifted_cholesky, small_svd, svd_basis, top_eigen_seq, transpose_rm, KrylovShape,
    Orth, MAX_PASSES, MAX_REORTH, ONE_PASS_KAPPA, REORTH_KEEP, RESTART_SEED,
};
use crate::compute::{ComputeError, Factors, MatrixRef, SvdOptions};

/// Cholesky-QR passes with `f32` Grams (one more than the CPU's `MAX_PASSES` with `f64` ones:
/// the last one only checks).
const MAX_PASSES_F32: usize = MAX_PASSES + 1;
/// With `f32` Grams, a basis counts as orthonormal when `max |QᵀQ − I|` is below this.
const F32_ORTH_TOL: f64 = 1e-4;
/// Most matrices per group (keeps `batch · splits` within the dispatch limit).
const MAX_GROUP: usize = 1024;
/// Largest condition number of R (bounded by [`frobenius_condition`]) for which a
/// power-iteration iterate takes a single Cholesky-QR pass (the CPU's `Orth::Iterate`) with
/// `f32` Grams; with `f64` Grams it is the CPU's `ONE_PASS_KAPPA`.
const ONE_PASS_KAPPA_F32: f64 = 1e2;

/// Cholesky-QR passes recorded for one orthonormalisation on the resident path (a pass whose
/// matrix is already done multiplies by the identity); a matrix that needs more is flagged
/// and redone on the careful path. The first block: two passes and a checking Gram with
/// `f32` Grams (two with `f64`) …
const RESIDENT_PASSES: usize = 3;
/// … a projected iterate (κ within the single-pass bound): one pass, and one to spare …
const ITERATE_PASSES: usize = 2;
/// … and the same iterate projected again, nearly orthonormal: a checking Gram, or one pass
/// and the check.
const REPROJECTED_PASSES: usize = 2;
/// Pivots of the on-device Cholesky must exceed this fraction of the Gram's diagonal entry
/// with `f64` Grams (the CPU's `cholesky_upper` test) …
const PIVOT_F64: f32 = 1e-14;
/// … and this one with `f32` Grams (16 units of `f32` roundoff: below it a pivot is noise).
const PIVOT_F32: f32 = 16.0 * f32::EPSILON;
/// Flags of `shaders/chol.wgsl`'s state: the shifted Cholesky failed, not orthonormal after
/// the last recorded pass, a projected iterate lost too much of a column.
const FLAG_FALLBACK: u32 = 1;
const FLAG_UNFINISHED: u32 = 2;
const FLAG_LOST: u32 = 4;

/// Row blocks `(first row, rows)` of `m` rows with at most `rows` each.
fn blocks(m: usize, rows: usize) -> Vec<(usize, usize)> {
    let rows = rows.max(1);
    (0..m.div_ceil(rows))
        .map(|i| (i * rows, rows.min(m - i * rows)))
        .collect()
}

/// How a batch of same-shape matrices is processed: `g` matrices at a time, their rows in
/// `blocks`.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) g: usize,
    pub(super) blocks: Vec<(usize, usize)>,
}

/// Sizes that decide a [`Plan`] (bytes).
pub(super) struct Needs {
    /// Largest bytes per row of one matrix over the m-side buffers (W, Y, Q, U, …).
    pub(super) row_bytes: u64,
    /// Largest single per-matrix buffer on the n side (Z, Ω, G, …).
    pub(super) side_bytes: u64,
    /// Everything resident per matrix.
    pub(super) per_matrix: u64,
    /// Resident once for the whole batch (Ω).
    pub(super) shared: u64,
}

/// The needs of the randomized path for `m × n` matrices and a Krylov basis of `shape`: W,
/// the basis blocks, two work blocks and `U` on the m side; `Bᵀ` and `V` on the n side;
/// Grams, triangular inverses, the Gram of `Bᵀ` and projection coefficients.
pub(super) fn randomized_needs(m: usize, n: usize, shape: KrylovShape) -> Needs {
    let (m64, n64) = (m as u64, n as u64);
    let (b, k) = (shape.block as u64, shape.width() as u64);
    Needs {
        row_bytes: 4 * n64.max(k),
        side_bytes: (4 * n64 * k).max(8 * k * k),
        // W, the m-side blocks and U; Bᵀ and V on the n side; projection coefficients, the
        // Cholesky-QR buffers (f64 Grams at most), the Gram of Bᵀ (8 bytes an entry).
        per_matrix: 4 * (m64 * n64 + m64 * (2 * k + 2 * b) + 2 * n64 * k)
            + 4 * k * b
            + 28 * b * b
            + 8 * k * k
            + 16,
        shared: 4 * n64 * b,
    }
}

/// [`randomized_needs`] of `m × n` matrices short side first (the CPU's `rsvd::ShortFirst`:
/// the basis on the short side, Ω and `Bᵀ` on the long side; a tall group is stored
/// transposed, and holds its upload until then).
fn short_first_needs((m, n): (usize, usize), shape: KrylovShape) -> Needs {
    let mut needs = randomized_needs(m.min(n), m.max(n), shape);
    if m > n {
        needs.per_matrix += 4 * (m * n) as u64;
    }
    needs
}

/// The [`Plan`] of the randomized path for `count` matrices `m × n`: groups of matrices and
/// blocks of the rows of their short-side-first view.
pub(super) fn randomized_plan(
    ctx: &Ctx,
    count: usize,
    (m, n): (usize, usize),
    shape: KrylovShape,
) -> GpuResult<Plan> {
    plan(ctx, count, m.min(n), &short_first_needs((m, n), shape))
}

/// Whether the randomized path can take `m × n` matrices on this device: the long-side
/// buffers of one matrix (`Bᵀ`, `max(m, n) × k`) are not split, so each must fit one binding.
pub(super) fn randomized_fits(ctx: &Ctx, (m, n): (usize, usize), shape: KrylovShape) -> bool {
    let needs = short_first_needs((m, n), shape);
    needs.side_bytes <= ctx.binding_limit && needs.row_bytes <= ctx.binding_limit
}

pub(super) fn plan(ctx: &Ctx, count: usize, m: usize, needs: &Needs) -> GpuResult<Plan> {
    let lim = ctx.binding_limit;
    if needs.side_bytes > lim {
        return Err(device_err(format!(
            "a {}-byte buffer of the short side does not fit the binding limit of {lim} bytes",
            needs.side_bytes
        )));
    }
    if needs.row_bytes > lim {
        return Err(device_err(format!(
            "one row ({} bytes) does not fit the binding limit of {lim} bytes",
            needs.row_bytes
        )));
    }
    let avail = ctx.budget_here().saturating_sub(needs.shared);
    let g_budget = (avail / needs.per_matrix.max(1)).max(1) as usize;
    let whole = m as u64 * needs.row_bytes;
    let g_bind = if whole <= lim {
        (lim / whole.max(1)) as usize
    } else {
        1
    };
    let g_side = (lim / needs.side_bytes.max(1)) as usize;
    let g = count
        .min(g_budget)
        .min(g_bind)
        .min(g_side)
        .clamp(1, MAX_GROUP);
    let rows = (lim / (g as u64 * needs.row_bytes.max(1))).min(m as u64) as usize;
    Ok(Plan {
        g,
        blocks: blocks(m, rows.max(1)),
    })
}

/// A set of `g` matrices of `rows.sum()` rows and `cols` columns stored by blocks of rows:
/// buffer `b` holds `[g][rows[b]][cols]`.
struct Tall {
    bufs: Vec<wgpu::Buffer>,
    rows: Vec<usize>,
    cols: usize,
    f64: bool,
}

impl Tall {
    fn total_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Element offsets `(block, offset, len)` of matrix `i`'s rows.
    fn parts(&self, i: usize) -> Vec<(usize, u64, u64)> {
        self.rows
            .iter()
            .enumerate()
            .map(|(b, &r)| (b, (i * r * self.cols) as u64, (r * self.cols) as u64))
            .collect()
    }
}

/// Device buffers of the resident Cholesky-QR (`shaders/chol.wgsl`) for a group of `g`
/// matrices and Grams of up to `k × k`: the Gram, the matrix each iterate is multiplied by
/// next, and the per-matrix state (`[g][4]` `u32`, flags or-ed over the whole group's work).
struct Resident {
    gram: wgpu::Buffer,
    rinv: wgpu::Buffer,
    state: wgpu::Buffer,
}

impl Resident {
    fn new(ctx: &Ctx, g: usize, k: usize) -> GpuResult<Self> {
        let el = if ctx.f64 { 8 } else { 4 };
        let kk = (g * k * k) as u64;
        Ok(Resident {
            gram: ctx.buffer(kk * el, "Gram matrices")?,
            rinv: ctx.buffer(kk * 4, "triangular inverses")?,
            state: ctx.buffer(16 * g as u64, "orthonormalisation state")?,
        })
    }
}

/// How a group's bases are orthonormalised: with a read back of every Gram and the
/// decisions on the host (`None`), or entirely on the device.
type Mode<'r> = Option<&'r Resident>;

/// Copies every `(dst, src)` pair (equal lengths), by pieces of at most [`COPY_PIECE`] bytes
/// spread over the host's threads ([`super::device::scoped_map`]: no rayon inside a device
/// section) when there are at least [`PARALLEL_COPY`] bytes. Reads from mapped staging memory
/// run at 1–2 GB/s on one thread on the NVIDIA machines measured, ~10 GB/s on 16.
pub(super) fn copy_pieces(pairs: Vec<(&mut [u8], &[u8])>) {
    let total: usize = pairs.iter().map(|(d, _)| d.len()).sum();
    if total < PARALLEL_COPY {
        for (d, s) in pairs {
            d.copy_from_slice(s);
        }
        return;
    }
    let pieces: Vec<(&mut [u8], &[u8])> = pairs
        .into_iter()
        .flat_map(|(d, s)| d.chunks_mut(COPY_PIECE).zip(s.chunks(COPY_PIECE)))
        .collect();
    super::device::scoped_map(pieces, |(d, s)| d.copy_from_slice(s));
}

/// [`copy_pieces`]' piece size and the total from which it uses several threads.
const COPY_PIECE: usize = 1 << 20;
const PARALLEL_COPY: usize = 4 << 20;

/// One group of matrices resident on the device.
struct Group<'c> {
    ctx: &'c Ctx,
    g: usize,
    n: usize,
    blocks: Vec<(usize, usize)>,
    w: Vec<wgpu::Buffer>,
    /// Whether every uploaded element is finite (checked while copying).
    finite: bool,
    /// Tall matrices uploaded as they are, to be stored transposed by [`Group::orient`]
    /// before any product.
    pending: Option<Pending>,
}

/// A group of tall `m × n` matrices uploaded by blocks of their rows (`[g][rows][n]` per
/// buffer), not yet transposed.
struct Pending {
    bufs: Vec<wgpu::Buffer>,
    blocks: Vec<(usize, usize)>,
    cols: usize,
}

/// The CPU's error for the first non-finite element of `mats` (matrix `i` is `at(i)` of the
/// caller's batch), after an upload found one.
fn non_finite(mats: &[MatrixRef<'_>], at: impl Fn(usize) -> usize) -> ComputeError {
    match crate::compute::check::check_all_finite(mats) {
        Err(ComputeError::NonFinite {
            index,
            row,
            col,
            value,
        }) => ComputeError::NonFinite {
            index: at(index),
            row,
            col,
            value,
        },
        Err(e) => e,
        Ok(()) => device_err("the upload saw a non-finite value that the host check did not"),
    }
}

/// The device buffers of a group's upload, created before its turn ([`Group::reserve`]) and
/// filled in it ([`Group::fill`]).
struct Reserved {
    bufs: Vec<wgpu::Buffer>,
    /// The row blocks of `W` the buffers hold.
    up_blocks: Vec<(usize, usize)>,
    /// A tall group short side first: `W` is to be transposed on the device.
    transpose: bool,
}

impl<'c> Group<'c> {
    fn upload(ctx: &'c Ctx, mats: &[MatrixRef<'_>], blocks: &[(usize, usize)]) -> GpuResult<Self> {
        let r = Self::reserve(ctx, mats, blocks, false)?;
        Self::fill(ctx, mats, blocks, r)
    }

    /// The group of the randomized path, short side first (the CPU's `rsvd::ShortFirst`):
    /// wide matrices as they are ([`Group::upload`], `blocks` over their rows); tall `m × n`
    /// ones as `A = Wᵀ` (`n × m`, `blocks` over its `n` rows), uploaded by blocks of their own
    /// rows and transposed on the device by [`Group::orient`], which must run first.
    fn upload_short_first(
        ctx: &'c Ctx,
        mats: &[MatrixRef<'_>],
        blocks: &[(usize, usize)],
    ) -> GpuResult<Self> {
        let r = Self::reserve(ctx, mats, blocks, true)?;
        Self::fill(ctx, mats, blocks, r)
    }

    /// Creates the buffers for [`Group::upload`] (or, `short_first`, for
    /// [`Group::upload_short_first`]) without filling them. Creating a large buffer can take
    /// milliseconds (new device memory, under the allocator's lock), so a job does it before
    /// its upload waits for its turn ([`super::device::in_turn`]).
    fn reserve(
        ctx: &Ctx,
        mats: &[MatrixRef<'_>],
        blocks: &[(usize, usize)],
        short_first: bool,
    ) -> GpuResult<Reserved> {
        let (m, n) = mats[0].shape();
        let g = mats.len();
        let transpose = short_first && m > n;
        let up_blocks = if transpose {
            let per_row = (g * n * 4) as u64;
            let rows = (ctx.binding_limit / per_row.max(1)).clamp(1, m as u64) as usize;
            self::blocks(m, rows)
        } else {
            blocks.to_vec()
        };
        let bufs = up_blocks
            .iter()
            .map(|&(_, rows)| ctx.upload_target((g * rows * n * 4) as u64, "weights"))
            .collect::<GpuResult<Vec<_>>>()?;
        Ok(Reserved {
            bufs,
            up_blocks,
            transpose,
        })
    }

    /// Fills the buffers of [`Group::reserve`] (same `mats` and `blocks`) with the weights.
    fn fill(
        ctx: &'c Ctx,
        mats: &[MatrixRef<'_>],
        blocks: &[(usize, usize)],
        r: Reserved,
    ) -> GpuResult<Self> {
        let t0 = std::time::Instant::now();
        let (m, n) = mats[0].shape();
        let g = mats.len();
        let mut finite = true;
        for (buf, &(r0, rows)) in r.bufs.iter().zip(&r.up_blocks) {
            let parts: Vec<&[f32]> = mats
                .iter()
                .map(|w| &w.data()[r0 * n..(r0 + rows) * n])
                .collect();
            finite &= ctx.fill_finite(buf, &parts, "weights")?;
        }
        ctx.upload_nanos.fetch_add(
            t0.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // A tall group short side first holds `A = Wᵀ` (`m` columns) once `orient` has run.
        let (cols, w, pending) = if r.transpose {
            let pending = Pending {
                bufs: r.bufs,
                blocks: r.up_blocks,
                cols: n,
            };
            (m, Vec::new(), Some(pending))
        } else {
            (n, r.bufs, None)
        };
        Ok(Group {
            ctx,
            g,
            n: cols,
            blocks: blocks.to_vec(),
            w,
            finite,
            pending,
        })
    }

    /// Records the transposes of a group from [`Group::upload_short_first`] (nothing for wide
    /// matrices): every block of `A = Wᵀ`'s rows from every block of `W`'s rows
    /// (shaders/transpose.wgsl); `W`'s buffers are released once the commands have run.
    fn orient(&mut self, s: &mut Session<'_>) -> GpuResult<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let (l, sd) = (self.n, p.cols);
        let u = |v: usize| {
            u32::try_from(v).map_err(|_| device_err(format!("transpose: {v} exceeds 32 bits")))
        };
        let mut out = Vec::with_capacity(self.blocks.len());
        for &(c0, rc) in &self.blocks {
            let buf = self
                .ctx
                .buffer((self.g * rc * l * 4) as u64, "transposed weights")?;
            for (src, &(r0, rw)) in p.bufs.iter().zip(&p.blocks) {
                let params = [
                    u(rw)?,
                    u(rc)?,
                    u(sd)?,
                    u(rw * sd)?,
                    u(c0)?,
                    u(l)?,
                    u(rc * l)?,
                    u(r0)?,
                ];
                s.dispatch(
                    Kernel::Transpose,
                    &params,
                    &[src, &buf],
                    (u(rc.div_ceil(16))?, u(rw.div_ceil(16))?, u(self.g)?),
                )?;
            }
            out.push(buf);
        }
        self.w = out;
        Ok(())
    }

    /// An m-side set with `cols` columns.
    fn tall(&self, cols: usize, f64: bool) -> GpuResult<Tall> {
        let el = if f64 { 8 } else { 4 };
        let bufs = self
            .blocks
            .iter()
            .map(|&(_, rows)| {
                self.ctx
                    .buffer((self.g * rows * cols * el) as u64, "row-block work buffer")
            })
            .collect::<GpuResult<Vec<_>>>()?;
        Ok(Tall {
            bufs,
            rows: self.blocks.iter().map(|b| b.1).collect(),
            cols,
            f64,
        })
    }

    /// A set of `g` matrices `rows × cols` in one buffer.
    fn side(&self, rows: usize, cols: usize, f64: bool) -> GpuResult<Tall> {
        let el = if f64 { 8 } else { 4 };
        Ok(Tall {
            bufs: vec![self
                .ctx
                .buffer((self.g * rows * cols * el) as u64, "work buffer")?],
            rows: vec![rows],
            cols,
            f64,
        })
    }

    /// `out_b = W_b · X` for every block; `x` is `n × out.cols` per matrix (stride 0: one
    /// matrix for the whole group).
    fn w_times(&self, s: &mut Session<'_>, x: Operand<'_>, out: &Tall) -> GpuResult<()> {
        let (n, c) = (self.n, out.cols);
        for (b, &(_, rows)) in self.blocks.iter().enumerate() {
            let g = Gemm::new(
                Operand::new(&self.w[b], n, rows * n),
                x,
                Output::new(&out.bufs[b], 0, c, rows * c),
                (rows, c, n),
                self.g,
            );
            record(s, &g.f64(out.f64))?;
        }
        Ok(())
    }

    /// `out = Σ_b W_bᵀ · q_b` (`n × q.cols` per matrix, `f64` where `f64`), blocks added in
    /// order.
    fn wt_times(&self, s: &mut Session<'_>, q: &Tall, out: Output<'_>, f64: bool) -> GpuResult<()> {
        let (n, c) = (self.n, q.cols);
        for (b, &(_, rows)) in self.blocks.iter().enumerate() {
            let g = Gemm::new(
                Operand::new(&self.w[b], n, rows * n).t(),
                Operand::new(&q.bufs[b], c, rows * c),
                out,
                (n, c, rows),
                self.g,
            );
            record(s, &g.accumulate(b > 0).f64(f64))?;
        }
        Ok(())
    }

    /// `G = Σ_b t_bᵀ · t_b` into `gram` (`[g][cols][cols]`, `f64` where the device has it).
    fn gram(&self, s: &mut Session<'_>, t: &Tall, gram: &wgpu::Buffer) -> GpuResult<()> {
        let c = t.cols;
        for (b, &rows) in t.rows.iter().enumerate() {
            let op = Operand::new(&t.bufs[b], c, rows * c);
            let g = Gemm::new(
                op.t(),
                op,
                Output::new(gram, 0, c, c * c),
                (c, c, rows),
                self.g,
            );
            record(s, &g.accumulate(b > 0).f64(self.ctx.f64))?;
        }
        Ok(())
    }

    /// `out_b = t_b · S` with `S` `[g][t.cols][out.cols]` (`f32`).
    fn times_small(
        &self,
        s: &mut Session<'_>,
        t: &Tall,
        small: &wgpu::Buffer,
        out: &Tall,
    ) -> GpuResult<()> {
        let small = Operand::new(small, out.cols, t.cols * out.cols);
        self.rows_times(s, t, t.cols, small, (out, 0), false)
    }

    /// The m-side products with a small per-matrix factor, block of rows by block of rows:
    /// `out_b[:, off..off + n] = a_b[:, ..inner] · S` (or `−=` it, with `subtract`), `S` the
    /// `inner × n` operand `small` (`n` its leading dimension). The orthonormalisation's
    /// multiply, the basis store, the projections' update and `U = Q·E` are all this.
    fn rows_times(
        &self,
        s: &mut Session<'_>,
        a: &Tall,
        inner: usize,
        small: Operand<'_>,
        (out, off): (&Tall, usize),
        subtract: bool,
    ) -> GpuResult<()> {
        let n = small.ld as usize;
        for (b, &rows) in a.rows.iter().enumerate() {
            let g = Gemm::new(
                Operand::new(&a.bufs[b], a.cols, rows * a.cols),
                small,
                Output::new(&out.bufs[b], off, out.cols, rows * out.cols),
                (rows, n, inner),
                self.g,
            )
            .f64(out.f64);
            record(s, &if subtract { g.subtract() } else { g })?;
        }
        Ok(())
    }

    /// Downloads every matrix of `t` (row-major, `total_rows × cols` each).
    fn read_all<T: bytemuck::Pod + Send>(
        &self,
        s: &mut Session<'_>,
        t: &Tall,
    ) -> GpuResult<Vec<Vec<T>>> {
        Ok(self.read_sets::<T>(s, &[t])?.pop().unwrap_or_default())
    }

    /// [`Group::read_all`] of several sets in one submission, each matrix copied once, from
    /// the mapped staging memory into its own vector.
    fn read_sets<T: bytemuck::Pod + Send>(
        &self,
        s: &mut Session<'_>,
        sets: &[&Tall],
    ) -> GpuResult<Vec<Vec<Vec<T>>>> {
        let reads: Vec<(&wgpu::Buffer, u64, u64)> = sets
            .iter()
            .flat_map(|t| {
                t.bufs
                    .iter()
                    .zip(&t.rows)
                    .map(|(b, &r)| (b, 0, (self.g * r * t.cols) as u64))
            })
            .collect();
        // (set, block) of every read.
        let owner: Vec<(usize, usize)> = sets
            .iter()
            .enumerate()
            .flat_map(|(si, t)| (0..t.bufs.len()).map(move |b| (si, b)))
            .collect();
        let mut out: Vec<Vec<Vec<T>>> = sets
            .iter()
            .map(|t| {
                (0..self.g)
                    .map(|_| vec![T::zeroed(); t.total_rows() * t.cols])
                    .collect()
            })
            .collect();
        let el = std::mem::size_of::<T>();
        let mut got = 0usize;
        s.read_with::<T>(&reads, |ri, bytes| {
            let (si, blk) = owner[ri];
            let t = sets[si];
            let per = t.rows[blk] * t.cols * el;
            // Matrix z's rows of this block start after the rows of the blocks before it.
            let first = t.rows[..blk].iter().sum::<usize>() * t.cols * el;
            if per == 0 {
                got += 1;
                return;
            }
            if bytes.len() != per * self.g {
                return;
            }
            got += 1;
            let pairs = out[si]
                .iter_mut()
                .zip(bytes.chunks(per))
                .map(|(dst, src)| {
                    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut dst[..]);
                    (&mut dst[first..first + per], src)
                })
                .collect();
            copy_pieces(pairs);
        })?;
        if got != reads.len() {
            return Err(device_err("a read back is incomplete"));
        }
        Ok(out)
    }

    /// Reads the Gram matrices (`[g][k][k]`) as `f64`.
    fn read_grams(
        &self,
        s: &mut Session<'_>,
        gram: &wgpu::Buffer,
        k: usize,
    ) -> GpuResult<Vec<f64>> {
        let count = (self.g * k * k) as u64;
        if self.ctx.f64 {
            s.read::<f64>(gram, 0, count)
        } else {
            Ok(to_f64(&s.read::<f32>(gram, 0, count)?))
        }
    }

    /// Orthonormalises the columns of every matrix of `cur` (Cholesky-QR2, mirroring the CPU's
    /// `rsvd::orth`): Gram on the device, Cholesky and `R⁻¹` on the CPU in `f64`, `Q = Y·R⁻¹` on
    /// the device into `spare`; the buffers are swapped after every multiply, so the basis ends
    /// in `cur`. An input whose Gram is within 0.5 of the identity (the first one included)
    /// takes one last pass. With `f32` Grams, a matrix is done only once a Gram (the first one
    /// included) shows it orthonormal to [`F32_ORTH_TOL`]. A Gram that is not positive definite gets the shifted Cholesky;
    /// a matrix still not done after the last pass (numerically rank-deficient) gets an
    /// orthonormal basis from the `f64` SVD of its current iterate, on the CPU. An
    /// [`Orth::Iterate`] whose first Cholesky factor has κ(R) within the one-pass bound takes
    /// that single pass. Returns, per matrix, the smallest squared column norm of the input
    /// (the diagonal of the first Gram).
    fn orth(
        &self,
        s: &mut Session<'_>,
        cur: &mut Tall,
        spare: &mut Tall,
        need: Orth,
    ) -> GpuResult<Vec<f64>> {
        let (g, k) = (self.g, cur.cols);
        let rows = cur.total_rows();
        let f64 = self.ctx.f64;
        let el = if f64 { 8 } else { 4 };
        let gram = self.ctx.buffer((g * k * k * el) as u64, "Gram matrices")?;
        let rbuf = self
            .ctx
            .buffer((g * k * k * 4) as u64, "triangular inverses")?;
        let eps = if f64 {
            f64::EPSILON
        } else {
            f32::EPSILON as f64
        };
        let max_passes = if f64 { MAX_PASSES } else { MAX_PASSES_F32 };
        let one_pass = if f64 {
            ONE_PASS_KAPPA
        } else {
            ONE_PASS_KAPPA_F32
        };
        let mut done = vec![false; g];
        let mut fallback = vec![false; g];
        let mut kept = vec![f64::INFINITY; g];
        enum Step {
            Identity,
            Done,
            Fallback,
            /// `R⁻¹`, whether this pass finishes, whether it is the single pass of an iterate.
            Apply(Vec<f64>, bool, bool),
        }
        for pass in 0..max_passes {
            let tp = std::time::Instant::now();
            self.gram(s, cur, &gram)?;
            let gs = self.read_grams(s, &gram, k)?;
            if pass == 0 {
                for (i, m) in kept.iter_mut().enumerate() {
                    let gi = &gs[i * k * k..(i + 1) * k * k];
                    *m = (0..k).map(|j| gi[j * k + j]).fold(f64::INFINITY, f64::min);
                }
            }
            tracing::trace!(
                "gpu orth pass {pass}: products + Gram + read {:.4} s",
                tp.elapsed().as_secs_f64()
            );
            // Sequential: this runs inside a device section (no rayon there).
            let steps: Vec<Step> = (0..g)
                .map(|i| {
                    if done[i] {
                        return Step::Identity;
                    }
                    let gi = &gs[i * k * k..(i + 1) * k * k];
                    let dev = max_dev_from_identity(gi, k);
                    if !f64 && dev < F32_ORTH_TOL {
                        return Step::Done;
                    }
                    let finishes = dev < 0.5;
                    match cholesky_upper(gi, k) {
                        Some(r) => {
                            let ri = inv_upper(&r, k);
                            let single = pass == 0
                                && need == Orth::Iterate
                                && frobenius_condition(&r, &ri) <= one_pass;
                            Step::Apply(ri, finishes, single)
                        }
                        None => match shifted_cholesky(gi, rows, k, eps) {
                            Some(r) => Step::Apply(inv_upper(&r, k), finishes, false),
                            None => Step::Fallback,
                        },
                    }
                })
                .collect();
            let mut rinv = vec![0.0f32; g * k * k];
            let mut any = false;
            for (i, step) in steps.into_iter().enumerate() {
                let dst = &mut rinv[i * k * k..(i + 1) * k * k];
                match step {
                    Step::Apply(ri, finishes, single) => {
                        for (d, v) in dst.iter_mut().zip(&ri) {
                            *d = *v as f32;
                        }
                        any = true;
                        if single || (f64 && finishes) {
                            done[i] = true;
                        }
                    }
                    other => {
                        for j in 0..k {
                            dst[j * k + j] = 1.0;
                        }
                        match other {
                            Step::Done => done[i] = true,
                            Step::Fallback => {
                                done[i] = true;
                                fallback[i] = true;
                            }
                            _ => {}
                        }
                    }
                }
            }
            if !any {
                break;
            }
            self.ctx.write(&rbuf, 0, &rinv);
            self.times_small(s, cur, &rbuf, spare)?;
            std::mem::swap(cur, spare);
            if done.iter().all(|&d| d) {
                break;
            }
        }
        let redo: Vec<usize> = (0..g).filter(|&i| fallback[i] || !done[i]).collect();
        if redo.is_empty() {
            return Ok(kept);
        }
        // Rank-deficient iterates: an orthonormal basis from the f64 SVD (CPU).
        let all = self.read_all::<f32>(s, cur)?;
        let bases: Vec<Result<Vec<f32>, String>> =
            redo.iter().map(|&i| svd_basis(&all[i], rows, k)).collect();
        for (&i, basis) in redo.iter().zip(bases) {
            let basis = basis.map_err(|reason| ComputeError::Numerical { index: i, reason })?;
            let mut r0 = 0usize;
            for (b, (_, off, len)) in cur.parts(i).into_iter().enumerate() {
                let len = len as usize;
                self.ctx
                    .write(&cur.bufs[b], off * 4, &basis[r0 * k..r0 * k + len]);
                r0 += len / k.max(1);
            }
        }
        Ok(kept)
    }

    /// [`Group::orth`] on the device: `passes` Cholesky-QR passes recorded without a read
    /// back, each a Gram, one `shaders/chol.wgsl` step per matrix (the host's decisions, made
    /// per matrix on the device) and the multiply; the basis ends in `cur`. A matrix that
    /// needs what this cannot do (the SVD fallback, more passes) is flagged in `res.state`;
    /// with `check_kept`, so is one whose input's smallest squared column norm is at most
    /// `REORTH_KEEP` (the Krylov restart test).
    #[allow(clippy::too_many_arguments)]
    fn orth_resident(
        &self,
        s: &mut Session<'_>,
        cur: &mut Tall,
        spare: &mut Tall,
        need: Orth,
        check_kept: bool,
        passes: usize,
        res: &Resident,
    ) -> GpuResult<()> {
        let f64 = self.ctx.f64;
        let (eps, one_pass, pivot) = if f64 {
            (f64::EPSILON as f32, ONE_PASS_KAPPA as f32, PIVOT_F64)
        } else {
            (f32::EPSILON, ONE_PASS_KAPPA_F32 as f32, PIVOT_F32)
        };
        let (gx, gy) = self.ctx.grid(self.g as u64)?;
        for pass in 0..passes {
            self.gram(s, cur, &res.gram)?;
            let flags = u32::from(need == Orth::Iterate)
                | u32::from(pass + 1 == passes) << 1
                | u32::from(check_kept) << 2
                | u32::from(f64) << 3;
            let params = [
                cur.cols as u32,
                self.g as u32,
                cur.total_rows() as u32,
                pass as u32,
                flags,
                eps.to_bits(),
                one_pass.to_bits(),
                (F32_ORTH_TOL as f32).to_bits(),
                (REORTH_KEEP as f32).to_bits(),
                pivot.to_bits(),
                0,
                0,
            ];
            s.dispatch(
                Kernel::Chol { f64 },
                &params,
                &[&res.gram, &res.rinv, &res.state],
                (gx, gy, 1),
            )?;
            self.times_small(s, cur, &res.rinv, spare)?;
            std::mem::swap(cur, spare);
        }
        Ok(())
    }

    /// [`Group::orth`] or [`Group::orth_resident`] by `mode`.
    fn orth_mode(
        &self,
        s: &mut Session<'_>,
        cur: &mut Tall,
        spare: &mut Tall,
        need: Orth,
        mode: Mode<'_>,
    ) -> GpuResult<()> {
        match mode {
            Some(res) => self.orth_resident(s, cur, spare, need, false, RESIDENT_PASSES, res),
            None => self.orth(s, cur, spare, need).map(|_| ()),
        }
    }

    /// `y −= Q·(Qᵀ·y)` for the first `nb` blocks `Q` of the basis `q` (all coefficients from
    /// the same `y`: the CPU's `project_out`), through `coef` (`[g][k][b]`).
    fn project_out(
        &self,
        s: &mut Session<'_>,
        y: &Tall,
        q: &Tall,
        nb: usize,
        coef: &wgpu::Buffer,
    ) -> GpuResult<()> {
        let (b, k) = (y.cols, q.cols);
        for (rb, &rows) in y.rows.iter().enumerate() {
            let g = Gemm::new(
                Operand::new(&q.bufs[rb], k, rows * k).t(),
                Operand::new(&y.bufs[rb], b, rows * b),
                Output::new(coef, 0, b, k * b),
                (nb * b, b, rows),
                self.g,
            );
            record(s, &g.accumulate(rb > 0))?;
        }
        self.subtract(s, y, q, nb, coef)
    }

    /// `y −= Q·C` with `Q` the first `nb` blocks of the basis `q` and `C` the `nb·b × b`
    /// coefficients in `coef` (`[g][k][b]`).
    fn subtract(
        &self,
        s: &mut Session<'_>,
        y: &Tall,
        q: &Tall,
        nb: usize,
        coef: &wgpu::Buffer,
    ) -> GpuResult<()> {
        let c = Operand::new(coef, y.cols, q.cols * y.cols);
        self.rows_times(s, q, nb * y.cols, c, (y, 0), true)
    }

    /// Copies `cur` (`b` columns) into columns `j·b..` of the basis `q` (a product with the
    /// `b × b` identity `ident`, shared by the group).
    fn store(
        &self,
        s: &mut Session<'_>,
        cur: &Tall,
        q: &Tall,
        j: usize,
        ident: &wgpu::Buffer,
    ) -> GpuResult<()> {
        let b = cur.cols;
        self.rows_times(s, cur, b, Operand::new(ident, b, 0), (q, j * b), false)
    }

    /// The block Krylov range finder (the CPU's `rsvd::krylov`): the basis `Q = [Q₀ … Q_d]`
    /// (m-side, `(d + 1)·b` columns, block `i` in columns `i·b..`) of
    /// `span[W·Ω, (W·Wᵀ)·W·Ω, …]` for `omega` (`n × b`, shared), and `Bᵀ = Wᵀ·Q` (n-side,
    /// block `i` = `Wᵀ·Qᵢ`).
    fn krylov(
        &self,
        s: &mut Session<'_>,
        omega: &wgpu::Buffer,
        shape: KrylovShape,
        mode: Mode<'_>,
    ) -> GpuResult<(Tall, Tall)> {
        let (b, width, n) = (shape.block, shape.width(), self.n);
        let bt = self.side(n, width, false)?;
        let q = self.tall(width, false)?;
        let coef = self
            .ctx
            .buffer((self.g * width * b * 4) as u64, "projection coefficients")?;
        let mut eye = vec![0.0f32; b * b];
        for j in 0..b {
            eye[j * b + j] = 1.0;
        }
        let ident = self.ctx.upload(&[&eye[..]], "identity")?;
        let mut spare = self.tall(b, false)?;
        let mut cur = self.tall(b, false)?;
        let omega = Operand::new(omega, b, 0);
        self.w_times(s, omega, &cur)?;
        self.orth_mode(s, &mut cur, &mut spare, Orth::Final, mode)?;
        for i in 0..=shape.depth {
            self.store(s, &cur, &q, i, &ident)?;
            // Zᵢ = Wᵀ·Qᵢ into columns i·b.. of Bᵀ.
            let zi = Output::new(&bt.bufs[0], i * b, width, n * width);
            self.wt_times(s, &cur, zi, false)?;
            if i == shape.depth {
                break;
            }
            let z = Operand {
                off: (i * b) as u64,
                ..Operand::new(&bt.bufs[0], width, n * width)
            };
            self.w_times(s, z, &cur)?;
            // The first projection's coefficients from the n side: Qⱼᵀ·W·Wᵀ·Qᵢ = Zⱼᵀ·Zᵢ.
            let nb = i + 1;
            let g = Gemm::new(
                Operand::new(&bt.bufs[0], width, n * width).t(),
                z,
                Output::new(&coef, 0, b, width * b),
                (nb * b, b, n),
                self.g,
            );
            record(s, &g)?;
            self.subtract(s, &cur, &q, nb, &coef)?;
            match mode {
                // One round of projection; a matrix that would need the restart is flagged.
                Some(res) => {
                    self.orth_resident(
                        s,
                        &mut cur,
                        &mut spare,
                        Orth::Iterate,
                        false,
                        ITERATE_PASSES,
                        res,
                    )?;
                    self.project_out(s, &cur, &q, nb, &coef)?;
                    self.orth_resident(
                        s,
                        &mut cur,
                        &mut spare,
                        Orth::Final,
                        true,
                        REPROJECTED_PASSES,
                        res,
                    )?;
                }
                None => self.orth_against(s, &mut cur, &mut spare, &q, nb, &coef, i)?,
            }
        }
        Ok((q, bt))
    }

    /// The CPU's `rsvd::orth_against` for every matrix of the group (`cur` has had its first
    /// projection): an orthonormalisation, then rounds of projection and orthonormalisation
    /// until no matrix's iterate loses more than `1 − REORTH_KEEP` of a
    /// column's squared length; the matrices still losing that much after two rounds continue
    /// from the CPU's Gaussian restart block (the others take the extra rounds too, which
    /// changes them only by rounding).
    #[allow(clippy::too_many_arguments)]
    fn orth_against(
        &self,
        s: &mut Session<'_>,
        cur: &mut Tall,
        spare: &mut Tall,
        q: &Tall,
        nb: usize,
        coef: &wgpu::Buffer,
        i: usize,
    ) -> GpuResult<()> {
        self.orth(s, cur, spare, Orth::Iterate)?;
        let mut lost = vec![true; self.g];
        for round in 0..MAX_REORTH {
            if round == MAX_REORTH / 2 {
                let rows = cur.total_rows();
                let b = cur.cols;
                let restart = gaussian_f32(RESTART_SEED + i as u64, rows, b);
                // The last orthonormalisation may still be recorded: run it before the writes.
                s.flush()?;
                for z in (0..self.g).filter(|&z| lost[z]) {
                    let mut r0 = 0usize;
                    for (blk, (_, off, len)) in cur.parts(z).into_iter().enumerate() {
                        let len = len as usize;
                        self.ctx
                            .write(&cur.bufs[blk], off * 4, &restart[r0 * b..r0 * b + len]);
                        r0 += len / b.max(1);
                    }
                }
                self.project_out(s, cur, q, nb, coef)?;
                self.orth(s, cur, spare, Orth::Final)?;
            }
            self.project_out(s, cur, q, nb, coef)?;
            let kept = self.orth(s, cur, spare, Orth::Final)?;
            lost = kept.iter().map(|&k| k <= REORTH_KEEP).collect();
            if !lost.contains(&true) {
                break;
            }
        }
        Ok(())
    }
}

/// The short-side-first view of every matrix of `mats` as the randomized path stores it on
/// the device ([`Group::upload_short_first`] and [`Group::orient`] with the plan's blocks),
/// read back: per matrix `A = W` or `Wᵀ`, row-major.
#[cfg(test)]
pub(super) fn short_first_on_device(
    ctx: &Ctx,
    mats: &[MatrixRef<'_>],
    shape: KrylovShape,
) -> GpuResult<Vec<Vec<f32>>> {
    let plan = randomized_plan(ctx, mats.len(), mats[0].shape(), shape)?;
    let mut out = Vec::with_capacity(mats.len());
    for group in mats.chunks(plan.g) {
        out.extend(ctx.run(|| {
            let mut grp = Group::upload_short_first(ctx, group, &plan.blocks[..])?;
            let mut s = Session::new(ctx);
            grp.orient(&mut s)?;
            let set = Tall {
                bufs: grp.w.clone(),
                rows: grp.blocks.iter().map(|b| b.1).collect(),
                cols: grp.n,
                f64: false,
            };
            grp.read_all::<f32>(&mut s, &set)
        })?);
    }
    Ok(out)
}

/// `‖R‖_F · ‖R⁻¹‖_F`, an upper bound of κ₂(R) (at most `k` times it) that costs `O(k²)`
/// given `R⁻¹`; `∞` when not finite. Used to decide the single pass of an iterate, so it
/// never takes one where the CPU's exact κ₂ test would not.
fn frobenius_condition(r: &[f64], rinv: &[f64]) -> f64 {
    let f = |x: &[f64]| x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let c = f(r) * f(rinv);
    if c.is_finite() {
        c
    } else {
        f64::INFINITY
    }
}

/// What the randomized path returns per matrix.
pub(super) enum Want {
    /// Rank-`rank` factors.
    Factors(usize),
    /// The top `kk` singular values.
    Spectrum(usize),
}

/// Per-matrix result of [`randomized`].
pub(super) enum Got {
    Factors(Factors),
    Spectrum(Vec<f32>),
}

impl Got {
    /// The factors, for [`Want::Factors`].
    pub(super) fn factors(self) -> Option<Factors> {
        match self {
            Got::Factors(f) => Some(f),
            Got::Spectrum(_) => None,
        }
    }

    /// The singular values, for [`Want::Spectrum`].
    pub(super) fn spectrum(self) -> Option<Vec<f32>> {
        match self {
            Got::Spectrum(s) => Some(s),
            Got::Factors(_) => None,
        }
    }
}

/// The randomized SVD (or spectrum) of every matrix of `batch` (same shape, validated) from
/// a block Krylov basis of `shape` (`opts`: the seed).
///
/// Each group of matrices first takes the resident path ([`resident_group`]: the whole
/// factorization on the device, two read backs); the matrices it flags (numerically
/// rank-deficient ones, whose bases need the Krylov restart or the SVD fallback) are redone on
/// the careful path ([`careful_group`]: every Gram read back, the decisions on the host).
pub(super) fn randomized(
    ctx: &Ctx,
    batch: &[MatrixRef<'_>],
    shape: KrylovShape,
    opts: &SvdOptions,
    want: Want,
) -> GpuResult<Vec<Got>> {
    let (m, n) = batch[0].shape();
    let l = m.max(n);
    let plan = randomized_plan(ctx, batch.len(), (m, n), shape)?;
    let omega_buf = ctx.sketch(opts.seed, l, shape.block)?;
    let mut out = Vec::with_capacity(batch.len());
    tracing::trace!("gpu rsvd {m}×{n}: sketch ready");
    for (gi, mats) in batch.chunks(plan.g).enumerate() {
        let base = gi * plan.g;
        let mut got = if shape.block <= ctx.chol_kmax as usize {
            resident_group(ctx, mats, &plan.blocks, &omega_buf, shape, &want, base)?
        } else {
            (0..mats.len()).map(|_| None).collect()
        };
        let redo: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
        if !redo.is_empty() {
            tracing::debug!(
                "gpu rsvd {m}×{n}: {} of {} matrices redone on the careful path",
                redo.len(),
                mats.len()
            );
            #[cfg(test)]
            ctx.careful
                .fetch_add(redo.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // One at a time: the careful path's extra rounds couple the matrices it runs
            // together, and a matrix must get the same bits alone or in any batch.
            for &i in &redo {
                let again = careful_group(
                    ctx,
                    &[mats[i]],
                    &plan.blocks,
                    &omega_buf,
                    shape,
                    &want,
                    &[base + i],
                )?;
                got[i] = again.into_iter().next();
            }
        }
        out.extend(got.into_iter().flatten());
    }
    Ok(out)
}

/// The rank of the factors `want` asks for (0 for a spectrum).
fn factor_rank(want: &Want) -> usize {
    match want {
        Want::Factors(r) => *r,
        Want::Spectrum(_) => 0,
    }
}

/// The CPU's `small_svd` of every matrix's `k`-column factor `x` (`rows × k`, `f64`) in
/// parallel; `index[i]` names matrix `i` in errors.
fn small_svds(
    xs: &[Vec<f64>],
    rows: usize,
    k: usize,
    want: &Want,
    index: &[usize],
) -> GpuResult<Vec<crate::compute::dense::SvdParts>> {
    let vectors = matches!(want, Want::Factors(_));
    let r = factor_rank(want);
    xs.par_iter()
        .zip(index)
        .map(|(x, &at)| {
            small_svd(x, rows, k, r, vectors)
                .map_err(|reason| ComputeError::Numerical { index: at, reason })
        })
        .collect()
}

/// `U_B[:, :r]` of every matrix (`k × r`, `f32`, row-major), matrices one after the other.
fn leading_columns(mats: &[&faer::Mat<f64>], k: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; mats.len() * k * r];
    for (i, x) in mats.iter().enumerate() {
        for a in 0..k {
            for l in 0..r.min(x.ncols()) {
                out[i * k * r + a * r + l] = x[(a, l)] as f32;
            }
        }
    }
    out
}

/// `U = Q · U_B[:, :r]` (m-side, by row blocks) for every matrix of the group, with `ub`
/// (`[g][k][r]`) on the device, recorded into `s`.
fn record_u(
    grp: &Group<'_>,
    s: &mut Session<'_>,
    q: &Tall,
    ub: &wgpu::Buffer,
    k: usize,
    r: usize,
) -> GpuResult<Tall> {
    let u = grp.tall(r, false)?;
    grp.rows_times(s, q, k, Operand::new(ub, r, k * r), (&u, 0), false)?;
    Ok(u)
}

/// Where shaders/gram2.wgsl reads `X` (`n × k` per matrix): element `(r, c)` of matrix `z`
/// at `off + z·stride + r·ld + c`, or `… + c·ld + r` when `tr`; with `acc` the sums continue
/// from the pairs already in the output (rows of `X` in several buffers).
pub(super) struct Gram2 {
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) ld: usize,
    pub(super) stride: usize,
    pub(super) off: usize,
    pub(super) tr: bool,
    pub(super) acc: bool,
}

/// Rows per split of a double-`f32` Gram over many rows (shaders/gram2.wgsl's split-K: each
/// entry's sum is a chain of dependent roundings, so long sums leave the device idle) …
const GRAM2_CHUNK: usize = 512;
/// … from this many rows, in at most this many splits, whose partial pairs take at most an
/// eighth of the memory budget and one binding.
const GRAM2_SPLIT_FROM: usize = 1024;
const GRAM2_MAX_SPLITS: usize = 32;

/// Records the Gram kernel the device uses for `g` matrices ([`Ctx::f64_gram`]: shaders/
/// gram64.wgsl, else gram2.wgsl): the upper triangle of each `XᵀX` into `out` (`[g][k][k]`
/// entries of 8 bytes: an `f64`, or a double-`f32` `(s, c)` pair; [`gram_from_words`] reads
/// either). Without `acc`, a Gram over at least [`GRAM2_SPLIT_FROM`] rows is summed in splits of
/// about [`GRAM2_CHUNK`] rows (a function of one matrix's shape and the device's limits, never of
/// the batch: a batch whose partial sums do not fit is taken in sub-batches) that the
/// kernel's `combine` adds in order.
pub(super) fn record_gram(
    s: &mut Session<'_>,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    a: &Gram2,
    g: usize,
) -> GpuResult<()> {
    let main = if s.ctx.f64_gram {
        Kernel::Gram64
    } else {
        Kernel::Gram2 {
            fused: s.ctx.fused_fma(),
        }
    };
    record_gram_with(s, x, out, a, g, main)
}

/// [`record_gram`] by the given kernel (`Kernel::Gram64` or `Kernel::Gram2`).
pub(super) fn record_gram_with(
    s: &mut Session<'_>,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    a: &Gram2,
    g: usize,
    main: Kernel,
) -> GpuResult<()> {
    let f64 = main == Kernel::Gram64;
    let combine_kernel = if f64 {
        Kernel::Gram64Combine
    } else {
        Kernel::Gram2Combine
    };
    // gram64.wgsl's tiles are 64 × 64, gram2.wgsl's 32 × 32.
    let side = if f64 { 64 } else { 32 };
    let u = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| device_err(format!("Gram: {what} {v} exceeds 32 bits")))
    };
    // One past the largest element read: (n − 1, k − 1) of the last matrix.
    let last = a.off
        + g.saturating_sub(1) * a.stride
        + if a.tr {
            a.k.saturating_sub(1) * a.ld + a.n
        } else {
            a.n.saturating_sub(1) * a.ld + a.k
        };
    u(last, "element offset")?;
    u(g * a.k * a.k * 2, "output size")?;
    let tiles = u(a.k.div_ceil(side), "tiles")?;
    // The splits depend on one matrix's shape and the device alone (never on the batch), so
    // that a matrix's bits are the same alone or in any batch; the matrices are then taken in
    // sub-batches whose partial sums fit an eighth of the budget and one binding.
    let limit = (s.ctx.budget / 8).min(s.ctx.binding_limit);
    let per_split = (a.k * a.k * 8).max(1) as u64;
    let room = (limit / per_split).max(1) as usize;
    let splits = if a.acc || a.n < GRAM2_SPLIT_FROM {
        1
    } else {
        a.n.div_ceil(GRAM2_CHUNK)
            .min(GRAM2_MAX_SPLITS)
            .min(room)
            .max(1)
    };
    let chunk = a.n.div_ceil(splits);
    let params = |off: usize| -> GpuResult<[u32; 10]> {
        Ok([
            u(a.n, "rows")?,
            u(a.k, "columns")?,
            u(a.ld, "leading dimension")?,
            u(a.stride, "stride")?,
            u(off, "offset")?,
            a.tr as u32,
            a.acc as u32,
            0,
            u(splits, "splits")?,
            u(chunk, "rows per split")?,
        ])
    };
    if splits == 1 {
        return s.dispatch(
            main,
            &params(a.off)?,
            &[x, out],
            (tiles, tiles, u(g, "matrices")?),
        );
    }
    let per_batch = (room / splits).clamp(1, g);
    let parts = s.ctx.buffer(
        (per_batch * splits * a.k * a.k * 8) as u64,
        "Gram row splits",
    )?;
    u(per_batch * splits * a.k * a.k * 2, "split output size")?;
    for z0 in (0..g).step_by(per_batch) {
        let gb = per_batch.min(g - z0);
        s.dispatch(
            main,
            &params(a.off + z0 * a.stride)?,
            &[x, &parts],
            (tiles, tiles, u(gb * splits, "matrices × splits")?),
        )?;
        let entries = (gb * a.k * a.k) as u64;
        let (gx, gy) = s.ctx.grid(entries.div_ceil(64))?;
        // `combine` writes matrix z of the sub-batch to output slot `off` + z.
        let combine = [
            0,
            u(a.k, "columns")?,
            0,
            u(gb, "matrices")?,
            u(z0, "first matrix")?,
            0,
            0,
            0,
            u(splits, "splits")?,
            0,
        ];
        s.dispatch(combine_kernel, &combine, &[&parts, out], (gx, gy, 1))?;
    }
    Ok(())
}

/// Gram `i` (`k × k`, row-major `f64`, symmetric) from the upper triangles [`record_gram`]
/// wrote, read back as words `raw`: `f64` values where `f64` (shaders/gram64.wgsl), else
/// double-`f32` pairs `(s, c)` taken as `s + c` (shaders/gram2.wgsl); mirrored.
pub(super) fn gram_from_words(raw: &[u32], i: usize, k: usize, f64: bool) -> Vec<f64> {
    let mut gm = vec![0.0f64; k * k];
    for a in 0..k {
        for c in a..k {
            let o = 2 * (i * k * k + a * k + c);
            let (w0, w1) = (raw[o], raw[o + 1]);
            let v = if f64 {
                f64::from_bits(u64::from(w0) | (u64::from(w1) << 32))
            } else {
                f32::from_bits(w0) as f64 + f32::from_bits(w1) as f64
            };
            gm[a * k + c] = v;
            gm[c * k + a] = v;
        }
    }
    gm
}

/// The `g` Grams (`k × k`, row-major `f64`, symmetric) from the mapped bytes of the upper
/// triangles [`record_gram`] wrote ([`gram_from_words`]), one matrix per scoped thread.
fn grams_from_bytes(bytes: &[u8], g: usize, k: usize, f64: bool) -> Vec<Vec<f64>> {
    let words: std::borrow::Cow<'_, [u32]> = match bytemuck::try_cast_slice(bytes) {
        Ok(w) => std::borrow::Cow::Borrowed(w),
        Err(_) => std::borrow::Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    };
    if words.len() < 2 * g * k * k {
        return Vec::new();
    }
    super::device::scoped_map((0..g).collect(), |i| gram_from_words(&words, i, k, f64))
}

/// One group on the resident path (Krylov blocks of at most `ctx.chol_kmax` columns): upload,
/// the Krylov basis and `Bᵀ = Wᵀ·Q` with every orthonormalisation on the device
/// ([`Group::orth_resident`]), and the Gram `B·Bᵀ` of `Bᵀ`'s columns ([`record_gram`]: in
/// `f64`, or double-`f32` near the accuracy of the CPU's `f64` one); one read back of the Grams
/// and the flags. On the CPU, in `f64`, the eigendecomposition of each Gram (the CPU's `small_svd`:
/// `B·Bᵀ = E Σ² Eᵀ`); then `U = Q·E` and `V = Bᵀ·E·Σ⁻¹` on the device and a second read
/// back. `None` for a matrix the device flagged, or whose sketch is numerically
/// rank-deficient (a kept σ below the Gram's resolution: the careful path's dense SVD).
fn resident_group(
    ctx: &Ctx,
    mats: &[MatrixRef<'_>],
    blocks: &[(usize, usize)],
    omega: &wgpu::Buffer,
    shape: KrylovShape,
    want: &Want,
    base: usize,
) -> GpuResult<Vec<Option<Got>>> {
    let (m, n) = mats[0].shape();
    let tall = m > n;
    let (sd, l) = (m.min(n), m.max(n));
    let (b, k) = (shape.block, shape.width());
    let t0 = std::time::Instant::now();
    // The upload, outside the device lock: it may overlap another thread's device work. Its
    // buffers are created before its turn, its copies in it.
    let reserved = ctx.scoped(|| Group::reserve(ctx, mats, blocks, true))?;
    let mut grp =
        super::device::in_turn(|| ctx.scoped(|| Group::fill(ctx, mats, blocks, reserved)))?;
    if !grp.finite {
        return Err(non_finite(mats, |i| base + i));
    }
    let t_up = t0.elapsed().as_secs_f64();
    // Device section 1.
    let (grp, q, bt, grams, states) = ctx.run(|| {
        let res = Resident::new(ctx, grp.g, b)?;
        let mut s = Session::new(ctx);
        grp.orient(&mut s)?;
        let (q, bt) = grp.krylov(&mut s, omega, shape, Some(&res))?;
        let pairs = ctx.buffer((grp.g * k * k * 8) as u64, "Gram of Bᵀ")?;
        let at = Gram2 {
            n: l,
            k,
            ld: k,
            stride: l * k,
            off: 0,
            tr: false,
            acc: false,
        };
        record_gram(&mut s, &bt.bufs[0], &pairs, &at, grp.g)?;
        tracing::trace!(
            "gpu rsvd {}×{m}×{n}: recorded {:.4} s after the upload",
            grp.g,
            t0.elapsed().as_secs_f64() - t_up
        );
        let f64_gram = ctx.f64_gram;
        let (mut raw, mut states) = (Vec::new(), Vec::new());
        s.read_with::<u32>(
            &[
                (&pairs, 0, (grp.g * k * k * 2) as u64),
                (&res.state, 0, 4 * grp.g as u64),
            ],
            |i, bytes| match i {
                0 => raw = grams_from_bytes(bytes, grp.g, k, f64_gram),
                _ => states = bytemuck::pod_collect_to_vec::<u8, u32>(bytes),
            },
        )?;
        tracing::debug!(
            "gpu rsvd {}×{m}×{n} b={b} k={k} (resident): upload {t_up:.4} s, Krylov basis, Bᵀ \
             and its Gram {:.4} s",
            grp.g,
            t0.elapsed().as_secs_f64() - t_up
        );
        Ok((grp, q, bt, raw, states))
    })?;
    let t1 = std::time::Instant::now();
    tracing::trace!("gpu rsvd {}×{m}×{n}: device section 1 returned", grp.g);
    let g = grp.g;
    if states.len() < 4 * g || grams.len() != g {
        return Err(device_err("the Krylov state was not read back"));
    }
    let flagged: Vec<bool> = (0..g).map(|i| states[4 * i + 1] != 0).collect();
    let r = factor_rank(want);
    // CPU, in parallel: the eigendecompositions (`None`: rank-deficient, careful path).
    enum Small {
        Values(Vec<f32>),
        /// The eigenpairs, and `E` and `E·Σ⁻¹` (`k × r`, row-major `f32`) for the device.
        Vectors(crate::compute::rsvd::TopEigen, Vec<f32>, Vec<f32>),
    }
    // E and E·Σ⁻¹ as the device takes them, made in the eigendecomposition's own task (on the
    // job's critical path, extra threads would wait behind the other jobs' tasks).
    let for_device = |top: crate::compute::rsvd::TopEigen| {
        let mut e = vec![0.0f32; k * r];
        let mut es = vec![0.0f32; k * r];
        for l in 0..top.sig.len().min(r) {
            let col = top.e.col(l);
            for a in 0..k {
                let v = col[a];
                e[a * r + l] = v as f32;
                es[a * r + l] = (v * top.inv[l]) as f32;
            }
        }
        Small::Vectors(top, e, es)
    };
    let smalls: Vec<Option<Small>> = super::device::fifo_map(g, |i| -> GpuResult<Option<Small>> {
        if i == 0 {
            tracing::trace!(
                "gpu rsvd {g}×{m}×{n}: first eigendecomposition starts {:.4} s after the section",
                t1.elapsed().as_secs_f64()
            );
        }
        if flagged[i] {
            return Ok(None);
        }
        let gm = &grams[i];
        if !gm.iter().all(|v| v.is_finite()) {
            return Ok(None);
        }
        // An eigensolver failure goes to the careful path (the SVD of Bᵀ) too.
        Ok(match want {
            Want::Spectrum(kk) => gram_singular_values(gm, k)
                .ok()
                .map(|v| Small::Values(v.into_iter().take(*kk).collect())),
            Want::Factors(_) => top_eigen_seq(gm, k, r)
                .ok()
                .filter(|top| !top.inv.contains(&0.0))
                .map(for_device),
        })
    })
    .into_iter()
    .map(|got| got.unwrap_or_else(|| Err(device_err("an eigendecomposition did not run"))))
    .collect::<GpuResult<Vec<_>>>()?;
    let mut out: Vec<Option<Got>> = (0..g).map(|_| None).collect();
    let flagged_count = flagged.iter().filter(|&&f| f).count();
    if flagged_count > 0 {
        let count = |f: u32| (0..g).filter(|&i| states[4 * i + 1] & f != 0).count();
        tracing::debug!(
            "gpu rsvd {m}×{n}: flagged on the resident path: {} shifted Cholesky failed, {} not \
             orthonormal in {RESIDENT_PASSES} passes, {} Krylov block lost (restart)",
            count(FLAG_FALLBACK),
            count(FLAG_UNFINISHED),
            count(FLAG_LOST),
        );
    }
    tracing::debug!(
        "gpu rsvd: CPU eigendecompositions {:.4} s",
        t1.elapsed().as_secs_f64()
    );
    if let Want::Spectrum(_) = want {
        for (i, sm) in smalls.into_iter().enumerate() {
            if let Some(Small::Values(v)) = sm {
                out[i] = Some(Got::Spectrum(v));
            }
        }
        return Ok(out);
    }
    let live: Vec<usize> = (0..g).filter(|&i| smalls[i].is_some()).collect();
    if live.is_empty() {
        return Ok(out);
    }
    let t2 = std::time::Instant::now();
    // Per matrix of the group (zeros for the others): E and E·Σ⁻¹, k × r.
    let zeros = vec![0.0f32; k * r];
    let (mut e, mut es): (Vec<&[f32]>, Vec<&[f32]>) = (Vec::new(), Vec::new());
    for sm in &smalls {
        match sm {
            Some(Small::Vectors(_, ei, esi)) => {
                e.push(ei);
                es.push(esi);
            }
            _ => {
                e.push(&zeros);
                es.push(&zeros);
            }
        }
    }
    let t_prep = t2.elapsed().as_secs_f64();
    // Device section 2: the short side Q·E and the long side (E·Σ⁻¹)ᵀ·B, as Vᵀ (r × l) for
    // a wide group (Bᵀ's buffer read transposed) and as U = Bᵀ·E·Σ⁻¹ (l × r) for a tall one.
    let (shorts, longs, t_rec) = ctx.run(|| {
        let e_buf = ctx.upload(&e, "small singular vectors")?;
        let es_buf = ctx.upload(&es, "small singular vectors")?;
        let mut s = Session::new(ctx);
        let short = record_u(&grp, &mut s, &q, &e_buf, k, r)?;
        let long = if tall {
            let u = grp.side(l, r, false)?;
            let gu = Gemm::new(
                Operand::new(&bt.bufs[0], k, l * k),
                Operand::new(&es_buf, r, k * r),
                Output::new(&u.bufs[0], 0, r, l * r),
                (l, r, k),
                grp.g,
            );
            record(&mut s, &gu)?;
            u
        } else {
            let vt = grp.side(r, l, false)?;
            let gv = Gemm::new(
                Operand::new(&es_buf, r, k * r).t(),
                Operand::new(&bt.bufs[0], k, l * k).t(),
                Output::new(&vt.bufs[0], 0, l, r * l),
                (r, l, k),
                grp.g,
            );
            record(&mut s, &gv)?;
            vt
        };
        let t_rec = t2.elapsed().as_secs_f64();
        let mut got = grp.read_sets::<f32>(&mut s, &[&short, &long])?;
        let longs = got.pop().unwrap_or_default();
        let shorts = got.pop().unwrap_or_default();
        Ok((shorts, longs, t_rec))
    })?;
    tracing::debug!(
        "gpu rsvd: U = Q·E, Vᵀ = Σ⁻¹Eᵀ·B {:.4} s (E {t_prep:.4} s, uploads and recording until \
         {t_rec:.4} s)",
        t2.elapsed().as_secs_f64()
    );
    if shorts.len() != g || longs.len() != g {
        return Err(device_err("a factor was not read back"));
    }
    // CPU, in parallel: the factors with normalised signs.
    let parts: Vec<_> = smalls.into_iter().zip(shorts).zip(longs).collect();
    let done: Vec<Option<Factors>> = super::device::scoped_map(parts, |((sm, short), long)| {
        let Some(Small::Vectors(top, _, _)) = sm else {
            return None;
        };
        let rr = top.sig.len();
        let short = if rr == r {
            short
        } else {
            trim_cols(&short, sd, r, rr)
        };
        let (u, vt) = if tall {
            let u = if rr == r {
                long
            } else {
                trim_cols(&long, l, r, rr)
            };
            (u, transpose_rm(&short, sd, rr))
        } else {
            let vt = if rr == r {
                long
            } else {
                long[..rr * l].to_vec()
            };
            (short, vt)
        };
        Some(finish_seq(u, &top.sig, vt, m, n, rr))
    });
    for (slot, f) in out.iter_mut().zip(done) {
        if let Some(f) = f {
            *slot = Some(Got::Factors(f));
        }
    }
    tracing::trace!(
        "gpu rsvd: factors assembled {:.4} s after the read back",
        t2.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// The first `c` of the `cols` columns of a row-major `rows × cols` matrix.
fn trim_cols(x: &[f32], rows: usize, cols: usize, c: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|i| x[i * cols..i * cols + c].iter().copied())
        .collect()
}

/// One group on the careful path (every orthonormalisation's Gram read back, the decisions
/// and the small factorizations on the host in `f64`, the CPU's restart and SVD fallback):
/// upload, the Krylov basis and `Bᵀ`, the SVDs of `Bᵀ` on the CPU, `U = Q·U_B` on the
/// device. `index[i]` names matrix `i` in errors.
fn careful_group(
    ctx: &Ctx,
    mats: &[MatrixRef<'_>],
    blocks: &[(usize, usize)],
    omega: &wgpu::Buffer,
    shape: KrylovShape,
    want: &Want,
    index: &[usize],
) -> GpuResult<Vec<Got>> {
    let (b, k) = (shape.block, shape.width());
    let (m, n) = mats[0].shape();
    let tall = m > n;
    let (sd, l) = (m.min(n), m.max(n));
    let r = factor_rank(want);
    // Device section 1: upload, the Krylov basis and Bᵀ = Aᵀ·Q (l × k per matrix).
    let t0 = std::time::Instant::now();
    let (grp, q, bts) = ctx.run(|| {
        let mut grp = super::device::in_turn(|| Group::upload_short_first(ctx, mats, blocks))?;
        if !grp.finite {
            return Err(non_finite(mats, |i| index[i]));
        }
        let t_up = t0.elapsed().as_secs_f64();
        let mut s = Session::new(ctx);
        grp.orient(&mut s)?;
        let (q, bt) = grp.krylov(&mut s, omega, shape, None)?;
        let bts: Vec<f32> = s.read(&bt.bufs[0], 0, (grp.g * l * k) as u64)?;
        tracing::debug!(
            "gpu rsvd {}×{m}×{n} b={b} k={k} (careful): upload {t_up:.4} s, Krylov basis and \
             Bᵀ {:.4} s",
            grp.g,
            t0.elapsed().as_secs_f64() - t_up
        );
        Ok((grp, q, bts))
    })?;
    // CPU, in parallel: the SVDs of Bᵀ.
    let xs: Vec<Vec<f64>> = (0..grp.g)
        .map(|i| to_f64(&bts[i * l * k..(i + 1) * l * k]))
        .collect();
    let svds = small_svds(&xs, l, k, want, index)?;
    let mut out = Vec::with_capacity(grp.g);
    match want {
        Want::Spectrum(kk) => {
            for (_, sv, _) in &svds {
                out.push(Got::Spectrum(
                    sv.iter().take(*kk).map(|&x| x as f32).collect(),
                ));
            }
        }
        Want::Factors(_) => {
            // Bᵀ = Vb S Ubᵀ ⇔ B = Ub S Vbᵀ; U = Q · Ub[:, :r] on the device.
            let ubs: Vec<&faer::Mat<f64>> = svds.iter().map(|(_, _, ub)| ub).collect();
            let ub = leading_columns(&ubs, k, r);
            // Device section 2.
            let us = ctx.run(|| {
                let ub_buf = ctx.upload(&[&ub[..]], "small singular vectors")?;
                let mut s = Session::new(ctx);
                let u = record_u(&grp, &mut s, &q, &ub_buf, k, r)?;
                grp.read_all::<f32>(&mut s, &u)
            })?;
            for (short, (vb, sv, _)) in us.into_iter().zip(&svds) {
                let rr = r.min(sv.len());
                let short = if rr == r {
                    short
                } else {
                    trim_cols(&short, sd, r, rr)
                };
                // V_B (l × rr), row-major.
                let mut long = vec![0.0f32; l * rr];
                for i in 0..l {
                    for c in 0..rr {
                        long[i * rr + c] = vb[(i, c)] as f32;
                    }
                }
                let (u, vt) = if tall {
                    (long, transpose_rm(&short, sd, rr))
                } else {
                    (short, transpose_rm(&long, l, rr))
                };
                out.push(Got::Factors(finish(u, &sv[..rr], vt, m, n, rr)));
            }
        }
    }
    Ok(out)
}

/// The Gram matrices of the short side of every matrix of a group, `[g][s][s]` `f64` on the
/// device (`WᵀW` for tall matrices, `W·Wᵀ` for wide ones; needs `ctx.f64`).
fn short_gram_f64(
    grp: &Group<'_>,
    s: &mut Session<'_>,
    m: usize,
    n: usize,
) -> GpuResult<wgpu::Buffer> {
    let wide = m <= n;
    let sd = m.min(n);
    let gram = grp
        .ctx
        .buffer((grp.g * sd * sd * 8) as u64, "short-side Gram")?;
    if wide {
        // G[a-block rows, b-block rows] = W_a · W_bᵀ.
        for (a, &(ra, rows_a)) in grp.blocks.iter().enumerate() {
            for (b, &(rb, rows_b)) in grp.blocks.iter().enumerate() {
                let g = Gemm::new(
                    Operand::new(&grp.w[a], n, rows_a * n),
                    Operand::new(&grp.w[b], n, rows_b * n).t(),
                    Output::new(&gram, ra * m + rb, m, m * m),
                    (rows_a, rows_b, n),
                    grp.g,
                );
                record(s, &g.f64(true))?;
            }
        }
    } else {
        let w = Tall {
            bufs: grp.w.clone(),
            rows: grp.blocks.iter().map(|b| b.1).collect(),
            cols: n,
            f64: false,
        };
        grp.gram(s, &w, &gram)?;
    }
    Ok(gram)
}

/// The short-side Grams of a group as read back: `f64` (`[g][sd][sd]`), or the upper
/// triangles [`record_gram`] wrote (`[g][sd][sd]` entries of two words; `true`: `f64` values,
/// else double-`f32` pairs).
enum ShortGrams {
    F64(Vec<f64>),
    Upper(Vec<u32>, bool),
}

impl ShortGrams {
    /// Gram `i` (`sd × sd`, row-major `f64`).
    fn get(&self, i: usize, sd: usize) -> Vec<f64> {
        match self {
            ShortGrams::F64(all) => all[i * sd * sd..(i + 1) * sd * sd].to_vec(),
            ShortGrams::Upper(raw, f64) => gram_from_words(raw, i, sd, *f64),
        }
    }
}

/// Whether [`short_grams`] can form the Grams of `m × n` matrices stored in `blocks` row
/// blocks: without `f64`, a wide matrix (whose Gram pairs rows of different buffers) must be
/// in one block.
fn short_grams_fit(ctx: &Ctx, m: usize, n: usize, blocks: usize) -> bool {
    ctx.f64 || m > n || blocks == 1
}

/// The short-side Gram of every matrix of the group, read back: accumulated in `f64` where
/// the device has `f64` GEMMs, else by [`record_gram`] (`f64` where [`Ctx::f64_gram`], else
/// double-`f32` within ~1e-13 relative of the `f64` one). Needs [`short_grams_fit`].
fn short_grams(grp: &Group<'_>, s: &mut Session<'_>, m: usize, n: usize) -> GpuResult<ShortGrams> {
    let (g, sd) = (grp.g, m.min(n));
    if grp.ctx.f64 {
        let gram = short_gram_f64(grp, s, m, n)?;
        return Ok(ShortGrams::F64(s.read(&gram, 0, (g * sd * sd) as u64)?));
    }
    if !short_grams_fit(grp.ctx, m, n, grp.blocks.len()) {
        return Err(device_err(
            "the upper-triangle Gram of a wide matrix needs it in one row block",
        ));
    }
    let pairs = grp
        .ctx
        .buffer((g * sd * sd * 8) as u64, "short-side Gram (upper triangle)")?;
    if m <= n {
        // The Gram of W's rows: X = Wᵀ (n × m), read transposed.
        let at = Gram2 {
            n,
            k: m,
            ld: n,
            stride: m * n,
            off: 0,
            tr: true,
            acc: false,
        };
        record_gram(s, &grp.w[0], &pairs, &at, g)?;
    } else {
        for (b, &(_, rows)) in grp.blocks.iter().enumerate() {
            let at = Gram2 {
                n: rows,
                k: n,
                ld: n,
                stride: rows * n,
                off: 0,
                tr: false,
                acc: b > 0,
            };
            record_gram(s, &grp.w[b], &pairs, &at, g)?;
        }
    }
    Ok(ShortGrams::Upper(
        s.read(&pairs, 0, (g * sd * sd * 2) as u64)?,
        grp.ctx.f64_gram,
    ))
}

/// Top-`rank` factors through the Gram matrix of the short side (the CPU's `rsvd::gram_one`
/// on the device): the Grams on the device ([`short_grams`]: `f64` or double-`f32`), their
/// eigendecompositions on the CPU in `f64` (one thread per matrix), the long side `W·E/σ` on
/// the device (accumulated in `f64` where the device has it, else in `f32`). Wide matrices
/// split into row blocks on a device without `f64` take the CPU's route.
pub(super) fn gram_path(
    ctx: &Ctx,
    batch: &[MatrixRef<'_>],
    rank: usize,
) -> GpuResult<Vec<Factors>> {
    let (m, n) = batch[0].shape();
    let wide = m <= n;
    let sd = m.min(n);
    let r = rank.min(sd);
    let (m64, n64, r64, s64) = (m as u64, n as u64, r as u64, sd as u64);
    // Grams: 8 bytes an element (f64, or a double-f32 pair); the long side f64 or f32.
    let el = if ctx.f64 { 8 } else { 4 };
    let needs = if wide {
        Needs {
            row_bytes: 4 * n64,
            side_bytes: (8 * s64 * s64).max(el * n64 * r64),
            per_matrix: 4 * m64 * n64 + 8 * s64 * s64 + 4 * m64 * r64 + el * n64 * r64,
            shared: 0,
        }
    } else {
        Needs {
            row_bytes: (4 * n64).max(el * r64),
            side_bytes: (8 * s64 * s64).max(4 * n64 * r64),
            per_matrix: 4 * m64 * n64 + 8 * s64 * s64 + 4 * n64 * r64 + el * m64 * r64,
            shared: 0,
        }
    };
    let plan = plan(ctx, batch.len(), m, &needs)?;
    if !short_grams_fit(ctx, m, n, plan.blocks.len()) {
        super::device::pass_turn();
        return per_matrix(batch, |w| gram_one(w, rank));
    }
    let f64 = ctx.f64;
    let mut out = Vec::with_capacity(batch.len());
    for (gi, mats) in batch.chunks(plan.g).enumerate() {
        let base = gi * plan.g;
        // Device section 1: upload, short-side Grams.
        let t0 = std::time::Instant::now();
        // The upload, outside the device lock: it may overlap another thread's device work.
        let reserved = ctx.scoped(|| Group::reserve(ctx, mats, &plan.blocks, false))?;
        let grp = super::device::in_turn(|| {
            ctx.scoped(|| Group::fill(ctx, mats, &plan.blocks, reserved))
        })?;
        let t_up = t0.elapsed().as_secs_f64();
        let (grp, gs) = ctx.run(|| {
            let mut s = Session::new(ctx);
            let gs = short_grams(&grp, &mut s, m, n)?;
            tracing::debug!(
                "gpu gram path {}×{m}×{n}: upload {t_up:.4} s, Grams + read {:.4} s",
                grp.g,
                t0.elapsed().as_secs_f64() - t_up
            );
            Ok((grp, gs))
        })?;
        let t1 = std::time::Instant::now();
        // CPU, in parallel: the eigendecompositions (one thread each, so that a matrix gets
        // the same bits alone or in a batch).
        // Per matrix: eigenvectors E (s × r), σ, and E·diag(1/σ) for the long side.
        type Eig = (Vec<f64>, Vec<f32>, Vec<f32>);
        let eigs: Vec<Option<Result<Eig, ComputeError>>> = super::device::fifo_map(grp.g, |i| {
            let g = gs.get(i, sd);
            let top = top_eigen_seq(&g, sd, r).map_err(|reason| ComputeError::Numerical {
                index: base + i,
                reason,
            })?;
            let mut scaled = vec![0.0f32; sd * r];
            for a in 0..sd {
                for l in 0..r {
                    scaled[a * r + l] = (top.e[(a, l)] * top.inv[l]) as f32;
                }
            }
            Ok((top.sig, top.short, scaled))
        });
        drop(gs);
        let eigs = eigs
            .into_iter()
            .map(|got| got.unwrap_or_else(|| Err(device_err("an eigendecomposition did not run"))))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            "gpu gram path: CPU eigendecompositions {:.4} s",
            t1.elapsed().as_secs_f64()
        );
        // Device section 2: the long side, W·E/σ (tall) or Wᵀ·E/σ (wide).
        let t2 = std::time::Instant::now();
        let longs: Vec<Vec<f32>> = ctx.run(|| {
            let mut s = Session::new(ctx);
            let long = if wide {
                // E follows W's row blocks; long = Σ_b W_bᵀ · E_b (n × r).
                let e = Tall {
                    bufs: grp
                        .blocks
                        .iter()
                        .map(|&(r0, rows)| {
                            let parts: Vec<&[f32]> = eigs
                                .iter()
                                .map(|(_, _, sc)| &sc[r0 * r..(r0 + rows) * r])
                                .collect();
                            ctx.upload(&parts, "eigenvectors")
                        })
                        .collect::<GpuResult<Vec<_>>>()?,
                    rows: grp.blocks.iter().map(|b| b.1).collect(),
                    cols: r,
                    f64: false,
                };
                let long = grp.side(n, r, f64)?;
                grp.wt_times(&mut s, &e, Output::new(&long.bufs[0], 0, r, n * r), f64)?;
                long
            } else {
                // long_b = W_b · E (m × r by blocks).
                let parts: Vec<&[f32]> = eigs.iter().map(|(_, _, sc)| &sc[..]).collect();
                let e = ctx.upload(&parts, "eigenvectors")?;
                let long = grp.tall(r, f64)?;
                grp.w_times(&mut s, Operand::new(&e, r, n * r), &long)?;
                long
            };
            if f64 {
                Ok(grp
                    .read_all::<f64>(&mut s, &long)?
                    .into_iter()
                    .map(|l| l.iter().map(|&x| x as f32).collect())
                    .collect())
            } else {
                grp.read_all::<f32>(&mut s, &long)
            }
        })?;
        tracing::debug!(
            "gpu gram path: long side and read back {:.4} s",
            t2.elapsed().as_secs_f64()
        );
        for ((sig, short, _), long) in eigs.into_iter().zip(longs) {
            out.push(gram_factors(&sig, short, long, m, n));
        }
    }
    Ok(out)
}

/// Every singular value of `w` from the eigenvalues of the short-side Gram matrix computed
/// on the device ([`short_grams`]; the CPU's route where that does not fit).
pub(super) fn full_spectrum(ctx: &Ctx, w: MatrixRef<'_>) -> GpuResult<Vec<f32>> {
    let (m, n) = w.shape();
    let sd = m.min(n);
    let (m64, n64, s64) = (m as u64, n as u64, sd as u64);
    let needs = Needs {
        row_bytes: 4 * n64,
        side_bytes: 8 * s64 * s64,
        per_matrix: 4 * m64 * n64 + 8 * s64 * s64,
        shared: 0,
    };
    let plan = plan(ctx, 1, m, &needs)?;
    if !short_grams_fit(ctx, m, n, plan.blocks.len()) {
        return crate::compute::Backend::full_spectrum(&crate::compute::Cpu, w);
    }
    let gs = ctx.run(|| {
        let grp = Group::upload(ctx, &[w], &plan.blocks)?;
        let mut s = Session::new(ctx);
        short_grams(&grp, &mut s, m, n)
    })?;
    gram_singular_values(&gs.get(0, sd), sd)
}
