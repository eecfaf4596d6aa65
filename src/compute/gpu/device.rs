//! The wgpu device: adapter choice, limits, buffers, pipelines, submission and error capture.
//!
//! Device work runs in sections, [`Ctx::run`], which serialise device use (one section at a
//! time), open error scopes for validation, out-of-memory and internal errors (wgpu error
//! scopes are per thread: a section's device calls all happen on its thread), and turn
//! whatever they caught — or a lost device — into [`ComputeError::Device`]. The device's
//! uncaptured-error handler records instead of panicking.
//!
//! A section never uses rayon (nor faer's implicit parallelism): the backend may be called
//! from rayon workers, and a lock holder waiting on rayon jobs while every worker waits on the
//! lock would deadlock. Heavy CPU work (SVDs, eigendecompositions, applying masks) runs
//! between sections, in parallel.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use super::gemm::GemmTiles;
use crate::compute::ComputeError;

pub(super) type GpuResult<T> = Result<T, ComputeError>;

pub(super) fn device_err(msg: impl Into<String>) -> ComputeError {
    ComputeError::Device(msg.into())
}

pub(super) const GEMM_WGSL: &str = include_str!("../../../shaders/gemm.wgsl");
pub(super) const REDUCE_WGSL: &str = include_str!("../../../shaders/reduce.wgsl");
const HISTOGRAM_WGSL: &str = include_str!("../../../shaders/histogram.wgsl");
const NM_MASK_WGSL: &str = include_str!("../../../shaders/nm_mask.wgsl");
const NORMS_WGSL: &str = include_str!("../../../shaders/norms.wgsl");
pub(super) const CHOL_WGSL: &str = include_str!("../../../shaders/chol.wgsl");
const GRAM2_WGSL: &str = include_str!("../../../shaders/gram2.wgsl");
const GRAM64_WGSL: &str = include_str!("../../../shaders/gram64.wgsl");
const TRANSPOSE_WGSL: &str = include_str!("../../../shaders/transpose.wgsl");

/// Every shader file, by name (for the naga validation tests).
#[cfg(test)]
pub(super) const SHADERS: [(&str, &str); 9] = [
    ("gemm.wgsl", GEMM_WGSL),
    ("reduce.wgsl", REDUCE_WGSL),
    ("histogram.wgsl", HISTOGRAM_WGSL),
    ("nm_mask.wgsl", NM_MASK_WGSL),
    ("norms.wgsl", NORMS_WGSL),
    ("chol.wgsl", CHOL_WGSL),
    ("gram2.wgsl", GRAM2_WGSL),
    ("gram64.wgsl", GRAM64_WGSL),
    ("transpose.wgsl", TRANSPOSE_WGSL),
];

/// Default memory budget on a software (CPU) adapter such as lavapipe.
const SOFTWARE_BUDGET: u64 = 1 << 30;
/// Default memory budget on a hardware adapter (wgpu does not report the memory size).
const HARDWARE_BUDGET: u64 = 4 << 30;
/// Largest binding used, whatever the adapter allows: element offsets in the shaders are u32.
const MAX_BINDING: u64 = 1 << 31;

/// What wgpu reports about one adapter (for `hcc adapters` and reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterInfoSummary {
    /// Adapter name, e.g. "NVIDIA H100 80GB HBM3" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Graphics API: "vulkan", "metal", "dx12", ….
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" or "other".
    pub device_type: String,
    /// Driver name and version as reported (may be empty).
    pub driver: String,
    /// Whether this is a software adapter (device type "cpu").
    pub software: bool,
}

impl AdapterInfoSummary {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let device_type = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        AdapterInfoSummary {
            name: info.name.clone(),
            backend: info.backend.to_str().to_string(),
            device_type: device_type.to_string(),
            driver,
            software: info.device_type == wgpu::DeviceType::Cpu,
        }
    }
}

/// How [`super::Gpu::new_with`] chooses and configures the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Accept a software adapter (Mesa lavapipe / llvmpipe, device type "cpu") when no
    /// hardware adapter is found. Hardware adapters are always preferred. Default `false`.
    pub allow_software: bool,
    /// Bytes of device memory that one operation may keep resident (matrices, sketches,
    /// work buffers); batches are split to fit. Default: 1 GiB on a software adapter,
    /// 4 GiB on hardware. A single matrix whose own working set exceeds it is still processed
    /// (alone); the device reports an error if it really does not fit.
    pub memory_budget: Option<u64>,
    /// Lower the largest storage binding used (bytes, at least 1024) below what the adapter
    /// allows, so that the splitting of large tensors along rows can be exercised on small
    /// data. `None`: the adapter's limit (capped at 2 GiB).
    pub binding_limit: Option<u64>,
    /// Only adapters whose name contains this (case-insensitive) are considered.
    pub adapter: Option<String>,
    /// Do not use `f64` in shaders even where the adapter supports it (also set by
    /// `HCC_GPU_NO_F64=1`; hardware adapters do without unless [`GpuOptions::prefer_f64`]):
    /// Gram matrices are then
    /// accumulated in `f32` (Cholesky-QR passes repeat until orthogonality is checked), the
    /// Gram-eigendecomposition path and norms run on the CPU.
    pub disable_f64: bool,
    /// Use `f64` shaders on a hardware adapter that supports them (also set by
    /// `HCC_GPU_F64=1`). By default only software adapters use them: on GPUs, f64 arithmetic
    /// is slow enough that `f32` Grams with a checked CholeskyQR2 are faster at the same
    /// accuracy. Ignored when [`GpuOptions::disable_f64`] is set.
    pub prefer_f64: bool,
    /// GEMM tile configuration; `None`: the `HCC_GEMM_TILES` environment variable
    /// (`BM,BN,BK,TM,TN`) if set, else [`GemmTiles::default`].
    pub gemm_tiles: Option<GemmTiles>,
    /// Compile the shaders without the bounds checks and integer-division guards wgpu adds
    /// (also set by `HCC_GPU_UNCHECKED=1`). The shaders guard every index themselves; this is
    /// for measuring what the checks cost. Loop bounding is always off (every loop of the
    /// shaders is bounded).
    pub unchecked_shaders: bool,
}

/// A compute kernel (one pipeline each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kernel {
    Gemm {
        f64: bool,
        ta: bool,
        tb: bool,
        va: bool,
        vb: bool,
        /// Compiled with [`Ctx::narrow`]'s tiles instead of [`Ctx::tiles`].
        narrow: bool,
    },
    Reduce {
        f64: bool,
    },
    Histogram,
    NmMask,
    RowSq,
    ColSq,
    /// One Cholesky-QR step per matrix (shaders/chol.wgsl), Grams in `f64` where `f64`.
    Chol {
        f64: bool,
    },
    /// Gram matrices accumulated in double-`f32` (shaders/gram2.wgsl; `fused`: products' errors
    /// by `fma`, where [`Ctx::fused_fma`]) …
    Gram2 {
        fused: bool,
    },
    /// … and the sum of their row splits (its `combine`); its `probe` of `fma`.
    Gram2Combine,
    Gram2Probe,
    /// Gram matrices accumulated in `f64` (shaders/gram64.wgsl; [`Ctx::f64_gram`]) …
    Gram64,
    /// … and the sum of their row splits.
    Gram64Combine,
    /// Out-of-place transposes of row blocks (shaders/transpose.wgsl).
    Transpose,
}

/// The device and everything created on it.
pub(super) struct Ctx {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) info: AdapterInfoSummary,
    /// Largest storage binding (and buffer) used for tensors, in bytes.
    pub(super) binding_limit: u64,
    /// The adapter's own largest binding (for fixed-size buffers such as histograms, which
    /// [`GpuOptions::binding_limit`] does not lower).
    hw_binding_limit: u64,
    /// Memory budget, in bytes.
    pub(super) budget: u64,
    /// Whether shaders may use `f64` (the SHADER_F64 feature is enabled).
    pub(super) f64: bool,
    /// Whether the Grams of the rSVD's small problems are accumulated in `f64`
    /// (shaders/gram64.wgsl) instead of double-`f32` (shaders/gram2.wgsl): where `f64` shaders
    /// are used ([`Ctx::f64`]), or where `HCC_GPU_F64_GRAM` says so.
    pub(super) f64_gram: bool,
    /// Whether the device has `TIMESTAMP_QUERY` (GPU times in [`super::Gpu::bench_gemm`]).
    pub(super) timestamps: bool,
    pub(super) tiles: GemmTiles,
    /// Tiles of products with at most `bn` columns ([`GemmTiles::NARROW`]), where the adapter
    /// takes them and [`GpuOptions::gemm_tiles`] / `HCC_GEMM_TILES` did not choose the tiles.
    pub(super) narrow: Option<GemmTiles>,
    /// Largest Gram side of the on-device Cholesky (`shaders/chol.wgsl`; 0: none fits).
    pub(super) chol_kmax: u32,
    /// Largest workgroup count per dispatch dimension.
    pub(super) max_groups: u32,
    pub(super) checks: wgpu::ShaderRuntimeChecks,
    modules: Mutex<HashMap<(&'static str, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    op: Mutex<()>,
    /// Nanoseconds spent uploading weight matrices for factorizations (host copies into
    /// staging memory and their submission), for benchmarks that compare against tools whose
    /// matrices already live on the device.
    pub(super) upload_nanos: std::sync::atomic::AtomicU64,
    /// Gaussian sketches Ω on the device by (seed, rows, columns): the same for every batch of
    /// a shape, so uploaded once.
    sketches: Mutex<HashMap<(u64, usize, usize), wgpu::Buffer>>,
    /// Staging buffers of [`STAGING_CHUNK`] bytes kept for the next uploads (at most
    /// [`Ctx::staging_max`]): reusing them saves allocating and first-touching host memory on
    /// every upload.
    staging: Mutex<Vec<Staging>>,
    /// Read-back staging buffers (`MAP_READ`, unmapped) kept for the next downloads, at most
    /// [`Ctx::staging_max`] chunks' worth of bytes: a fresh host-visible buffer costs its
    /// allocation and the first touch of every page, which made downloads run at 1–2.5 GB/s.
    read_staging: Mutex<Vec<wgpu::Buffer>>,
    /// Whether `fma` is fused on this device ([`Ctx::fused_fma`], probed on first use).
    fused_fma: std::sync::OnceLock<bool>,
    /// With `HCC_GPU_PROFILE=1` on an adapter with timestamps: GPU time per kernel.
    pub(super) profile: Option<Mutex<Profile>>,
    /// Matrices the randomized SVD redid on its careful path (tests check which path ran).
    #[cfg(test)]
    pub(super) careful: std::sync::atomic::AtomicU64,
    /// Dispatches per kernel (tests check that work really ran on the device).
    #[cfg(test)]
    pub(super) dispatches: Mutex<HashMap<Kernel, u64>>,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY.with_env();
    desc.flags = wgpu::InstanceFlags::empty().with_env();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see on the primary backends (Vulkan, Metal, DX12).
pub(super) fn adapters() -> Vec<(wgpu::Adapter, AdapterInfoSummary)> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::PRIMARY.with_env()))
        .into_iter()
        .map(|a| {
            let s = AdapterInfoSummary::from_info(&a.get_info());
            (a, s)
        })
        .collect()
}

/// The message a device callback recorded in `slot`, as an error (taken out of the slot where
/// `take`).
fn recorded(slot: &Mutex<Option<String>>, take: bool) -> GpuResult<()> {
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    match if take { slot.take() } else { slot.clone() } {
        Some(msg) => Err(device_err(msg)),
        None => Ok(()),
    }
}

fn type_rank(t: &str) -> u32 {
    match t {
        "discrete" => 0,
        "integrated" => 1,
        "virtual" => 2,
        "other" => 3,
        _ => 4,
    }
}

impl Ctx {
    pub(super) fn new(opts: &GpuOptions) -> GpuResult<Ctx> {
        let all = adapters();
        let seen: Vec<String> = all
            .iter()
            .map(|(_, s)| format!("{} ({}, {})", s.name, s.backend, s.device_type))
            .collect();
        let mut candidates: Vec<(wgpu::Adapter, AdapterInfoSummary)> = all
            .into_iter()
            .filter(|(_, s)| opts.allow_software || !s.software)
            .filter(|(_, s)| {
                opts.adapter
                    .as_ref()
                    .is_none_or(|want| s.name.to_lowercase().contains(&want.to_lowercase()))
            })
            .collect();
        // Stable: among equal types, enumeration order.
        candidates.sort_by_key(|(_, s)| type_rank(&s.device_type));
        let Some((adapter, info)) = candidates.into_iter().next() else {
            return Err(device_err(format!(
                "no suitable GPU adapter (software adapters {}; adapters seen: {})",
                if opts.allow_software {
                    "allowed"
                } else {
                    "not allowed"
                },
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            )));
        };
        let limits = adapter.limits();
        // f64 shaders only where they are fast: on a software adapter (the CPU runs them at
        // its f64 rate) or when asked. On hardware they are slow — consumer GPUs run f64 at
        // 1/32–1/64 of f32, and on an H100 through Vulkan the f64 Grams made the rank-64 rSVD of
        // GPT-2 small 0.31 s against 0.25 s with f32 Grams (same errors), the rank-256 Gram path
        // 2.34 s against 1.67 s (docs/PERF.md).
        let env = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
        let want_f64 = !opts.disable_f64
            && !env("HCC_GPU_NO_F64")
            && (info.software || opts.prefer_f64 || env("HCC_GPU_F64"));
        let has_f64 = adapter.features().contains(wgpu::Features::SHADER_F64);
        let f64 = want_f64 && has_f64;
        // The small Grams in f64 (shaders/gram64.wgsl) where f64 shaders are used at all: on
        // an H200 through Vulkan they ran at 0.9 TFLOP/s, 2.2x slower than the double-f32
        // kernel (docs/PERF.md). HCC_GPU_F64_GRAM=1/0 forces the choice (for measurements).
        let f64_gram = has_f64
            && !opts.disable_f64
            && !env("HCC_GPU_NO_F64")
            && match std::env::var("HCC_GPU_F64_GRAM").as_deref() {
                Ok("1") => true,
                Ok("0") => false,
                _ => f64,
            };
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut features = wgpu::Features::empty();
        if f64 || f64_gram {
            features |= wgpu::Features::SHADER_F64;
        }
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("hcc compute"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| device_err(format!("requesting a device on {}: {e}", info.name)))?;
        let lost = Arc::new(Mutex::new(None));
        let uncaptured = Arc::new(Mutex::new(None));
        {
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                *lost.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("device lost ({reason:?}): {msg}"));
            });
            let uncaptured = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = uncaptured.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
        }
        let mut binding_limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(MAX_BINDING);
        let hw_binding_limit = binding_limit & !15;
        if let Some(cap) = opts.binding_limit {
            binding_limit = binding_limit.min(cap.max(1024));
        }
        binding_limit &= !15; // whole vec4 / f64 elements
        let budget = opts.memory_budget.unwrap_or(if info.software {
            SOFTWARE_BUDGET
        } else {
            HARDWARE_BUDGET
        });
        let tiles = match opts.gemm_tiles {
            Some(t) => t,
            None => GemmTiles::from_env()?.unwrap_or_default(),
        };
        tiles.validate(
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_storage_size,
        )?;
        let unchecked =
            opts.unchecked_shaders || std::env::var("HCC_GPU_UNCHECKED").is_ok_and(|v| v == "1");
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = false;
        if unchecked {
            checks.bounds_checks = false;
            checks.int_div_checks = false;
        }
        Ok(Ctx {
            device,
            queue,
            checks,
            info,
            binding_limit,
            hw_binding_limit,
            budget,
            f64,
            f64_gram,
            timestamps,
            tiles,
            narrow: (opts.gemm_tiles.is_none() && std::env::var_os("HCC_GEMM_TILES").is_none())
                .then_some(GemmTiles::NARROW)
                .filter(|t| {
                    t.validate(
                        limits.max_compute_invocations_per_workgroup,
                        limits.max_compute_workgroup_storage_size,
                    )
                    .is_ok()
                }),
            chol_kmax: super::gemm::chol_kmax(f64, limits.max_compute_workgroup_storage_size),
            max_groups: limits.max_compute_workgroups_per_dimension.max(1),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            lost,
            uncaptured,
            op: Mutex::new(()),
            upload_nanos: std::sync::atomic::AtomicU64::new(0),
            sketches: Mutex::new(HashMap::new()),
            staging: Mutex::new(Vec::new()),
            read_staging: Mutex::new(Vec::new()),
            fused_fma: std::sync::OnceLock::new(),
            profile: (timestamps && env("HCC_GPU_PROFILE")).then(|| Mutex::new(Profile::default())),
            #[cfg(test)]
            careful: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            dispatches: Mutex::new(HashMap::new()),
        })
    }

    fn check_alive(&self) -> GpuResult<()> {
        recorded(&self.lost, false)
    }

    /// Runs one section of device work: serialised, inside error scopes; any device error
    /// caught becomes [`ComputeError::Device`] (it wins over the section's own result, which
    /// may be garbage after a device error). Sections must not nest, nor use rayon.
    pub(super) fn run<T>(&self, f: impl FnOnce() -> GpuResult<T>) -> GpuResult<T> {
        if SHARED.with(|c| c.get()) {
            return self.scoped(f);
        }
        let _op = self.op.lock().unwrap_or_else(PoisonError::into_inner);
        self.scoped(f)
    }

    /// [`Ctx::run`] without the lock: for work that may overlap another thread's section —
    /// uploads (creating buffers, filling staging memory, submitting copies), whose errors
    /// the scopes of this thread catch (wgpu's error scopes are thread-local).
    pub(super) fn scoped<T>(&self, f: impl FnOnce() -> GpuResult<T>) -> GpuResult<T> {
        self.check_alive()?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        self.check_alive()?;
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(device_err(format!("{e}")));
        }
        recorded(&self.uncaptured, true)?;
        result
    }

    /// Runs `f` in its own validation and out-of-memory scopes and reports what they caught
    /// at once (for resource creation, whose failure must stop the operation early).
    pub(super) fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> GpuResult<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            Some(e) => Err(device_err(format!("{what}: {e}"))),
            None => Ok(out),
        }
    }

    fn check_size(&self, bytes: u64, what: &str, limit: u64) -> GpuResult<u64> {
        // At least one vec4, whole vec4s (the GEMM binds its inputs as arrays of vec4 too).
        let size = bytes.max(16).next_multiple_of(16);
        if size > limit {
            return Err(device_err(format!(
                "{what} needs a buffer of {size} bytes, above the binding limit of {limit} bytes"
            )));
        }
        Ok(size)
    }

    /// A storage buffer of `bytes` (rounded up to 16, at least 16), zeroed (wgpu initialises
    /// every buffer).
    pub(super) fn buffer(&self, bytes: u64, what: &str) -> GpuResult<wgpu::Buffer> {
        self.buffer_within(bytes, what, self.binding_limit)
    }

    /// [`Ctx::buffer`] for a small fixed-size buffer (a histogram), checked against the
    /// adapter's own binding limit only.
    pub(super) fn fixed_buffer(&self, bytes: u64, what: &str) -> GpuResult<wgpu::Buffer> {
        self.buffer_within(bytes, what, self.hw_binding_limit)
    }

    fn buffer_within(&self, bytes: u64, what: &str, limit: u64) -> GpuResult<wgpu::Buffer> {
        self.storage(self.check_size(bytes, what, limit)?, what, false)
    }

    /// A storage buffer (also a copy source and destination) of `size` bytes, checked.
    fn storage(&self, size: u64, what: &str, mapped: bool) -> GpuResult<wgpu::Buffer> {
        self.checked(what, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(what),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: mapped,
            })
        })
    }

    /// A storage buffer holding `parts` one after the other.
    pub(super) fn upload<T: bytemuck::Pod>(
        &self,
        parts: &[&[T]],
        what: &str,
    ) -> GpuResult<wgpu::Buffer> {
        let bytes: Vec<&[u8]> = parts.iter().map(|p| bytemuck::cast_slice(p)).collect();
        self.upload_bytes(&bytes, what)
    }

    /// A device buffer for a later [`Ctx::fill_finite`] of `bytes`: creating it may take
    /// milliseconds (the allocator may map new device memory, under a lock that other threads'
    /// buffer creations wait for), so a job creates it before waiting for its upload's turn.
    pub(super) fn upload_target(&self, bytes: u64, what: &str) -> GpuResult<wgpu::Buffer> {
        let size = self.check_size(bytes, what, self.binding_limit)?;
        self.storage(size, what, false)
    }

    /// Copies `parts`, one after the other, into `buf` (from [`Ctx::upload_target`], at least
    /// their size) through staging memory; whether every element is finite.
    pub(super) fn fill_finite(
        &self,
        buf: &wgpu::Buffer,
        parts: &[&[f32]],
        what: &str,
    ) -> GpuResult<bool> {
        let bytes: Vec<&[u8]> = parts.iter().map(|p| bytemuck::cast_slice(p)).collect();
        let total: u64 = bytes.iter().map(|p| p.len() as u64).sum();
        if total > buf.size() {
            return Err(device_err(format!(
                "{what}: {total} bytes do not fit a buffer of {}",
                buf.size()
            )));
        }
        self.upload_parallel(buf, &bytes, what, true)
    }

    /// The uploads, one after the other in one new buffer.
    fn upload_bytes(&self, parts: &[&[u8]], what: &str) -> GpuResult<wgpu::Buffer> {
        let bytes: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let size = self.check_size(bytes, what, self.binding_limit)?;
        if bytes >= PARALLEL_UPLOAD && host_threads() > 1 {
            let buf = self.storage(size, what, false)?;
            self.upload_parallel(&buf, parts, what, false)?;
            return Ok(buf);
        }
        let buf = self.storage(size, what, true)?;
        {
            let mut view = buf
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| device_err(format!("mapping {what}: {e}")))?;
            copy_range(parts, 0, bytes as usize, &mut view, false);
        }
        buf.unmap();
        Ok(buf)
    }

    /// How many staging buffers the pool keeps: 1/8 of the memory budget (host memory, not
    /// counted in the budget, which bounds device memory).
    fn staging_max(&self) -> usize {
        (self.budget / 8 / STAGING_CHUNK) as usize
    }

    /// Whether WGSL's `fma` rounds once on this device (the spec lets it round the product
    /// first), so that shaders/gram2.wgsl may take each product's rounding error from it:
    /// probed on first use by computing the errors of 256 seeded products of `f32`s and
    /// comparing them with the exact ones (`f64` arithmetic on the host). `false` where the
    /// probe fails or any error differs — the same answer on every run on one device and
    /// driver, so the bits of the results are too. `HCC_GPU_FMA=0` skips the probe (`false`).
    pub(super) fn fused_fma(&self) -> bool {
        *self.fused_fma.get_or_init(|| {
            if std::env::var("HCC_GPU_FMA").is_ok_and(|v| v == "0") {
                return false;
            }
            // In error scopes of its own (`checked`), without taking the device lock (the
            // caller may hold it: this runs inside device sections) and without consuming an
            // error that another thread's section left for its own scope to report.
            let got = self.checked("fma probe", || self.probe_fma());
            tracing::debug!("gpu: fused fma probe: {got:?}");
            matches!(got, Ok(Ok(true)))
        })
    }

    fn probe_fma(&self) -> GpuResult<bool> {
        const N: usize = 256;
        // Products whose rounding error is rarely zero: values of both signs in [1, 2) times
        // powers of two from 2⁻⁸ to 2⁷ (no subnormal errors). Sequential: no rayon inside a
        // device section.
        let xs: Vec<f32> = (0..2 * N)
            .map(|i| {
                let u = crate::compute::rng::uniform(0x05ee_df4a, i as u64, 0);
                let sign = if i % 3 == 0 { -1.0 } else { 1.0 };
                (sign * (1.0 + u) * 2f64.powi((i % 16) as i32 - 8)) as f32
            })
            .collect();
        let want: Vec<u32> = (0..N)
            .map(|i| {
                let (u, v) = (xs[2 * i], xs[2 * i + 1]);
                // Exact: u·v has 48 significant bits, and the error of its f32 rounding is an
                // f32.
                ((u as f64 * v as f64 - (u * v) as f64) as f32).to_bits()
            })
            .collect();
        if want.iter().all(|&w| w == 0) {
            return Ok(false);
        }
        let x = self.upload(&[&xs[..]], "fma probe")?;
        let out = self.buffer((N * 4) as u64, "fma probe errors")?;
        let mut s = Session::new(self);
        let params = [N as u32, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        s.dispatch(
            Kernel::Gram2Probe,
            &params,
            &[&x, &out],
            (N.div_ceil(64) as u32, 1, 1),
        )?;
        let got: Vec<u32> = s.read(&out, 0, N as u64)?;
        Ok(got == want)
    }

    /// A read-back staging buffer of at least `size` bytes: the smallest pooled one that is at
    /// most twice as large (or one [`READ_STAGING_GRAIN`] larger), else a new one of `size`
    /// rounded up to the grain, so that later reads of similar sizes can reuse it.
    fn take_read_staging(&self, size: u64) -> GpuResult<wgpu::Buffer> {
        {
            let mut pool = self
                .read_staging
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let fits = |b: &wgpu::Buffer| {
                b.size() >= size && b.size() <= (2 * size).max(size + READ_STAGING_GRAIN)
            };
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| fits(b))
                .min_by_key(|(_, b)| b.size())
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(pool.swap_remove(i));
            }
        }
        let size = size.next_multiple_of(READ_STAGING_GRAIN);
        self.checked("staging buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read staging"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Returns an unmapped read-back staging buffer to the pool; the oldest ones leave it when
    /// it holds more than [`Ctx::staging_max`] chunks' worth of bytes.
    fn give_read_staging(&self, buf: wgpu::Buffer) {
        let mut pool = self
            .read_staging
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cap = self.staging_max() as u64 * STAGING_CHUNK;
        if buf.size() > cap {
            return;
        }
        pool.push(buf);
        let mut total: u64 = pool.iter().map(|b| b.size()).sum();
        while total > cap && !pool.is_empty() {
            total -= pool.remove(0).size();
        }
    }

    /// `n` staging buffers of [`STAGING_CHUNK`] bytes, mapped for writing: pooled ones whose
    /// mapping has completed (never waiting for the device: with concurrent jobs a pooled
    /// buffer's copy may sit behind another job's work), new ones (mapped at creation) for the
    /// rest. Buffers whose mapping failed leave the pool.
    fn take_staging(&self, n: usize) -> Vec<wgpu::Buffer> {
        let t0 = std::time::Instant::now();
        let _ = self.device.poll(wgpu::PollType::Poll);
        let t_poll = t0.elapsed().as_secs_f64();
        let mut out = Vec::with_capacity(n);
        {
            let mut pool = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
            pool.retain(|s| s.state.load(Ordering::Acquire) != STAGING_FAILED);
            let mut i = 0;
            while i < pool.len() && out.len() < n {
                if pool[i].state.load(Ordering::Acquire) == STAGING_READY {
                    out.push(pool.swap_remove(i).buf);
                } else {
                    i += 1;
                }
            }
        }
        let pooled = out.len();
        tracing::trace!(
            "staging: poll {t_poll:.4} s, {pooled} of {n} pooled after {:.4} s",
            t0.elapsed().as_secs_f64()
        );
        while out.len() < n {
            out.push(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("upload staging"),
                size: STAGING_CHUNK,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            }));
        }
        out
    }

    /// Returns staging buffers (unmapped, their copies submitted) to the pool, as far as it has
    /// room: each is mapped again, which completes once its copy has run.
    fn give_staging(&self, used: Vec<wgpu::Buffer>) {
        let mut pool = self.staging.lock().unwrap_or_else(PoisonError::into_inner);
        let room = self.staging_max().saturating_sub(pool.len());
        for buf in used.into_iter().take(room) {
            let state = Arc::new(AtomicU8::new(STAGING_PENDING));
            let flag = state.clone();
            buf.slice(..).map_async(wgpu::MapMode::Write, move |r| {
                let s = if r.is_ok() {
                    STAGING_READY
                } else {
                    STAGING_FAILED
                };
                flag.store(s, Ordering::Release);
            });
            pool.push(Staging { buf, state });
        }
    }

    /// [`Ctx::upload`] for large data: chunks of [`STAGING_CHUNK`] bytes filled by up to
    /// [`host_threads`] threads in staging buffers (pooled: see [`Ctx::take_staging`]), then
    /// copied into the storage buffer `buf` on the device; whether every element is finite
    /// (with `check`). One thread copies into mapped memory at ~5 GB/s. Plain scoped threads,
    /// not rayon: this runs inside a device section, which must never wait on the rayon pool.
    fn upload_parallel(
        &self,
        buf: &wgpu::Buffer,
        parts: &[&[u8]],
        what: &str,
        check: bool,
    ) -> GpuResult<bool> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let t0 = std::time::Instant::now();
        let chunk = STAGING_CHUNK as usize;
        let ranges: Vec<(usize, usize)> = (0..total.div_ceil(chunk))
            .map(|c| (c * chunk, ((c + 1) * chunk).min(total)))
            .collect();
        let staging = self.take_staging(ranges.len());
        let t_staged = t0.elapsed().as_secs_f64();
        let threads = host_threads().min(ranges.len()).max(1);
        // Thread t fills chunks t, t + threads, …
        let filled: Vec<GpuResult<bool>> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..threads)
                    .map(|t| {
                        let (ranges, staging) = (&ranges, &staging);
                        scope.spawn(move || -> GpuResult<bool> {
                            let mut finite = true;
                            for c in (t..ranges.len()).step_by(threads) {
                                let (a, b) = ranges[c];
                                let len = ((b - a) as u64).next_multiple_of(4);
                                let mut view =
                                    staging[c].slice(..len).get_mapped_range_mut().map_err(
                                        |e| device_err(format!("mapping a staging buffer: {e}")),
                                    )?;
                                finite &= copy_range(parts, a, b, &mut view, check);
                            }
                            Ok(finite)
                        })
                    })
                    .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(device_err("an upload thread panicked")))
                })
                .collect()
        });
        let t_filled = t0.elapsed().as_secs_f64();
        for st in &staging {
            st.unmap();
        }
        let mut finite = true;
        for f in filled {
            finite &= f?;
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("upload"),
            });
        for (&(a, b), st) in ranges.iter().zip(&staging) {
            enc.copy_buffer_to_buffer(
                st,
                0,
                buf,
                a as u64,
                Some(((b - a) as u64).next_multiple_of(4)),
            );
        }
        self.queue.submit([enc.finish()]);
        self.give_staging(staging);
        tracing::trace!(
            "upload {what}: {total} bytes, staging {t_staged:.4} s, filled {t_filled:.4} s, \
             submitted {:.4} s",
            t0.elapsed().as_secs_f64()
        );
        Ok(finite)
    }

    /// The Gaussian sketch `rng::gaussian_f32(seed, rows, cols)` on the device (made and
    /// uploaded on first use, then kept). Runs its own device section: call it outside one.
    pub(super) fn sketch(&self, seed: u64, rows: usize, cols: usize) -> GpuResult<wgpu::Buffer> {
        let key = (seed, rows, cols);
        if let Some(b) = self
            .sketches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(b.clone());
        }
        let omega = crate::compute::rng::gaussian_f32(seed, rows, cols);
        let buf = self.run(|| self.upload(&[&omega[..]], "sketch"))?;
        self.sketches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, buf.clone());
        Ok(buf)
    }

    /// Writes `data` into `buf` at byte `offset` (ordered before later submissions).
    pub(super) fn write<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, offset: u64, data: &[T]) {
        if !data.is_empty() {
            self.queue
                .write_buffer(buf, offset, bytemuck::cast_slice(data));
        }
    }

    fn module(&self, file: &'static str, f64: bool) -> GpuResult<wgpu::ShaderModule> {
        let mut cache = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = cache.get(&(file, f64)) {
            return Ok(m.clone());
        }
        let src: String = match file {
            "gemm" => super::gemm::gemm_source(&self.tiles, f64)?,
            "gemm_narrow" => super::gemm::gemm_source(&self.narrow.unwrap_or(self.tiles), f64)?,
            "reduce" => super::gemm::reduce_source(f64)?,
            "histogram" => HISTOGRAM_WGSL.to_string(),
            "nm_mask" => NM_MASK_WGSL.to_string(),
            "norms" => NORMS_WGSL.to_string(),
            "chol" => super::gemm::chol_source(f64, self.chol_kmax)?,
            "gram2" => GRAM2_WGSL.to_string(),
            "gram64" => GRAM64_WGSL.to_string(),
            "transpose" => TRANSPOSE_WGSL.to_string(),
            _ => return Err(device_err(format!("unknown shader {file}"))),
        };
        let module = self.checked(&format!("compiling {file}.wgsl"), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(Cow::Owned(src)),
            };
            // SAFETY: loop bounding is off, which requires that no shader loops forever: every
            // loop in shaders/*.wgsl runs over a range given by its parameters, with a
            // positive step, far from u32 overflow (offsets are below 2^31). Bounds checks
            // and division guards are off only when asked (`unchecked_shaders`): every
            // buffer index is guarded in the shaders and every divisor is a non-zero
            // parameter (checked where the dispatch is recorded).
            unsafe { self.device.create_shader_module_trusted(desc, self.checks) }
        })?;
        cache.insert((file, f64), module.clone());
        Ok(module)
    }

    /// The pipeline of a kernel (created on first use, then cached).
    pub(super) fn pipeline(&self, k: Kernel) -> GpuResult<wgpu::ComputePipeline> {
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&k)
        {
            return Ok(p.clone());
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let (file, f64, entry, constants): (&'static str, bool, &str, Vec<(&str, f64)>) = match k {
            Kernel::Gemm {
                f64,
                ta,
                tb,
                va,
                vb,
                narrow,
            } => (
                if narrow { "gemm_narrow" } else { "gemm" },
                f64,
                "main",
                vec![
                    ("TRANS_A", flag(ta)),
                    ("TRANS_B", flag(tb)),
                    ("VEC_A", flag(va)),
                    ("VEC_B", flag(vb)),
                ],
            ),
            Kernel::Reduce { f64 } => ("reduce", f64, "main", vec![]),
            Kernel::Histogram => ("histogram", false, "main", vec![]),
            Kernel::NmMask => ("nm_mask", false, "main", vec![]),
            Kernel::RowSq => ("norms", false, "row_sq", vec![]),
            Kernel::ColSq => ("norms", false, "col_sq", vec![]),
            Kernel::Chol { f64 } => ("chol", f64, "main", vec![]),
            Kernel::Gram2 { fused } => ("gram2", false, "main", vec![("FUSED", flag(fused))]),
            Kernel::Gram2Combine => ("gram2", false, "combine", vec![]),
            Kernel::Gram2Probe => ("gram2", false, "probe", vec![]),
            Kernel::Gram64 => ("gram64", true, "main", vec![]),
            Kernel::Gram64Combine => ("gram64", true, "combine", vec![]),
            Kernel::Transpose => ("transpose", false, "main", vec![]),
        };
        let module = self.module(file, f64)?;
        let pipeline = self.checked(&format!("creating the {k:?} pipeline"), || {
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(file),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                })
        })?;
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(k, pipeline.clone());
        Ok(pipeline)
    }

    /// Workgroup counts `(x, y)` covering `groups` workgroups in a 2-D grid within the
    /// per-dimension limit (shaders index `y · nx + x`).
    pub(super) fn grid(&self, groups: u64) -> GpuResult<(u32, u32)> {
        let max = self.max_groups as u64;
        let groups = groups.max(1);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(device_err(format!(
                "dispatch of {groups} workgroups is too large"
            )));
        }
        Ok((x as u32, y as u32))
    }
}

/// GPU time of every profiled pass (`HCC_GPU_PROFILE=1`), by kernel.
#[derive(Debug, Default)]
pub(super) struct Profile {
    /// Per kernel and workgroup grid (`Debug` forms): passes and seconds between their
    /// timestamps.
    pub(super) kernels: HashMap<String, (u64, f64)>,
    /// Seconds between one pass's end and the next one's start, summed.
    pub(super) gaps: f64,
    /// Seconds from the first pass's start to the last one's end, summed over submissions.
    pub(super) span: f64,
    /// Wall seconds of submit + wait, summed.
    pub(super) wall: f64,
    pub(super) submissions: u64,
}

/// Timestamp queries for the compute passes of a [`Session`] (with `TIMESTAMP_QUERY`): pass
/// `i` writes its start at query `2i` and its end at `2i + 1`.
pub(super) struct Stamps {
    pub(super) set: wgpu::QuerySet,
    capacity: u32,
    used: std::cell::Cell<u32>,
    overflow: std::cell::Cell<bool>,
}

impl Stamps {
    /// Room for `passes` compute passes.
    pub(super) fn new(ctx: &Ctx, passes: u32) -> GpuResult<Stamps> {
        let capacity = 2 * passes.max(1);
        let set = ctx.checked("timestamp queries", || {
            ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            })
        })?;
        Ok(Stamps {
            set,
            capacity,
            used: std::cell::Cell::new(0),
            overflow: std::cell::Cell::new(false),
        })
    }

    /// Starts over (before a new session).
    pub(super) fn reset(&self) {
        self.used.set(0);
        self.overflow.set(false);
    }

    /// Queries written so far, and whether some pass found no room (then the queries do not
    /// cover every pass).
    pub(super) fn used(&self) -> (u32, bool) {
        (self.used.get(), self.overflow.get())
    }

    fn next(&self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.used.get();
        if i + 2 > self.capacity {
            self.overflow.set(true);
            return None;
        }
        self.used.set(i + 2);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        })
    }
}

thread_local! {
    /// The share of the memory budget that operations on this thread plan with: 1, or the
    /// number of workers of `Gpu::lowrank_many` on its workers.
    static BUDGET_SHARE: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    /// Whether this thread's device sections skip the lock ([`Ctx::run`]): on the workers of
    /// `Gpu::lowrank_many`, whose sections may then overlap on the device.
    static SHARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as one of `share` concurrent job workers: this thread's operations plan within
/// `1/share` of the memory budget, and its device sections do not wait for the other
/// workers' (the device interleaves their submissions; every result is still the bits it
/// is alone, and reads wait only for their own submissions).
pub(super) fn as_job_worker<T>(share: u64, f: impl FnOnce() -> T) -> T {
    let old = BUDGET_SHARE.with(|c| c.replace(share.max(1)));
    let old_shared = SHARED.with(|c| c.replace(share > 1));
    let out = f();
    BUDGET_SHARE.with(|c| c.set(old));
    SHARED.with(|c| c.set(old_shared));
    out
}

/// The order in which the jobs of one `Gpu::lowrank_many` call make their first upload
/// ([`in_turn`]): the number of jobs that have made theirs (or ended without one).
#[derive(Default)]
pub(super) struct Turns {
    next: Mutex<usize>,
    moved: std::sync::Condvar,
}

impl Turns {
    /// Marks job `ticket`'s turn as taken (its first upload is done, or the job ended).
    pub(super) fn pass(&self, ticket: usize) {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        if *next <= ticket {
            *next = ticket + 1;
        }
        self.moved.notify_all();
    }
}

thread_local! {
    /// This thread's job and its place in the upload order (see [`in_turn`]).
    static TICKET: std::cell::RefCell<Option<(Arc<Turns>, usize)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, job `ticket` of `turns`, on this thread (a `Gpu::lowrank_many` worker); the turn
/// is passed when `f` returns if its first upload did not pass it.
pub(super) fn as_job<T>(turns: &Arc<Turns>, ticket: usize, f: impl FnOnce() -> T) -> T {
    /// Clears the ticket and passes the turn however `f` ends (a panic included).
    struct Done<'a>(&'a Turns, usize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            TICKET.with(|c| c.borrow_mut().take());
            self.0.pass(self.1);
        }
    }
    TICKET.with(|c| *c.borrow_mut() = Some((turns.clone(), ticket)));
    let _done = Done(turns, ticket);
    f()
}

/// Passes this thread's job's turn now (for a job that will not upload: a route that runs on
/// the CPU), so that the jobs after it need not wait for it to end.
pub(super) fn pass_turn() {
    if let Some((turns, ticket)) = TICKET.with(|c| c.borrow_mut().take()) {
        turns.pass(ticket);
    }
}

/// Runs `f`, an upload, after the uploads of the jobs before this thread's (their first
/// ones; a job's later uploads and uploads outside `Gpu::lowrank_many` run at once). The
/// concurrent jobs' uploads would otherwise share the bus and all end late: in order, the
/// first job's device work starts after its own upload, and the CPU work that follows each
/// job's device section starts early. Waits at most [`TURN_WAIT`] for the jobs before.
pub(super) fn in_turn<T>(f: impl FnOnce() -> T) -> T {
    let Some((turns, ticket)) = TICKET.with(|c| c.borrow_mut().take()) else {
        return f();
    };
    {
        let deadline = std::time::Instant::now() + TURN_WAIT;
        let mut next = turns.next.lock().unwrap_or_else(PoisonError::into_inner);
        while *next < ticket {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            next = turns
                .moved
                .wait_timeout(next, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
    let out = f();
    turns.pass(ticket);
    out
}

/// `f(0), …, f(n − 1)` on the rayon pool as one task each, started in the order of the calls
/// across threads (`rayon::in_place_scope_fifo` from outside the pool injects them into the
/// global queue in order; `scope_fifo` would run its body on one worker and queue them there): the
/// eigendecompositions of the job whose device section ended first finish first, so that its
/// last device section and read back overlap the others' CPU work instead of all jobs ending
/// together (`par_iter`'s work stealing interleaves concurrent jobs' tasks arbitrarily).
pub(super) fn fifo_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<Option<T>> {
    let slots: Vec<Mutex<Option<T>>> = (0..n).map(|_| Mutex::new(None)).collect();
    rayon::in_place_scope_fifo(|scope| {
        for i in 0..n {
            let (slots, f) = (&slots, &f);
            scope.spawn_fifo(move |_| {
                let got = f(i);
                *slots[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(got);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect()
}

/// `f` applied to every item on scoped threads (at most the host's parallelism, each a
/// contiguous run of items), results in order: for short parallel work on a job's critical
/// path, which on the rayon pool would queue behind the eigendecompositions of every job
/// ([`fifo_map`]).
pub(super) fn scoped_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = host_threads();
    if items.len() < 2 || threads < 2 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        parts.push(items.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// The longest [`in_turn`] waits for the jobs before (a safety net: each passes its turn when
/// its first upload ends, or when it ends).
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Ctx {
    /// The memory budget for operations planned on this thread (see [`with_budget_share`]).
    pub(super) fn budget_here(&self) -> u64 {
        self.budget / BUDGET_SHARE.with(|c| c.get())
    }
}

/// Uploads at least this large are staged by several threads ([`Ctx::upload_parallel`]).
pub(super) const PARALLEL_UPLOAD: u64 = 4 << 20;

/// Threads for short parallel host work outside rayon (filling an upload's staging chunks,
/// [`scoped_map`]): the host's parallelism, at most 16.
fn host_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16)
}

/// Bytes per staging buffer of [`Ctx::upload_parallel`] (a multiple of 4).
pub(super) const STAGING_CHUNK: u64 = 4 << 20;

/// Read-back staging buffers are created in multiples of this many bytes (reuse across reads
/// of nearby sizes).
const READ_STAGING_GRAIN: u64 = 1 << 20;

/// A pooled staging buffer and the state of its mapping for the next upload.
struct Staging {
    buf: wgpu::Buffer,
    state: Arc<AtomicU8>,
}

/// [`Staging::state`]: mapping requested, …
const STAGING_PENDING: u8 = 0;
/// … mapped (ready to fill), …
const STAGING_READY: u8 = 1;
/// … or the mapping failed (the buffer leaves the pool).
const STAGING_FAILED: u8 = 2;

/// Copies bytes `a..b` of the concatenation of `parts` into `dst` (whose length is `b − a`,
/// or more by padding). With `check`, also returns whether no 4-byte word of the copied bytes
/// is a non-finite `f32` (`a` and the parts' lengths multiples of 4), scanning each 64 KiB
/// piece right after copying it, while it is in cache; `true` without.
fn copy_range(
    parts: &[&[u8]],
    a: usize,
    b: usize,
    dst: &mut wgpu::BufferViewMut,
    check: bool,
) -> bool {
    const PIECE: usize = 64 << 10;
    let mut finite = true;
    let mut start = 0usize;
    for p in parts {
        let end = start + p.len();
        let (lo, hi) = (a.max(start), b.min(end));
        let mut x = lo;
        while x < hi {
            let y = (x + PIECE).min(hi);
            let src = &p[x - start..y - start];
            dst.slice(x - a..y - a).copy_from_slice(src);
            if check {
                finite &= all_finite_words(src);
            }
            x = y;
        }
        start = end;
        if start >= b {
            break;
        }
    }
    finite
}

/// Whether no 4-byte word of `bytes` is a NaN or infinite `f32` (exponent all ones); integer
/// operations, so that the loop vectorises.
fn all_finite_words(bytes: &[u8]) -> bool {
    let bad = |w: u32| ((w & 0x7f80_0000) == 0x7f80_0000) as u32;
    let acc = match bytemuck::try_cast_slice::<u8, u32>(bytes) {
        Ok(words) => words.iter().fold(0u32, |acc, &w| acc | bad(w)),
        Err(_) => bytes.chunks_exact(4).fold(0u32, |acc, c| {
            acc | bad(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        }),
    };
    acc == 0
}

/// A sequence of commands recorded into one encoder and submitted when results are read.
pub(super) struct Session<'c> {
    pub(super) ctx: &'c Ctx,
    /// The open compute pass that untimed dispatches share (declared before `enc`, so that it
    /// ends before the encoder drops). Any other command ends it first ([`Session::enc`]).
    pass: Option<wgpu::ComputePass<'static>>,
    enc: Option<wgpu::CommandEncoder>,
    stamps: Option<&'c Stamps>,
    /// Dispatches recorded since the last submission (for the trace log).
    recorded: usize,
    /// The dispatches' parameters, one [`PARAM_SLOT`]-byte slot each, written into `arena`
    /// when the session is submitted (so that a dispatch costs no buffer of its own).
    params: Vec<u32>,
    arena: Vec<wgpu::Buffer>,
    /// With `HCC_GPU_PROFILE=1`: timestamps around every pass and each pass's kernel.
    profile: Option<(Stamps, Vec<String>)>,
    /// Scratch space for split-K partial products, reused by every GEMM of the session (a
    /// fresh buffer per GEMM cost more host time than the GEMM itself on some drivers).
    scratch: Option<wgpu::Buffer>,
}

/// Bytes per dispatch in a session's parameter arena (the largest uniform offset alignment
/// an adapter may ask for).
const PARAM_SLOT: usize = 256;
/// Slots per arena buffer.
const ARENA_SLOTS: usize = 256;
/// Passes a profiled session times per submission.
const PROFILED_PASSES: u32 = 2048;

impl<'c> Session<'c> {
    pub(super) fn new(ctx: &'c Ctx) -> Self {
        Session {
            ctx,
            pass: None,
            enc: None,
            stamps: None,
            recorded: 0,
            params: Vec::new(),
            arena: Vec::new(),
            profile: None,
            scratch: None,
        }
    }

    /// The session's scratch buffer, at least `bytes` long (a larger one replaces it where
    /// needed; commands already recorded keep the old one alive). Its contents are undefined.
    pub(super) fn scratch(&mut self, bytes: u64) -> GpuResult<wgpu::Buffer> {
        match &self.scratch {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let b = self.ctx.buffer(bytes, "split-K partial products")?;
                self.scratch = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// A session whose compute passes write timestamps into `stamps`.
    pub(super) fn with_stamps(ctx: &'c Ctx, stamps: &'c Stamps) -> Self {
        Session {
            stamps: Some(stamps),
            ..Session::new(ctx)
        }
    }

    /// The encoder, for commands the session has no method for.
    pub(super) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.enc()
    }

    /// The encoder, after ending the shared compute pass (wgpu locks an encoder while a pass
    /// on it is open).
    fn enc(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        let device = &self.ctx.device;
        self.enc.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hcc") })
        })
    }

    /// Records one dispatch of `kernel` with the uniform `params` at binding 0 and
    /// `buffers[i]` at binding `i + 1`.
    pub(super) fn dispatch(
        &mut self,
        kernel: Kernel,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> GpuResult<()> {
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return Ok(());
        }
        let max = self.ctx.max_groups;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(device_err(format!(
                "{kernel:?}: dispatch {groups:?} exceeds {max} workgroups per dimension"
            )));
        }
        let pipeline = self.ctx.pipeline(kernel)?;
        #[cfg(test)]
        {
            *self
                .ctx
                .dispatches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(kernel)
                .or_default() += 1;
        }
        // This dispatch's parameter slot (a new arena buffer every ARENA_SLOTS dispatches).
        let slot = self.params.len() / (PARAM_SLOT / 4);
        if params.len() * 4 > PARAM_SLOT {
            return Err(device_err(format!("{kernel:?}: too many parameters")));
        }
        if slot / ARENA_SLOTS >= self.arena.len() {
            let buf = self.ctx.checked("parameter arena", || {
                self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: (PARAM_SLOT * ARENA_SLOTS) as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            self.arena.push(buf);
        }
        let start = self.params.len();
        self.params.extend_from_slice(params);
        self.params.resize(start + PARAM_SLOT / 4, 0);
        let size = ((params.len() * 4).max(16).next_multiple_of(16)) as u64;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arena[slot / ARENA_SLOTS],
                offset: ((slot % ARENA_SLOTS) * PARAM_SLOT) as u64,
                size: wgpu::BufferSize::new(size),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
        self.recorded += 1;
        if self.profile.is_none() && self.stamps.is_none() && self.ctx.profile.is_some() {
            self.profile = Some((Stamps::new(self.ctx, PROFILED_PASSES)?, Vec::new()));
        }
        let timestamp_writes = match (&self.stamps, &mut self.profile) {
            (Some(st), _) => st.next(),
            (None, Some((st, kernels))) => {
                let w = st.next();
                if w.is_some() {
                    kernels.push(format!("{kernel:?} {groups:?}"));
                }
                w
            }
            _ => None,
        };
        let device = &self.ctx.device;
        let Session { pass, enc, .. } = self;
        let enc = enc.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("hcc") })
        });
        if timestamp_writes.is_some() {
            // A timed dispatch gets a pass of its own, whose start and end are stamped.
            *pass = None;
            let mut timed = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            timed.set_pipeline(&pipeline);
            timed.set_bind_group(0, &bind, &[]);
            timed.dispatch_workgroups(groups.0, groups.1, groups.2);
            return Ok(());
        }
        // Untimed dispatches share one pass: wgpu still orders each dispatch after the ones
        // whose buffers it uses (a usage scope and barriers per dispatch), and a pass per
        // dispatch cost host time in wgpu and a pass boundary on the device.
        let shared = pass.get_or_insert_with(|| {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            })
            .forget_lifetime()
        });
        shared.set_pipeline(&pipeline);
        shared.set_bind_group(0, &bind, &[]);
        shared.dispatch_workgroups(groups.0, groups.1, groups.2);
        Ok(())
    }

    /// Records zeroing `buf`.
    pub(super) fn clear(&mut self, buf: &wgpu::Buffer) {
        self.enc().clear_buffer(buf, 0, None);
    }

    /// Submits what was recorded and waits for it.
    pub(super) fn flush(&mut self) -> GpuResult<()> {
        self.flush_timed().map(|_| ())
    }

    /// [`Session::flush`], returning the wall time in seconds from the submission to the end
    /// of the wait (0 when nothing was recorded; finishing the encoder is not counted).
    pub(super) fn flush_timed(&mut self) -> GpuResult<f64> {
        self.pass = None;
        let Some(mut enc) = self.enc.take() else {
            return Ok(0.0);
        };
        for (i, chunk) in self.params.chunks(PARAM_SLOT / 4 * ARENA_SLOTS).enumerate() {
            self.ctx
                .queue
                .write_buffer(&self.arena[i], 0, bytemuck::cast_slice(chunk));
        }
        self.params.clear();
        let profiled = match &self.profile {
            Some((st, kernels)) if !kernels.is_empty() => {
                let used = st.used().0;
                let bytes = used as u64 * 8;
                let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamp resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamp staging"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                enc.resolve_query_set(&st.set, 0..used, &resolve, 0);
                enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, Some(bytes));
                Some(staging)
            }
            _ => None,
        };
        let commands = enc.finish();
        let t0 = std::time::Instant::now();
        let idx = self.ctx.queue.submit([commands]);
        self.ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| device_err(format!("waiting for the device: {e}")))?;
        let t = t0.elapsed().as_secs_f64();

        tracing::trace!(
            "gpu submit: {} dispatches, submit + wait {:.4} s",
            std::mem::take(&mut self.recorded),
            t
        );
        if let (Some(staging), Some((st, kernels))) = (profiled, &mut self.profile) {
            let slice = staging.slice(..);
            slice.map_async(wgpu::MapMode::Read, |_| {});
            self.ctx
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| device_err(format!("reading timestamps: {e}")))?;
            let ticks: Vec<u64> = {
                let view = slice
                    .get_mapped_range()
                    .map_err(|e| device_err(format!("reading timestamps: {e}")))?;
                bytemuck::pod_collect_to_vec(&view[..])
            };
            staging.unmap();
            if let Some(prof) = &self.ctx.profile {
                let period = self.ctx.queue.get_timestamp_period() as f64 * 1e-9;
                let mut p = prof.lock().unwrap_or_else(PoisonError::into_inner);
                p.submissions += 1;
                p.wall += t;
                for (i, k) in kernels.iter().enumerate() {
                    let (a, b) = (ticks[2 * i], ticks[2 * i + 1]);
                    let e = p.kernels.entry(k.clone()).or_default();
                    e.0 += 1;
                    e.1 += b.saturating_sub(a) as f64 * period;
                    if i > 0 {
                        p.gaps += a.saturating_sub(ticks[2 * i - 1]) as f64 * period;
                    }
                }
                if let (Some(first), Some(last)) = (ticks.first(), ticks.get(2 * kernels.len() - 1))
                {
                    p.span += last.saturating_sub(*first) as f64 * period;
                }
            }
            st.reset();
            kernels.clear();
        }
        Ok(t)
    }

    /// Submits what was recorded, then reads `count` elements of type `T` of each buffer
    /// starting at element `first` (one staging buffer per read, one submission).
    pub(super) fn read_many<T: bytemuck::Pod>(
        &mut self,
        reads: &[(&wgpu::Buffer, u64, u64)],
    ) -> GpuResult<Vec<Vec<T>>> {
        let mut out: Vec<Vec<T>> = vec![Vec::new(); reads.len()];
        self.read_with::<T>(reads, |i, data| {
            out[i] = bytemuck::pod_collect_to_vec::<u8, T>(data);
        })?;
        Ok(out)
    }

    /// [`Session::read_many`] handing each read's bytes (`count · size_of::<T>()`, straight from
    /// the mapped staging memory) to `take(i, bytes)` instead of copying them into a vector.
    pub(super) fn read_with<T: bytemuck::Pod>(
        &mut self,
        reads: &[(&wgpu::Buffer, u64, u64)],
        mut take: impl FnMut(usize, &[u8]),
    ) -> GpuResult<()> {
        let el = std::mem::size_of::<T>() as u64;
        let mut staging = Vec::with_capacity(reads.len());
        for &(buf, first, count) in reads {
            let bytes = count * el;
            if bytes == 0 {
                staging.push(None);
                continue;
            }
            let size = bytes.next_multiple_of(4);
            let s = self.ctx.take_read_staging(size)?;
            self.enc()
                .copy_buffer_to_buffer(buf, first * el, &s, 0, Some(size));
            staging.push(Some((s, bytes)));
        }
        // Make sure something is submitted even when nothing was recorded.
        self.enc();
        let t_all = std::time::Instant::now();
        let t_submitted = self.flush_timed()?;
        let (tx, rx) = mpsc::channel();
        for (i, s) in staging.iter().enumerate() {
            if let Some((s, bytes)) = s {
                let tx = tx.clone();
                s.slice(..bytes.next_multiple_of(4))
                    .map_async(wgpu::MapMode::Read, move |r| {
                        let _ = tx.send((i, r));
                    });
            }
        }
        drop(tx);
        // The copies have run (flush waited for them): each mapping completes at the next
        // poll, this thread's or, with concurrent workers, another's. Wait for every callback
        // without waiting for other threads' device work.
        let expected = staging.iter().filter(|s| s.is_some()).count();
        let mut seen = 0;
        let t0 = std::time::Instant::now();
        while seen < expected {
            self.ctx
                .device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| device_err(format!("waiting for a download: {e}")))?;
            match rx.recv_timeout(std::time::Duration::from_micros(200)) {
                Ok((_, r)) => {
                    r.map_err(|e| device_err(format!("mapping a download: {e}")))?;
                    seen += 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if t0.elapsed() > std::time::Duration::from_secs(60) {
                        return Err(device_err("a download was not mapped within 60 s"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(device_err("a download's mapping was dropped"));
                }
            }
        }
        let t_mapped = t_all.elapsed().as_secs_f64();
        let bytes: u64 = staging.iter().flatten().map(|(_, b)| *b).sum();
        for (i, s) in staging.into_iter().enumerate() {
            match s {
                None => take(i, &[]),
                Some((s, bytes)) => {
                    {
                        let view = s
                            .slice(..bytes.next_multiple_of(4))
                            .get_mapped_range()
                            .map_err(|e| device_err(format!("reading a download: {e}")))?;
                        take(i, &view[..bytes as usize]);
                    }
                    s.unmap();
                    self.ctx.give_read_staging(s);
                }
            }
        }
        tracing::trace!(
            "read back {bytes} bytes: submission done {t_submitted:.4} s, mapped {t_mapped:.4} \
             s, copied {:.4} s",
            t_all.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// [`Session::read_many`] for one buffer.
    pub(super) fn read<T: bytemuck::Pod>(
        &mut self,
        buf: &wgpu::Buffer,
        first: u64,
        count: u64,
    ) -> GpuResult<Vec<T>> {
        Ok(self
            .read_many::<T>(&[(buf, first, count)])?
            .pop()
            .unwrap_or_default())
    }
}
