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
//!   (shaders/reduce.wgsl). Tile sizes: [`GemmTiles`]; products with at most 32 columns (the
//!   Krylov blocks) take [`GemmTiles::NARROW`] unless the tiles were chosen explicitly.
//! - Randomized SVD and spectra: the CPU algorithm with the same Ω, sketch width, power
//!   iterations and dispatch rules (exact below [`SvdOptions::exact_below`] or when the sketch
//!   covers the short side — delegated to the CPU's `f64` SVD; the Gram-eigendecomposition path
//!   when `4k ≥ min(m, n)`); the large products on the device in `f32`, Gram matrices on the
//!   device in `f64` (or `f32`, below). Randomized path, resident tier: every Cholesky-QR step
//!   of the Krylov basis decided on the device (shaders/chol.wgsl), the Gram of `Bᵀ` in
//!   double-`f32` (shaders/gram2.wgsl), its eigendecomposition on the CPU in `f64` — two round
//!   trips per group; matrices it flags (rank-deficient iterates) are redone on the careful
//!   tier, with every small factorization on the CPU in `f64` (see `rsvd.rs`). Gram path: the
//!   short-side Gram on the device (`f64`, or double-`f32` without it), the `f64`
//!   eigendecompositions on the CPU (one thread per matrix), the long side `W·E/σ` on the
//!   device.
//! - `full_spectrum`: the short-side Gram on the device (`f64` or double-`f32`), eigenvalues on
//!   the CPU.
//! - Masks (`mask.rs`): thresholds by radix select with histogram shaders, N:M and norms in
//!   shaders, tie-breaking on the host — identical to the CPU backend.
//! - `svd_exact`: the CPU's exact `f64` SVD (it is the reference, and meant for small
//!   matrices).
//!
//! Without `SHADER_F64` (e.g. Metal, and hardware adapters by default) Cholesky-QR Grams are
//! accumulated in `f32` and every basis is checked orthonormal by a further Gram before it is
//! accepted; the short-side Grams of the Gram path and the full spectrum are double-`f32`
//! (a wide matrix split into row blocks takes the CPU's route), and the row/column norms run
//! on the CPU.
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
//! - With `f32` Grams (the default on hardware adapters; [`GpuOptions::disable_f64`] forces
//!   them, [`GpuOptions::prefer_f64`] avoids them) the same tolerances hold on the tested
//!   spectra (κ(sketch) up to ~10³ per multiply).
//!
//! # Memory
//! A memory budget ([`GpuOptions::memory_budget`]; default 1 GiB on a software adapter, 4 GiB
//! on hardware) bounds what one operation keeps resident (besides the split-K scratch of at
//! most 1/8 of it, and the Gaussian sketches, kept per shape for the device's life):
//! same-shape batches are factorized in groups that fit it, each matrix uploaded once and
//! resident for its whole factorization; the concurrent jobs of [`Backend::lowrank_many`]
//! share it. Uploads keep up to 1/8 of it in host staging buffers for reuse.
//! A tensor larger than one storage binding (lavapipe: 128 MiB; GPT-2's 50257 × 768 `f32` table
//! is 154 MB) is split into blocks of rows (the randomized path stores a tall matrix transposed,
//! short side first as the CPU factorizes it: uploaded by blocks of its rows, transposed on the
//! device into blocks of the transpose's rows). Not split: the long-side buffers of one matrix
//! (the `max(m, n) × k` products `Bᵀ`) must each fit one binding — at 128 MiB that is
//! `max(m, n) · k ≤ 32 M` elements — else the batch runs on the CPU backend (same algorithm,
//! logged); the `min(m, n)²` Gram of the Gram path must fit too, else the call fails with
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
//! masks) run in parallel on the current rayon pool. Uploads run outside the lock.
//! [`Backend::lowrank_many`] runs up to eight jobs on threads of its own whose sections skip
//! the lock (each job plans within its share of the budget; a download waits for its own
//! mapping, not for the device to be idle), so that one job's uploads, recording and CPU
//! steps overlap the others' device work; the results are the bits each job gets alone. The
//! jobs start in the order of the bottleneck stage (`job_order`: smallest first where the
//! host's eigendecompositions dominate, largest first where the uploads do) and keep it where
//! they compete: each one's first upload waits for the uploads of the jobs before it (its
//! buffers are created before it waits: a large buffer may take milliseconds), and their
//! eigendecompositions queue in that order on the rayon pool; short host steps on a job's
//! critical path (read backs, assembly) run on scoped threads instead of behind that queue.
//!
//! # Benchmarks
//! [`Gpu::bench_gemm`] times the GEMM kernel alone (operands resident; wall time around submit
//! and wait, and GPU timestamps where the adapter has `TIMESTAMP_QUERY`, which the device then
//! enables); `examples/bench_gpu.rs` uses it and compares the backends on the GPT-2-small rSVD.
//!
//! # Errors
//! No method panics on caller input. Caller errors are the CPU backend's (same variants, same
//! checks, same order); device failures — no adapter, lost device, out of memory, a tensor
//! beyond the limits — are [`ComputeError::Device`]. `row_norms` / `col_norms`, which cannot
//! return an error, fall back to the CPU if the device fails.

mod bench;
mod device;
mod gemm;
mod mask;
mod rsvd;
#[cfg(test)]
mod tests;

pub use bench::GemmTiming;
pub use device::{AdapterInfoSummary, GpuOptions};
pub use gemm::GemmTiles;

use super::check::{check_all_finite, check_finite, check_rank, check_shapes, gemm_shape};
use super::mask as rules;
use super::mask::MaskKernels;
use super::rsvd::{
    check_spectrum, exact_one, exact_spectrum, per_matrix, LowrankRoute, SpectrumRoute,
};
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
            .field("timestamps", &self.ctx.timestamps)
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

    /// Seconds spent so far uploading weight matrices for factorizations and spectra (host
    /// copies into staging memory and their submission), so that benchmarks can set apart
    /// what a tool whose matrices already live on the device does not pay.
    pub fn upload_seconds(&self) -> f64 {
        self.ctx
            .upload_nanos
            .load(std::sync::atomic::Ordering::Relaxed) as f64
            * 1e-9
    }

    /// With `HCC_GPU_PROFILE=1` on an adapter with timestamp queries: the GPU time of every
    /// compute pass since the device was opened, by kernel, as a markdown table (with the
    /// time between passes and the wall time of the submissions); `None` otherwise.
    pub fn profile_report(&self) -> Option<String> {
        let p = self.ctx.profile.as_ref()?;
        let p = p.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rows: Vec<(&String, &(u64, f64))> = p.kernels.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut out =
            String::from("| kernel | passes | GPU ms | µs per pass |\n|---|---|---|---|\n");
        for (k, (n, t)) in rows {
            out += &format!(
                "| {k} | {n} | {:.2} | {:.1} |\n",
                t * 1e3,
                t * 1e6 / (*n).max(1) as f64
            );
        }
        out += &format!(
            "\n{} submissions: first pass start to last pass end {:.2} ms, between passes {:.2} ms, \
             submit + wait {:.2} ms\n",
            p.submissions,
            p.span * 1e3,
            p.gaps * 1e3,
            p.wall * 1e3
        );
        Some(out)
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

    /// Whether the randomized SVD's small Grams are accumulated in `f64` on the device
    /// (shaders/gram64.wgsl) rather than in double-`f32` (shaders/gram2.wgsl).
    pub fn has_f64_gram(&self) -> bool {
        self.ctx.f64_gram
    }

    /// The GEMM tile configuration in use.
    pub fn tiles(&self) -> GemmTiles {
        self.ctx.tiles
    }

    /// Whether the shaders were compiled without wgpu's bounds checks and integer-division
    /// guards ([`GpuOptions::unchecked_shaders`] or `HCC_GPU_UNCHECKED=1`).
    pub fn unchecked_shaders(&self) -> bool {
        !self.ctx.checks.bounds_checks
    }

    /// Whether the device has timestamp queries ([`GemmTiming::gpu_seconds`]).
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamps
    }

    /// Times the GEMM kernel alone on an `m × n × k` product `op(A) · op(B)` (`op(A)` `m × k`,
    /// `op(B)` `k × n`; A stored `k × m` when `trans_a`, B stored `n × k` when `trans_b`), for
    /// benchmarks.
    ///
    /// A and B (Gaussian, fixed seeds) are uploaded once; then one warm-up and `reps` timed
    /// runs of exactly what [`Backend::gemm`] records on the device for one operand block:
    /// the tiled kernel with the tiles in use ([`Gpu::tiles`]), plus the split-K reduction
    /// where the shape gets one ([`GemmTiming::splits`]). Each run is recorded untimed, then
    /// the wall time is taken around its submission and the wait for its completion
    /// (`device.poll`); no uploads or downloads are timed, but the zero-fill wgpu gives a
    /// fresh split-K partial buffer is. With `TIMESTAMP_QUERY` the GPU time from the start of
    /// the first compute pass to the end of the last is reported too. The result holds
    /// medians and TFLOP/s (`2mnk / t`).
    ///
    /// Each operand must fit one storage binding ([`Gpu::binding_limit`]); unlike
    /// [`Backend::gemm`], nothing is split. Errors ([`ComputeError::Device`]) for a zero
    /// dimension or `reps`, operands beyond the limits, or a device failure.
    pub fn bench_gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        trans_a: bool,
        trans_b: bool,
        reps: usize,
    ) -> Result<GemmTiming, ComputeError> {
        bench::bench_gemm(&self.ctx, (m, n, k), (trans_a, trans_b), reps)
    }
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
        // The CPU's checks in its order (shapes, finiteness, rank), except that the randomized
        // path checks finiteness while it uploads the weights (one read of them, not two).
        let Some(dims) = check_shapes(batch)? else {
            return Ok(Vec::new());
        };
        if let Err(e) = check_rank(rank, dims) {
            check_all_finite(batch)?;
            return Err(e);
        }
        let route = opts.lowrank_route(dims, rank);
        if !matches!(route, LowrankRoute::Sketch(_)) {
            check_all_finite(batch)?;
        }
        let shape = match route {
            LowrankRoute::Exact => {
                device::pass_turn();
                return per_matrix(batch, |w| exact_one(w, rank));
            }
            LowrankRoute::Gram => return rsvd::gram_path(&self.ctx, batch, rank),
            LowrankRoute::Sketch(shape) => shape,
        };
        if !rsvd::randomized_fits(&self.ctx, dims, shape) {
            tracing::info!(
                "gpu: the {}×{} randomized SVD's long-side buffers exceed one binding of {} \
                 bytes: this batch runs on the CPU",
                dims.0,
                dims.1,
                self.ctx.binding_limit
            );
            device::pass_turn();
            return Cpu.lowrank(batch, rank, opts);
        }
        let got = rsvd::randomized(&self.ctx, batch, shape, opts, rsvd::Want::Factors(rank))
            .map_err(|e| match check_all_finite(batch) {
                // A non-finite input is reported first, as on the CPU, whatever failed.
                Err(nf) => nf,
                Ok(()) => e,
            })?;
        Ok(got.into_iter().filter_map(rsvd::Got::factors).collect())
    }

    /// Up to eight jobs at a time (`HCC_GPU_JOBS` sets another number), on threads that take
    /// the jobs in [`job_order`]'s order, each planning within its share of the memory budget; their
    /// device sections do not wait for each other, so that one job's uploads, recording and CPU
    /// steps (eigendecompositions, assembly) overlap the others' device work, and their first
    /// uploads and their eigendecompositions run in job order (see the module docs). Every matrix
    /// gets the bits it gets alone. Called on a rayon worker, the jobs run in turn. A device
    /// error that no error scope caught (rare) may be reported by another job than the one
    /// that caused it.
    fn lowrank_many(
        &self,
        jobs: &[(&[MatrixRef<'_>], usize)],
        opts: &SvdOptions,
    ) -> Result<Vec<Vec<Factors>>, ComputeError> {
        // On a rayon worker, run the jobs in turn: waiting here for job threads that need the
        // rayon pool could starve it.
        if jobs.len() < 2 || rayon::current_thread_index().is_some() {
            return jobs
                .iter()
                .map(|&(batch, rank)| self.lowrank(batch, rank, opts))
                .collect();
        }
        // Each job plans its groups within budget / workers but takes at least one matrix:
        // fewer workers where the largest jobs' single matrices (with their working buffers,
        // about 4x their bytes) would not fit the budget together.
        let mut one_matrix: Vec<u64> = jobs
            .iter()
            .map(|(batch, _)| {
                batch
                    .first()
                    .map_or(0, |w| 16 * (w.rows() * w.cols()) as u64)
            })
            .collect();
        one_matrix.sort_unstable_by(|a, b| b.cmp(a));
        let mut workers = self.concurrent_jobs().min(jobs.len());
        while workers > 1 && one_matrix.iter().take(workers).sum::<u64>() > self.ctx.budget {
            workers -= 1;
        }
        let order = job_order(jobs, opts);
        let next = std::sync::atomic::AtomicUsize::new(0);
        // The jobs' first uploads run in the order the jobs start (device::in_turn).
        let turns = std::sync::Arc::new(device::Turns::default());
        type Slot = Option<Result<Vec<Factors>, ComputeError>>;
        let slots: std::sync::Mutex<Vec<Slot>> =
            std::sync::Mutex::new((0..jobs.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    device::as_job_worker(workers as u64, || loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&j) = order.get(i) else {
                            break;
                        };
                        let (batch, rank) = jobs[j];
                        let got = device::as_job(&turns, i, || self.lowrank(batch, rank, opts));
                        slots
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)[j] = Some(got);
                    })
                });
            }
        });
        slots
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .map(|slot| slot.unwrap_or_else(|| Err(device::device_err("a job was not run"))))
            .collect()
    }

    /// 8, or what `HCC_GPU_JOBS` says (1–8). Jobs beyond the first wait in line for their
    /// uploads and CPU work, so more workers cost only their share of the memory budget.
    fn concurrent_jobs(&self) -> usize {
        std::env::var("HCC_GPU_JOBS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(8)
            .clamp(1, 8)
    }

    /// The CPU's exact `f64` SVD (the reference, meant for small matrices).
    fn svd_exact(&self, w: MatrixRef<'_>, rank: usize) -> Result<Factors, ComputeError> {
        Cpu.svd_exact(w, rank)
    }

    fn spectrum_with(
        &self,
        batch: &[MatrixRef<'_>],
        k: usize,
        opts: &SvdOptions,
    ) -> Result<Vec<Vec<f32>>, ComputeError> {
        let (kk, shape) = match check_spectrum(batch, k, opts)? {
            SpectrumRoute::Trivial => return Ok(vec![Vec::new(); batch.len()]),
            SpectrumRoute::Exact(kk) => return per_matrix(batch, |w| exact_spectrum(w, kk)),
            SpectrumRoute::Sketch { kk, shape } => (kk, shape),
        };
        if !rsvd::randomized_fits(&self.ctx, batch[0].shape(), shape) {
            tracing::info!(
                "gpu: the {:?} spectrum's long-side buffers exceed one binding of {} bytes: \
                 this batch runs on the CPU",
                batch[0].shape(),
                self.ctx.binding_limit
            );
            return Cpu.spectrum_with(batch, k, opts);
        }
        let got = rsvd::randomized(&self.ctx, batch, shape, opts, rsvd::Want::Spectrum(kk))?;
        Ok(got.into_iter().filter_map(rsvd::Got::spectrum).collect())
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
            return Matrix::new(rows, cols, Vec::new());
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
        rules::magnitude_mask(&self.ctx, w, sparsity, pattern)
    }

    fn global_threshold(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<f32, ComputeError> {
        rules::global_threshold(&self.ctx, batch, sparsity)
    }

    fn global_magnitude_masks(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<Vec<MaskResult>, ComputeError> {
        rules::global_masks(&self.ctx, batch, sparsity)
    }

    fn full_spectrum(&self, w: MatrixRef<'_>) -> Result<Vec<f32>, ComputeError> {
        let (m, n) = w.shape();
        if m == 0 || n == 0 {
            return Ok(Vec::new());
        }
        check_finite(w, 0)?;
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
    /// Row or column norms on the device (`f64` shaders) or the CPU; the CPU's if the device
    /// fails.
    fn norms(&self, w: MatrixRef<'_>, rows: bool) -> Vec<f32> {
        match self.ctx.sq_norms(w, rows) {
            Ok(sq) => return rules::norms(sq),
            Err(e) => tracing::warn!("GPU norms failed ({e}); computing them on the CPU"),
        }
        if rows {
            Cpu.row_norms(w)
        } else {
            Cpu.col_norms(w)
        }
    }
}

/// Seconds of one core per `e³` of an `e × e` eigendecomposition of the top half
/// ([`crate::compute::eigen`]: ~43 ms at `e = 522`, `r = 256` on one core here and ~47 ms on the
/// H100 machine's cores; docs/PERF.md). Only the order of magnitude matters: it decides which
/// stage of [`job_order`]'s flow shop is the bottleneck.
const EIGEN_SECONDS_PER_CUBE: f64 = 3.0e-10;
/// Bytes per second of the uploads as they run between concurrent jobs (14–25 GB/s measured on
/// H100 machines through Vulkan); the same role as [`EIGEN_SECONDS_PER_CUBE`].
const UPLOAD_BYTES_PER_SECOND: f64 = 15e9;

/// The order in which `lowrank_many` starts its jobs: a two-stage flow shop, the bus and the
/// device first (uploads in turn, then each job's device work), the host's cores second (the
/// eigendecompositions, in job order, and the factors' assembly). Whichever stage takes longer
/// in all decides, as in Johnson's rule:
///
/// - the host (large ranks: `g·e³` eigendecomposition flops per job): smallest jobs first, so
///   that the cores get their first Grams early and the device's later, longer sections overlap
///   them (GPT-2 small at rank 256: 0.24–0.25 s against 0.28–0.30 s largest first);
/// - the bus (small ranks, where the eigendecompositions are `k = 140` wide): largest jobs
///   first, so that what follows the last upload — that job's device section, its small
///   eigendecompositions and its read back — is the shortest (rank 64: 0.078–0.084 s against
///   0.087–0.097 s smallest first, docs/PERF.md).
///
/// Sizes are `count · m · n · rank`; ties keep the callers' order.
fn job_order(jobs: &[(&[MatrixRef<'_>], usize)], opts: &SvdOptions) -> Vec<usize> {
    let threads = rayon::current_num_threads().max(1) as f64;
    let (mut bus, mut host) = (0.0f64, 0.0f64);
    for &(batch, rank) in jobs {
        let Some(w) = batch.first() else { continue };
        let (m, n) = w.shape();
        let g = batch.len() as f64;
        bus += g * (m * n * 4) as f64 / UPLOAD_BYTES_PER_SECOND;
        if rank == 0 || rank > m.min(n) {
            continue;
        }
        let e = match opts.lowrank_route((m, n), rank) {
            LowrankRoute::Exact => 0,
            LowrankRoute::Gram => m.min(n),
            LowrankRoute::Sketch(shape) => shape.width().min(m.min(n)),
        } as f64;
        host += g * e * e * e * EIGEN_SECONDS_PER_CUBE / threads;
    }
    let size = |j: usize| {
        let (batch, rank) = jobs[j];
        let one = batch.first().map_or(0, |w| w.rows() * w.cols());
        batch.len() * one * rank.max(1)
    };
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    if host >= bus {
        order.sort_by_key(|&j| size(j));
    } else {
        order.sort_by_key(|&j| std::cmp::Reverse(size(j)));
    }
    tracing::debug!(
        "gpu: {} jobs, estimated bus {bus:.3} s, host {host:.3} s: {} first",
        jobs.len(),
        if host >= bus { "smallest" } else { "largest" }
    );
    order
}
