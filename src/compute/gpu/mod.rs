//! The GPU backend: [`Backend`] on wgpu compute shaders (WGSL, in `shaders/`).
//!
//! # Device
//! [`Gpu::new`] takes the best hardware adapter wgpu finds on Vulkan, Metal or DX12 (discrete,
//! then integrated, virtual, other); [`Gpu::new_with`] can also accept a software adapter
//! (Mesa lavapipe, which runs the same shaders on the CPU — what tests and CI use), pick an
//! adapter by name, set the memory budget, lower the binding limit or the GEMM tiles.
//! [`Gpu::adapters`] lists what wgpu sees. The device is created with the adapter's own limits
//! (largest storage binding and buffer) and `SHADER_F64` where available.
//!
//! # What runs where
//! - GEMM (shaders/gemm.wgsl): tiled (workgroup-memory tiles, register blocks, vec4 loads where
//!   aligned), batched, transposes as pipeline constants, deterministic split-K
//!   (shaders/reduce.wgsl). Tile sizes: [`GemmTiles`].
//! - Randomized SVD and spectra: the CPU algorithm with the same Ω, sketch width, power
//!   iterations and dispatch rules (exact below [`SvdOptions::exact_below`] or when the sketch
//!   covers the short side — delegated to the CPU's `f64` SVD; the Gram-eigendecomposition path
//!   when `4k ≥ min(m, n)`); the large products on the device in `f32`, Gram matrices on the
//!   device in `f64`, the small factorizations on the CPU in `f64` (see `rsvd.rs`).
//! - `full_spectrum`: the short-side Gram on the device in `f64`, eigenvalues on the CPU.
//! - Masks (`mask.rs`): thresholds by radix select with histogram shaders, N:M and norms in
//!   shaders, tie-breaking on the host — identical to the CPU backend.
//! - `svd_exact`: the CPU's exact `f64` SVD (it is the reference, and meant for small
//!   matrices).
//!
//! Without `SHADER_F64` (e.g. Metal) Cholesky-QR Grams are accumulated in `f32` and every basis
//! is checked orthonormal by a further Gram before it is accepted; the Gram path, the full
//! spectrum and the row/column norms then run on the CPU.
//!
//! # Agreement with the CPU backend (tested on lavapipe; see `tests.rs`)
//! Stated tolerances (what the tests assert) and, in brackets, the worst seen on lavapipe:
//! - GEMM: `|C_gpu − C_cpu| ≤ 1e-5 · √k · Σ_l |a_il·b_lj|` elementwise (`f32` rounding of two
//!   summation orders) [2e-8].
//! - Randomized and Gram-path factors: reconstruction error `‖W − U·S·Vᵀ‖/‖W‖` within `1e-4`
//!   relative of the CPU's, or `3e-6` absolute where the CPU's is at `f32` rounding level
//!   (exactly low-rank inputs) [3.3e-7 relative; 8e-8 absolute]; singular values within
//!   `1e-4 · σ₁` [6e-8, one `f32` ulp]; `U`, `Vᵀ` orthonormal to `1e-4` over the triplets
//!   above `1e-3 σ₁` [9e-7]. The vectors themselves agree only up to the conditioning of each
//!   singular subspace, like two runs of any SVD.
//! - Spectra (randomized): within `1e-4 · σ₁`; `full_spectrum`: within `1e-5 · σ₁` [0: the
//!   `f64` Gram differs from the CPU's in the last bits only].
//! - Masks, thresholds, row/column norms: identical, bit for bit (norms: on devices that keep
//!   `f32` subnormals; a device that flushes them may differ on subnormal inputs).
//! - With `f32` Grams ([`GpuOptions::disable_f64`]) the same tolerances hold on the tested
//!   spectra (κ(sketch) up to ~10³ per multiply).
//!
//! # Memory
//! A memory budget ([`GpuOptions::memory_budget`]; default 1 GiB on a software adapter, 4 GiB
//! on hardware) bounds what one operation keeps resident: same-shape batches are factorized in
//! groups that fit it, each matrix uploaded once and resident for its whole factorization.
//! A tensor larger than one storage binding (lavapipe: 128 MiB; GPT-2's 50257 × 768 `f32` table
//! is 154 MB) is split into blocks of rows. Not split: the column-side buffers of one matrix
//! (the `n × k` sketch products, the `min(m, n)²` Gram of the Gram path) must each fit one
//! binding — at 128 MiB that is `n · k ≤ 32 M` elements — else the call fails with
//! [`ComputeError::Device`].
//!
//! # Determinism
//! The same input gives bit-identical output on the same device with the same options: no
//! floating-point atomics (split-K partial products are summed in order by a separate pass,
//! row blocks accumulate in order; histogram counts are integer atomics), and all work
//! splitting is a function of the shapes, the tiles and the limits. A matrix gets the same bits
//! alone or in any batch (split-K is decided per matrix, never per batch).
//!
//! # Concurrency
//! Calls may come from any thread, rayon workers included. Device work runs in short sections
//! serialised by a lock, and a section never waits on rayon, so nested parallelism cannot
//! deadlock; the CPU steps between sections (SVDs of `Bᵀ`, eigendecompositions, applying
//! masks) run in parallel on the current rayon pool.
//!
//! # Errors
//! No method panics on caller input. Caller errors are the CPU backend's (same variants, same
//! checks, same order); device failures — no adapter, lost device, out of memory, a tensor
//! beyond the limits — are [`ComputeError::Device`]. `row_norms` / `col_norms`, which cannot
//! return an error, fall back to the CPU if the device fails.

mod device;
mod gemm;
mod mask;
mod rsvd;
#[cfg(test)]
mod tests;

use rayon::prelude::*;

pub use device::{AdapterInfoSummary, GpuOptions};
pub use gemm::GemmTiles;

use super::rsvd::{exact_one, exact_spectrum, gram_one};
use super::{
    Backend, ComputeError, Cpu, Factors, MaskPattern, MaskResult, Matrix, MatrixRef, SvdOptions,
};

/// The GPU backend (wgpu). Operations on one `Gpu` run one at a time (they may be called from
/// any thread); each keeps its buffers only while it runs.
pub struct Gpu {
    ctx: device::Ctx,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.ctx.info)
            .field("binding_limit", &self.ctx.binding_limit)
            .field("memory_budget", &self.ctx.budget)
            .field("f64", &self.ctx.f64)
            .field("tiles", &self.ctx.tiles)
            .finish()
    }
}

impl Gpu {
    /// The GPU backend on the best hardware adapter, with default options. Errors
    /// ([`ComputeError::Device`]) when there is none.
    pub fn new() -> Result<Gpu, ComputeError> {
        Gpu::new_with(GpuOptions::default())
    }

    /// The GPU backend with explicit options (software adapters, budget, limits, tiles).
    /// Errors ([`ComputeError::Device`]) when no adapter fits the options, the device cannot
    /// be created, or the GEMM tiles do not fit the adapter.
    pub fn new_with(opts: GpuOptions) -> Result<Gpu, ComputeError> {
        let ctx = device::Ctx::new(&opts)?;
        let name = format!("gpu:{}", ctx.info.name);
        Ok(Gpu { ctx, name })
    }

    /// Every adapter wgpu can see (Vulkan, Metal, DX12), in enumeration order.
    pub fn adapters() -> Vec<AdapterInfoSummary> {
        device::adapters().into_iter().map(|(_, s)| s).collect()
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterInfoSummary {
        &self.ctx.info
    }

    /// The memory budget in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.ctx.budget
    }

    /// The largest storage binding used, in bytes; larger tensors are split along rows.
    pub fn binding_limit(&self) -> u64 {
        self.ctx.binding_limit
    }

    /// Whether shaders use `f64` (Gram matrices, norms).
    pub fn has_f64(&self) -> bool {
        self.ctx.f64
    }

    /// The GEMM tile configuration in use.
    pub fn tiles(&self) -> GemmTiles {
        self.ctx.tiles
    }
}

/// Elements checked per task for NaN/Inf.
const FINITE_CHUNK: usize = 1 << 16;

/// The first non-finite element of `w`, as the CPU backend reports it.
fn check_finite(w: MatrixRef<'_>, index: usize) -> Result<(), ComputeError> {
    let data = w.data();
    let bad = data.par_chunks(FINITE_CHUNK).any(|c| {
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

/// One shape for all, then all finite (the CPU's order of checks). `None` for an empty batch.
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

/// The exact path's rule ([`SvdOptions::exact_below`]).
fn use_exact((m, n): (usize, usize), k: usize, opts: &SvdOptions) -> bool {
    let p = m.min(n);
    p <= opts.exact_below || k >= p
}

fn numerical(index: usize) -> impl Fn(String) -> ComputeError {
    move |reason| ComputeError::Numerical { index, reason }
}

impl Backend for Gpu {
    fn name(&self) -> &str {
        &self.name
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
            if self.ctx.f64 {
                return rsvd::gram_path(&self.ctx, batch, rank);
            }
            return batch
                .par_iter()
                .enumerate()
                .map(|(i, w)| gram_one(*w, rank).map_err(numerical(i)))
                .collect();
        }
        let got = rsvd::randomized(
            &self.ctx,
            batch,
            k,
            opts.power_iters,
            opts.seed,
            rsvd::Want::Factors(rank),
        )?;
        Ok(got
            .into_iter()
            .filter_map(|g| match g {
                rsvd::Got::Factors(f) => Some(f),
                rsvd::Got::Spectrum(_) => None,
            })
            .collect())
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
        let got = rsvd::randomized(
            &self.ctx,
            batch,
            sketch,
            opts.power_iters,
            opts.seed,
            rsvd::Want::Spectrum(kk),
        )?;
        Ok(got
            .into_iter()
            .filter_map(|g| match g {
                rsvd::Got::Spectrum(s) => Some(s),
                rsvd::Got::Factors(_) => None,
            })
            .collect())
    }

    fn gemm(
        &self,
        a: MatrixRef<'_>,
        b: MatrixRef<'_>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Matrix, ComputeError> {
        let (ar, ac) = if trans_a {
            (a.cols(), a.rows())
        } else {
            a.shape()
        };
        let (br, bc) = if trans_b {
            (b.cols(), b.rows())
        } else {
            b.shape()
        };
        if ac != br {
            return Err(ComputeError::ShapeMismatch {
                what: "gemm: rows of op(b) must equal columns of op(a)",
                index: 1,
                expected: (ac, bc),
                found: (br, bc),
            });
        }
        let expected = ar.checked_mul(bc).ok_or(ComputeError::DataLength {
            rows: ar,
            cols: bc,
            len: 0,
            expected: usize::MAX,
        })?;
        if expected == 0 {
            return Matrix::new(ar, bc, Vec::new());
        }
        self.ctx
            .run(|| gemm::gemm_host(&self.ctx, a, b, trans_a, trans_b))
    }

    fn magnitude_mask(
        &self,
        w: MatrixRef<'_>,
        sparsity: f32,
        pattern: MaskPattern,
    ) -> Result<MaskResult, ComputeError> {
        check_finite(w, 0)?;
        mask::magnitude_mask(&self.ctx, w, sparsity, pattern)
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
        mask::global_threshold(&self.ctx, batch, sparsity)
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
        mask::global_masks(&self.ctx, batch, sparsity)
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
        if !self.ctx.f64 {
            return Cpu.full_spectrum(w);
        }
        rsvd::full_spectrum(&self.ctx, w)
    }

    fn row_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        self.norms(w, true)
    }

    fn col_norms(&self, w: MatrixRef<'_>) -> Vec<f32> {
        self.norms(w, false)
    }
}

impl Gpu {
    fn norms(&self, w: MatrixRef<'_>, rows: bool) -> Vec<f32> {
        if self.ctx.f64 {
            match mask::sq_norms(&self.ctx, w, rows) {
                Ok(sq) => return sq.into_iter().map(|s| s.sqrt() as f32).collect(),
                Err(e) => tracing::warn!("GPU norms failed ({e}); computing them on the CPU"),
            }
        }
        if rows {
            Cpu.row_norms(w)
        } else {
            Cpu.col_norms(w)
        }
    }
}
