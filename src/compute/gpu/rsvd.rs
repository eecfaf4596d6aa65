//! Randomized SVD, spectra and the Gram-eigendecomposition path on the GPU.
//!
//! The algorithm is the CPU backend's (see `compute::rsvd`): the same Ω (from
//! `rng::gaussian_f32` and the seed), the same block Krylov basis (block width, depth, two
//! block Gram–Schmidt projections with a Cholesky-QR2 orthonormalisation after each). What
//! runs where:
//! - on the GPU, in `f32`: `W·X`, `Wᵀ·X`, `Y·R⁻¹`, the projections `Y −= Qⱼ·(Qⱼᵀ·Y)`, `Q·U_B`
//!   (the GEMM of gemm.wgsl, batched over the matrices of a group);
//! - on the GPU, accumulated in `f64` where the adapter has `SHADER_F64`: the Gram matrices
//!   `YᵀY` of Cholesky-QR (else in `f32`, with the check described at `Group::orth`), the Gram of
//!   the short side and the long-side products of the Gram path;
//! - on the CPU, in `f64`: the `k × k` Cholesky factorizations and triangular inverses, the SVD
//!   of `Bᵀ` (`n × k`), the eigendecompositions of the Gram path.
//!
//! Each matrix is uploaded once and stays resident for its whole factorization; only `k × k`
//! Grams, `Bᵀ` and the final factors come back. Same-shape matrices are processed in groups
//! that fit the memory budget; a matrix larger than a storage binding is split into blocks of
//! rows (every m-side buffer follows the same blocks, and products over m accumulate the blocks
//! in order).

use rayon::prelude::*;

use super::device::{device_err, Ctx, GpuResult, Session};
use super::gemm::{record, Gemm, Operand, Output};
use crate::compute::dense::{cholesky_upper, inv_upper, to_f64};
use crate::compute::rng::gaussian_f32;
use crate::compute::rsvd::{
    finish, gram_factors, gram_singular_values, max_dev_from_identity, shifted_cholesky, small_svd,
    svd_basis, top_eigen, KrylovShape, Orth, MAX_PASSES, MAX_REORTH, ONE_PASS_KAPPA, REORTH_KEEP,
    RESTART_SEED,
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
/// the basis blocks, two work blocks and `U` on the m side; `Bᵀ` on the n side; Grams,
/// triangular inverses and projection coefficients.
pub(super) fn randomized_needs(m: usize, n: usize, shape: KrylovShape) -> Needs {
    let (m64, n64) = (m as u64, n as u64);
    let (b, k) = (shape.block as u64, shape.width() as u64);
    Needs {
        row_bytes: 4 * n64.max(k),
        side_bytes: (4 * n64 * k).max(8 * k * k),
        per_matrix: 4 * (m64 * n64 + m64 * (2 * k + 2 * b) + n64 * k) + 16 * b * b + 8 * k * k,
        shared: 4 * n64 * b,
    }
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
    let avail = ctx.budget.saturating_sub(needs.shared);
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

/// One group of matrices resident on the device.
struct Group<'c> {
    ctx: &'c Ctx,
    g: usize,
    n: usize,
    blocks: Vec<(usize, usize)>,
    w: Vec<wgpu::Buffer>,
}

impl<'c> Group<'c> {
    fn upload(ctx: &'c Ctx, mats: &[MatrixRef<'_>], blocks: &[(usize, usize)]) -> GpuResult<Self> {
        let n = mats[0].cols();
        let w = blocks
            .iter()
            .map(|&(r0, rows)| {
                let parts: Vec<&[f32]> = mats
                    .iter()
                    .map(|w| &w.data()[r0 * n..(r0 + rows) * n])
                    .collect();
                ctx.upload(&parts, "weights")
            })
            .collect::<GpuResult<Vec<_>>>()?;
        Ok(Group {
            ctx,
            g: mats.len(),
            n,
            blocks: blocks.to_vec(),
            w,
        })
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
        let (c, c2) = (t.cols, out.cols);
        for (b, &rows) in t.rows.iter().enumerate() {
            let g = Gemm::new(
                Operand::new(&t.bufs[b], c, rows * c),
                Operand::new(small, c2, c * c2),
                Output::new(&out.bufs[b], 0, c2, rows * c2),
                (rows, c2, c),
                self.g,
            );
            record(s, &g.f64(out.f64))?;
        }
        Ok(())
    }

    /// Downloads every matrix of `t` (row-major, `total_rows × cols` each).
    fn read_all<T: bytemuck::Pod>(&self, s: &mut Session<'_>, t: &Tall) -> GpuResult<Vec<Vec<T>>> {
        let reads: Vec<(&wgpu::Buffer, u64, u64)> = t
            .bufs
            .iter()
            .zip(&t.rows)
            .map(|(b, &r)| (b, 0, (self.g * r * t.cols) as u64))
            .collect();
        let blocks = s.read_many::<T>(&reads)?;
        Ok((0..self.g)
            .map(|i| {
                let mut v = Vec::with_capacity(t.total_rows() * t.cols);
                for ((blk, off, len), data) in t.parts(i).into_iter().zip(&blocks) {
                    debug_assert!(blk < blocks.len());
                    v.extend_from_slice(&data[off as usize..(off + len) as usize]);
                }
                v
            })
            .collect())
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

    /// `y −= Qⱼ·(Qⱼᵀ·y)` for every block `Qⱼ` of `basis`, all coefficients from the same `y`
    /// (the CPU's `project_out`); `coef` holds `[block][g][b][b]`.
    fn project_out(
        &self,
        s: &mut Session<'_>,
        y: &Tall,
        basis: &[Tall],
        coef: &wgpu::Buffer,
    ) -> GpuResult<()> {
        let b = y.cols;
        let bb = b * b;
        for (j, q) in basis.iter().enumerate() {
            for (rb, &rows) in y.rows.iter().enumerate() {
                let g = Gemm::new(
                    Operand::new(&q.bufs[rb], b, rows * b).t(),
                    Operand::new(&y.bufs[rb], b, rows * b),
                    Output::new(coef, j * self.g * bb, b, bb),
                    (b, b, rows),
                    self.g,
                );
                record(s, &g.accumulate(rb > 0))?;
            }
        }
        self.subtract(s, y, basis, coef)
    }

    /// `y −= Σⱼ Qⱼ · Cⱼ` with the coefficients `Cⱼ` in `coef` (`[block][g][b][b]`).
    fn subtract(
        &self,
        s: &mut Session<'_>,
        y: &Tall,
        basis: &[Tall],
        coef: &wgpu::Buffer,
    ) -> GpuResult<()> {
        let b = y.cols;
        let bb = b * b;
        for (j, q) in basis.iter().enumerate() {
            let c = Operand {
                off: (j * self.g * bb) as u64,
                ..Operand::new(coef, b, bb)
            };
            for (rb, &rows) in y.rows.iter().enumerate() {
                let g = Gemm::new(
                    Operand::new(&q.bufs[rb], b, rows * b),
                    c,
                    Output::new(&y.bufs[rb], 0, b, rows * b),
                    (rows, b, b),
                    self.g,
                );
                record(s, &g.subtract())?;
            }
        }
        Ok(())
    }

    /// The block Krylov range finder (the CPU's `rsvd::krylov`): the basis blocks `Q₀ … Q_d`
    /// (m-side, `b` columns each) of `span[W·Ω, (W·Wᵀ)·W·Ω, …]` for `omega` (`n × b`, shared),
    /// and `Bᵀ = Wᵀ·Q` (n-side, `(d + 1)·b` columns, block `i` = `Wᵀ·Qᵢ`).
    fn krylov(
        &self,
        s: &mut Session<'_>,
        omega: &wgpu::Buffer,
        shape: KrylovShape,
    ) -> GpuResult<(Vec<Tall>, Tall)> {
        let (b, width, n) = (shape.block, shape.width(), self.n);
        let bt = self.side(n, width, false)?;
        let coef = self.ctx.buffer(
            (shape.depth.max(1) * self.g * b * b * 4) as u64,
            "projection coefficients",
        )?;
        let mut spare = self.tall(b, false)?;
        let mut cur = self.tall(b, false)?;
        let omega = Operand::new(omega, b, 0);
        self.w_times(s, omega, &cur)?;
        self.orth(s, &mut cur, &mut spare, Orth::Final)?;
        let mut blocks: Vec<Tall> = Vec::with_capacity(shape.depth + 1);
        for i in 0..=shape.depth {
            // Zᵢ = Wᵀ·Qᵢ into columns i·b.. of Bᵀ.
            let zi = Output::new(&bt.bufs[0], i * b, width, n * width);
            self.wt_times(s, &cur, zi, false)?;
            blocks.push(cur);
            if i == shape.depth {
                break;
            }
            cur = self.tall(b, false)?;
            let z = Operand {
                off: (i * b) as u64,
                ..Operand::new(&bt.bufs[0], width, n * width)
            };
            self.w_times(s, z, &cur)?;
            // The first projection's coefficients from the n side: Qⱼᵀ·W·Wᵀ·Qᵢ = Zⱼᵀ·Zᵢ.
            let bb = b * b;
            for j in 0..=i {
                let zj = Operand {
                    off: (j * b) as u64,
                    ..Operand::new(&bt.bufs[0], width, n * width)
                };
                let g = Gemm::new(
                    zj.t(),
                    z,
                    Output::new(&coef, j * self.g * bb, b, bb),
                    (b, b, n),
                    self.g,
                );
                record(s, &g)?;
            }
            self.subtract(s, &cur, &blocks, &coef)?;
            self.orth_against(s, &mut cur, &mut spare, &blocks, &coef, i)?;
        }
        Ok((blocks, bt))
    }

    /// The CPU's `rsvd::orth_against` for every matrix of the group (`cur` has had its first
    /// projection): an orthonormalisation, then rounds of projection and orthonormalisation
    /// until no matrix's iterate loses more than `1 − REORTH_KEEP` of a
    /// column's squared length; the matrices still losing that much after two rounds continue
    /// from the CPU's Gaussian restart block (the others take the extra rounds too, which
    /// changes them only by rounding).
    fn orth_against(
        &self,
        s: &mut Session<'_>,
        cur: &mut Tall,
        spare: &mut Tall,
        basis: &[Tall],
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
                self.project_out(s, cur, basis, coef)?;
                self.orth(s, cur, spare, Orth::Final)?;
            }
            self.project_out(s, cur, basis, coef)?;
            let kept = self.orth(s, cur, spare, Orth::Final)?;
            lost = kept.iter().map(|&k| k <= REORTH_KEEP).collect();
            if !lost.contains(&true) {
                break;
            }
        }
        Ok(())
    }
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
pub(super) fn randomized(
    ctx: &Ctx,
    batch: &[MatrixRef<'_>],
    shape: KrylovShape,
    opts: &SvdOptions,
    want: Want,
) -> GpuResult<Vec<Got>> {
    let (b, k) = (shape.block, shape.width());
    let (m, n) = batch[0].shape();
    let r = match want {
        Want::Factors(r) => r,
        Want::Spectrum(_) => 0,
    };
    let plan = plan(ctx, batch.len(), m, &randomized_needs(m, n, shape))?;
    let omega = gaussian_f32(opts.seed, n, b);
    let omega_buf = ctx.run(|| ctx.upload(&[&omega[..]], "sketch"))?;
    let mut out = Vec::with_capacity(batch.len());
    for (gi, mats) in batch.chunks(plan.g).enumerate() {
        let base = gi * plan.g;
        // Device section 1: upload, the Krylov basis and Bᵀ = Wᵀ·Q (n × k per matrix).
        let t0 = std::time::Instant::now();
        let (grp, q, bts) = ctx.run(|| {
            let grp = Group::upload(ctx, mats, &plan.blocks)?;
            let t_up = t0.elapsed().as_secs_f64();
            let mut s = Session::new(ctx);
            let (q, bt) = grp.krylov(&mut s, &omega_buf, shape)?;
            let bts: Vec<f32> = s.read(&bt.bufs[0], 0, (grp.g * n * k) as u64)?;
            tracing::debug!(
                "gpu rsvd {}×{m}×{n} b={b} k={k}: upload {t_up:.4} s, Krylov basis and Bᵀ {:.4} s",
                grp.g,
                t0.elapsed().as_secs_f64() - t_up
            );
            Ok((grp, q, bts))
        })?;
        let t1 = std::time::Instant::now();
        // CPU, in parallel: the SVDs of Bᵀ.
        let vectors = matches!(want, Want::Factors(_));
        let svds: Vec<Result<_, ComputeError>> = (0..grp.g)
            .into_par_iter()
            .map(|i| {
                let b = to_f64(&bts[i * n * k..(i + 1) * n * k]);
                small_svd(&b, n, k, r, vectors).map_err(|reason| ComputeError::Numerical {
                    index: base + i,
                    reason,
                })
            })
            .collect();
        let svds = svds.into_iter().collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            "gpu rsvd: CPU SVDs of Bᵀ {:.4} s",
            t1.elapsed().as_secs_f64()
        );
        let t2 = std::time::Instant::now();
        match want {
            Want::Spectrum(kk) => {
                for (_, sv, _) in &svds {
                    out.push(Got::Spectrum(
                        sv.iter().take(kk).map(|&x| x as f32).collect(),
                    ));
                }
            }
            Want::Factors(_) => {
                // Bᵀ = Vb S Ubᵀ ⇔ B = Ub S Vbᵀ; U = Q · Ub[:, :r] on the device.
                let mut ub = vec![0.0f32; grp.g * k * r];
                for (i, (_, sv, u_b)) in svds.iter().enumerate() {
                    let rr = r.min(sv.len());
                    for a in 0..k {
                        for l in 0..rr {
                            ub[i * k * r + a * r + l] = u_b[(a, l)] as f32;
                        }
                    }
                }
                // Device section 2: U = Σⱼ Qⱼ · Ub[j·b.., :r].
                let us = ctx.run(|| {
                    let ub_buf = ctx.upload(&[&ub[..]], "small singular vectors")?;
                    let u = grp.tall(r, false)?;
                    let mut s = Session::new(ctx);
                    for (j, qj) in q.iter().enumerate() {
                        let ubj = Operand {
                            off: (j * b * r) as u64,
                            ..Operand::new(&ub_buf, r, k * r)
                        };
                        for (rb, &rows) in qj.rows.iter().enumerate() {
                            let g = Gemm::new(
                                Operand::new(&qj.bufs[rb], b, rows * b),
                                ubj,
                                Output::new(&u.bufs[rb], 0, r, rows * r),
                                (rows, r, b),
                                grp.g,
                            );
                            record(&mut s, &g.accumulate(j > 0))?;
                        }
                    }
                    grp.read_all::<f32>(&mut s, &u)
                })?;
                tracing::debug!("gpu rsvd: U = Q·Ub {:.4} s", t2.elapsed().as_secs_f64());
                for (u, (vb, sv, _)) in us.into_iter().zip(&svds) {
                    let rr = r.min(sv.len());
                    let mut vt = vec![0.0f32; rr * n];
                    for l in 0..rr {
                        for j in 0..n {
                            vt[l * n + j] = vb[(j, l)] as f32;
                        }
                    }
                    out.push(Got::Factors(finish(u, &sv[..rr], vt, m, n, rr)));
                }
            }
        }
    }
    Ok(out)
}

/// The Gram matrices of the short side of every matrix of a group, `[g][s][s]` `f64` on the
/// device (`WᵀW` for tall matrices, `W·Wᵀ` for wide ones; needs `ctx.f64`).
fn short_gram(grp: &Group<'_>, s: &mut Session<'_>, m: usize, n: usize) -> GpuResult<wgpu::Buffer> {
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

/// Top-`rank` factors through the Gram matrix of the short side (the CPU's `rsvd::gram_one`
/// on the device): Gram and long-side products accumulated in `f64` on the device, the
/// eigendecomposition on the CPU. Needs `ctx.f64`.
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
    let needs = if wide {
        Needs {
            row_bytes: 4 * n64,
            side_bytes: (8 * s64 * s64).max(8 * n64 * r64),
            per_matrix: 4 * m64 * n64 + 8 * s64 * s64 + 4 * m64 * r64 + 8 * n64 * r64,
            shared: 0,
        }
    } else {
        Needs {
            row_bytes: (4 * n64).max(8 * r64),
            side_bytes: (8 * s64 * s64).max(4 * n64 * r64),
            per_matrix: 4 * m64 * n64 + 8 * s64 * s64 + 4 * n64 * r64 + 8 * m64 * r64,
            shared: 0,
        }
    };
    let plan = plan(ctx, batch.len(), m, &needs)?;
    let mut out = Vec::with_capacity(batch.len());
    for (gi, mats) in batch.chunks(plan.g).enumerate() {
        let base = gi * plan.g;
        // Device section 1: upload, short-side Grams.
        let t0 = std::time::Instant::now();
        let (grp, gs) = ctx.run(|| {
            let grp = Group::upload(ctx, mats, &plan.blocks)?;
            let t_up = t0.elapsed().as_secs_f64();
            let mut s = Session::new(ctx);
            let gram = short_gram(&grp, &mut s, m, n)?;
            let gs: Vec<f64> = s.read(&gram, 0, (grp.g * sd * sd) as u64)?;
            tracing::debug!(
                "gpu gram path {}×{m}×{n}: upload {t_up:.4} s, Grams + read {:.4} s",
                grp.g,
                t0.elapsed().as_secs_f64() - t_up
            );
            Ok((grp, gs))
        })?;
        let t1 = std::time::Instant::now();
        // CPU, in parallel: the eigendecompositions.
        // Per matrix: eigenvectors E (s × r), σ, and E·diag(1/σ) for the long side.
        type Eig = (Vec<f64>, Vec<f32>, Vec<f32>);
        let eigs: Vec<Result<Eig, ComputeError>> = (0..grp.g)
            .into_par_iter()
            .map(|i| {
                let g = &gs[i * sd * sd..(i + 1) * sd * sd];
                let top = top_eigen(g, sd, r).map_err(|reason| ComputeError::Numerical {
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
            })
            .collect();
        let eigs = eigs.into_iter().collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            "gpu gram path: CPU eigendecompositions {:.4} s",
            t1.elapsed().as_secs_f64()
        );
        // Device section 2: the long side, W·E/σ (tall) or Wᵀ·E/σ (wide), in f64.
        let longs: Vec<Vec<f64>> = ctx.run(|| {
            let mut s = Session::new(ctx);
            if wide {
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
                let long = grp.side(n, r, true)?;
                grp.wt_times(&mut s, &e, Output::new(&long.bufs[0], 0, r, n * r), true)?;
                grp.read_all::<f64>(&mut s, &long)
            } else {
                // long_b = W_b · E (m × r by blocks).
                let parts: Vec<&[f32]> = eigs.iter().map(|(_, _, sc)| &sc[..]).collect();
                let e = ctx.upload(&parts, "eigenvectors")?;
                let long = grp.tall(r, true)?;
                grp.w_times(&mut s, Operand::new(&e, r, n * r), &long)?;
                grp.read_all::<f64>(&mut s, &long)
            }
        })?;
        for ((sig, short, _), long) in eigs.into_iter().zip(longs) {
            let long_f: Vec<f32> = long.iter().map(|&x| x as f32).collect();
            out.push(gram_factors(&sig, short, long_f, m, n));
        }
    }
    Ok(out)
}

/// Every singular value of `w` from the eigenvalues of the short-side Gram matrix computed
/// on the device in `f64` (needs `ctx.f64`).
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
    let g: Vec<f64> = ctx.run(|| {
        let grp = Group::upload(ctx, &[w], &plan.blocks)?;
        let mut s = Session::new(ctx);
        let gram = short_gram(&grp, &mut s, m, n)?;
        s.read(&gram, 0, s64 * s64)
    })?;
    gram_singular_values(&g, sd)
}
