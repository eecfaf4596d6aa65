//! Tests of the GPU backend against the CPU backend (on Mesa lavapipe where there is no GPU).
//!
//! Without an adapter every GPU test fails with a message saying so, unless
//! `HCC_SKIP_GPU_TESTS=1`, in which case they print that they skipped. The shader validation
//! tests (naga) need no adapter.

use std::sync::OnceLock;

use super::gemm::{gemm_source, record, reduce_source, Gemm, Operand, Output};
use super::*;
use crate::compute::rng::gaussian_f32;
use crate::compute::tests::orthonormality;

fn skip_allowed() -> bool {
    std::env::var("HCC_SKIP_GPU_TESTS").is_ok_and(|v| v == "1")
}

/// A GPU with `opts` (software adapters allowed), or `None` when there is none and skipping
/// is allowed; panics with instructions otherwise.
fn open(opts: GpuOptions) -> Option<Gpu> {
    match Gpu::new_with(GpuOptions {
        allow_software: true,
        ..opts
    }) {
        Ok(g) => Some(g),
        Err(e) if skip_allowed() => {
            eprintln!("skipping GPU test: {e} (HCC_SKIP_GPU_TESTS=1)");
            None
        }
        Err(e) => panic!(
            "the GPU tests need a wgpu adapter and found none: {e}. Install Mesa lavapipe \
             (Debian/Ubuntu: mesa-vulkan-drivers) or set HCC_SKIP_GPU_TESTS=1 to skip them."
        ),
    }
}

/// The shared default GPU.
fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| open(GpuOptions::default())).as_ref()
}

/// A GPU with a 64 KiB binding limit and a 512 KiB budget: every tensor of the tests is split.
fn split_gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        open(GpuOptions {
            binding_limit: Some(64 * 1024),
            memory_budget: Some(512 * 1024),
            ..Default::default()
        })
    })
    .as_ref()
}

fn gaussian(seed: u64, rows: usize, cols: usize) -> Matrix {
    Matrix::new(rows, cols, gaussian_f32(seed, rows, cols)).unwrap()
}

/// A random `rows × p` matrix with orthonormal columns (the left singular vectors of a
/// Gaussian matrix).
fn orthonormal(seed: u64, rows: usize, p: usize) -> Matrix {
    Cpu.svd_exact(gaussian(seed, rows, p).view(), p).unwrap().u
}

/// `U · diag(sigma) · Vᵀ` with random orthonormal `U` (`m × p`), `V` (`n × p`).
fn with_spectrum(seed: u64, m: usize, n: usize, sigma: &[f64]) -> Matrix {
    let p = sigma.len();
    let mut u = orthonormal(seed, m, p);
    let v = orthonormal(seed + 1, n, p);
    for row in u.data_mut().chunks_mut(p) {
        for (x, s) in row.iter_mut().zip(sigma) {
            *x *= *s as f32;
        }
    }
    Cpu.gemm(u.view(), v.view(), false, true).unwrap()
}

/// `A + noise · G` for a random rank-`r` `A` with unit-scale factors.
fn low_rank_plus_noise(seed: u64, m: usize, n: usize, r: usize, noise: f32) -> Matrix {
    let a = gaussian(seed, m, r);
    let b = gaussian(seed + 1, r, n);
    let mut w = Cpu.gemm(a.view(), b.view(), false, false).unwrap();
    let g = gaussian_f32(seed + 2, m, n);
    for (x, e) in w.data_mut().iter_mut().zip(g) {
        *x += noise * e;
    }
    w
}

/// `‖W − U·S·Vᵀ‖_F / ‖W‖_F` (reconstruction in `f64`).
fn rel_error(w: &Matrix, f: &Factors) -> f64 {
    let approx = f.reconstruct();
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in w.data().iter().zip(approx.data()) {
        num += (x as f64 - y as f64).powi(2);
        den += (x as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Largest deviations seen between GPU and CPU factors.
#[derive(Debug, Default)]
struct Dev {
    /// |e_gpu − e_cpu| / e_cpu of the reconstruction errors.
    error: f64,
    /// max |σ_gpu − σ_cpu| / σ₁.
    sigma: f64,
    /// Orthonormality of the GPU's U and Vᵀ (first `live` triplets).
    orth: f64,
}

/// Checks GPU factors against the CPU's for `w`: reconstruction error within `tol` relative
/// (or 3e-6 absolute, f32 rounding), σ within `tol · σ₁`, orthonormal to 1e-4 over the
/// triplets with σ above 1e-3 σ₁ (below that the vectors of both backends are rounding noise).
fn compare(w: &Matrix, g: &Factors, c: &Factors, tol: f64) -> Dev {
    assert_eq!(g.u.shape(), c.u.shape());
    assert_eq!(g.vt.shape(), c.vt.shape());
    assert_eq!(g.s.len(), c.s.len());
    let (eg, ec) = (rel_error(w, g), rel_error(w, c));
    let error = (eg - ec).abs() / ec.max(1e-30);
    assert!(
        (eg - ec).abs() <= (tol * ec).max(3e-6),
        "reconstruction error: gpu {eg:e}, cpu {ec:e}"
    );
    let s1 = c.s[0].max(f32::MIN_POSITIVE) as f64;
    let mut sigma = 0.0f64;
    for (i, (&a, &b)) in g.s.iter().zip(&c.s).enumerate() {
        let d = (a as f64 - b as f64).abs() / s1;
        sigma = sigma.max(d);
        assert!(d <= tol, "σ{i}: gpu {a}, cpu {b} (σ₁ {s1})");
    }
    for w2 in g.s.windows(2) {
        assert!(w2[0] >= w2[1], "σ not descending: {:?}", g.s);
    }
    let live = g.s.iter().filter(|&&s| s as f64 > 1e-3 * s1).count();
    let orth = orthonormality(&g.u, live).max(orthonormality(&g.vt.transpose(), live));
    assert!(orth < 1e-4, "orthonormality {orth:e}");
    // Sign convention: the largest entry of each row of vt is positive.
    for l in 0..g.rank() {
        let row = &g.vt.data()[l * g.vt.cols()..(l + 1) * g.vt.cols()];
        let mut best = 0;
        for (j, v) in row.iter().enumerate() {
            if v.abs() > row[best].abs() {
                best = j;
            }
        }
        assert!(row[best] >= 0.0);
    }
    Dev { error, sigma, orth }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// Shaders

fn validate(name: &str, src: &str, caps: naga::valid::Capabilities) -> naga::Module {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
    module
}

/// Every shader file parses and validates with naga, and so does every variant the backend
/// compiles (tile configurations, f64 accumulation); every pipeline-constant combination of
/// the GEMM specialises and translates to SPIR-V.
#[test]
fn shaders_validate_with_naga() {
    use naga::valid::Capabilities;
    for (name, src) in super::device::SHADERS {
        let caps = if src.contains("f64") {
            Capabilities::FLOAT64
        } else {
            Capabilities::empty()
        };
        validate(name, src, caps);
    }
    let tiles = [
        GemmTiles::default(),
        GemmTiles::NARROW,
        GemmTiles {
            bm: 128,
            bn: 128,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        GemmTiles {
            bm: 64,
            bn: 128,
            bk: 8,
            tm: 4,
            tn: 8,
        },
    ];
    for t in tiles {
        t.validate(1024, 48 * 1024).unwrap();
        for f64 in [false, true] {
            let caps = if f64 {
                Capabilities::FLOAT64
            } else {
                Capabilities::empty()
            };
            let src = gemm_source(&t, f64).unwrap();
            let name = format!("gemm {t:?} f64={f64}");
            let module = validate(&name, &src, caps);
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap();
            for flags in 0..16u32 {
                let mut pc = naga::back::PipelineConstants::default();
                for (bit, key) in ["TRANS_A", "TRANS_B", "VEC_A", "VEC_B"].iter().enumerate() {
                    pc.insert(key.to_string(), ((flags >> bit) & 1) as f64);
                }
                let (m, i) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, "main")),
                    &pc,
                )
                .unwrap_or_else(|e| panic!("{name} flags {flags}: {e}"));
                naga::back::spv::write_vec(&m, &i, &Default::default(), None)
                    .unwrap_or_else(|e| panic!("{name} flags {flags}: {e}"));
            }
            let caps = if f64 {
                Capabilities::FLOAT64
            } else {
                Capabilities::empty()
            };
            validate("reduce", &reduce_source(f64).unwrap(), caps);
            for kmax in [16, 64] {
                validate("chol", &super::gemm::chol_source(f64, kmax).unwrap(), caps);
            }
        }
    }
    // Bad tiles are refused.
    let bad = GemmTiles {
        bm: 64,
        bn: 64,
        bk: 16,
        tm: 3,
        tn: 4,
    };
    assert!(bad.validate(1024, 48 * 1024).is_err());
    assert!(GemmTiles {
        bm: 256,
        bn: 256,
        bk: 32,
        tm: 4,
        tn: 4
    }
    .validate(1024, 48 * 1024)
    .is_err());
}

#[test]
fn adapters_are_listed() {
    let Some(gpu) = gpu() else { return };
    let all = Gpu::adapters();
    assert!(all.iter().any(|a| a == gpu.adapter()), "{all:?}");
    assert_eq!(gpu.name(), format!("gpu:{}", gpu.adapter().name));
    eprintln!("adapters: {all:#?}");
    // A filter that matches nothing is an error, not a panic.
    let none = Gpu::new_with(GpuOptions {
        allow_software: true,
        adapter: Some("no such adapter, surely".into()),
        ..Default::default()
    });
    assert!(matches!(none, Err(ComputeError::Device(_))));
}

/// Every shader (and every GEMM variant class) really runs on the device in the operations
/// the backend offers: counted dispatches on a fresh device.
#[test]
fn every_shader_runs_on_the_device() {
    let Some(gpu) = open(GpuOptions::default()) else {
        return;
    };
    let w = gaussian(1, 1200, 160);
    let deep = gaussian(2, 4, 2048);
    gpu.gemm(deep.view(), deep.view(), false, true).unwrap(); // split-K, vec4 loads
    gpu.gemm(w.view(), gaussian(3, 7, 160).view(), false, true)
        .unwrap();
    let o = opts(32);
    gpu.lowrank(&[w.view()], 8, &o).unwrap(); // randomized: f64 Grams
    gpu.lowrank(&[w.view()], 60, &o).unwrap(); // Gram path (split-K f64 Gram)
    gpu.magnitude_mask(w.view(), 0.5, MaskPattern::Unstructured)
        .unwrap();
    gpu.magnitude_mask(w.view(), 0.5, MaskPattern::NM { n: 2, m: 4 })
        .unwrap();
    gpu.row_norms(w.view());
    gpu.col_norms(w.view());
    let counts = gpu.ctx.dispatches.lock().unwrap().clone();
    let ran = |f: &dyn Fn(&super::device::Kernel) -> bool| {
        counts
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, c)| *c)
            .sum::<u64>()
    };
    use super::device::Kernel as K;
    for (what, n) in [
        (
            "f32 GEMM, scalar loads",
            ran(&|k| {
                matches!(
                    k,
                    K::Gemm {
                        f64: false,
                        va: false,
                        ..
                    }
                )
            }),
        ),
        (
            "f32 GEMM, vec4 loads",
            ran(&|k| {
                matches!(
                    k,
                    K::Gemm {
                        f64: false,
                        va: true,
                        ..
                    }
                )
            }),
        ),
        ("f64 GEMM", ran(&|k| matches!(k, K::Gemm { f64: true, .. }))),
        (
            "narrow-tile GEMM",
            ran(&|k| matches!(k, K::Gemm { narrow: true, .. })),
        ),
        (
            "transposed A",
            ran(&|k| matches!(k, K::Gemm { ta: true, .. })),
        ),
        (
            "transposed B",
            ran(&|k| matches!(k, K::Gemm { tb: true, .. })),
        ),
        ("f32 reduce", ran(&|k| *k == K::Reduce { f64: false })),
        ("f64 reduce", ran(&|k| *k == K::Reduce { f64: true })),
        ("histogram", ran(&|k| *k == K::Histogram)),
        ("N:M", ran(&|k| *k == K::NmMask)),
        ("row norms", ran(&|k| *k == K::RowSq)),
        ("column norms", ran(&|k| *k == K::ColSq)),
        ("Cholesky-QR step", ran(&|k| matches!(k, K::Chol { .. }))),
        ("double-f32 Gram", ran(&|k| matches!(k, K::Gram2 { .. }))),
        ("f64 Gram", ran(&|k| *k == K::Gram64)),
        ("transpose", ran(&|k| *k == K::Transpose)),
    ] {
        // A hardware adapter runs without f64 shaders unless asked (GpuOptions::prefer_f64);
        // norms then run on the CPU. The small Grams take one of two kernels (Ctx::f64_gram;
        // the other is exercised by `small_grams_match_f64`).
        let needs_f64 = what.contains("f64") || what.contains("norms");
        if (needs_f64 && !gpu.has_f64() && what != "f64 Gram")
            || (what == "f64 Gram" && !gpu.has_f64_gram())
            || (what == "double-f32 Gram" && gpu.has_f64_gram())
        {
            continue;
        }
        assert!(n > 0, "{what} never ran: {counts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM

/// `max |g − c| / (√k · Σ_l |a_il||b_lj|)` over the elements; asserts it is at most 1e-5.
fn check_gemm(gpu: &Gpu, a: &Matrix, b: &Matrix, ta: bool, tb: bool) -> f64 {
    let g = gpu.gemm(a.view(), b.view(), ta, tb).unwrap();
    let c = Cpu.gemm(a.view(), b.view(), ta, tb).unwrap();
    assert_eq!(g.shape(), c.shape());
    let at = if ta { a.transpose() } else { a.clone() };
    let bt = if tb { b.transpose() } else { b.clone() };
    let k = at.cols();
    let mut worst = 0.0f64;
    for i in 0..g.rows() {
        for j in 0..g.cols() {
            let scale: f64 = (0..k)
                .map(|l| (at.get(i, l).unwrap() as f64 * bt.get(l, j).unwrap() as f64).abs())
                .sum();
            let d = (g.get(i, j).unwrap() as f64 - c.get(i, j).unwrap() as f64).abs();
            let rel = d / ((k as f64).sqrt() * scale).max(f64::MIN_POSITIVE);
            if d > 0.0 {
                worst = worst.max(rel);
            }
            assert!(
                rel <= 1e-5,
                "({i}, {j}) of {}×{k}×{} ta={ta} tb={tb}: gpu {} cpu {}",
                g.rows(),
                g.cols(),
                g.get(i, j).unwrap(),
                c.get(i, j).unwrap()
            );
        }
    }
    worst
}

/// Odd shapes, all four transpositions, scalar and vec4 loads, split-K; returns the worst
/// relative deviation.
fn gemm_cases(gpu: &Gpu) -> f64 {
    let mut worst = 0.0f64;
    // (m, k, n): odd sizes (scalar loads), multiples of 4 (vec4 loads), deep k (split-K).
    for (m, k, n) in [
        (1, 1, 1),
        (7, 13, 5),
        (65, 129, 33),
        (64, 128, 64),
        (33, 68, 20),
        (5, 3000, 7),
    ] {
        let a = gaussian(m as u64 * 31 + k as u64, m, k);
        let b = gaussian(n as u64 * 17 + 3, k, n);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let x = if ta { a.transpose() } else { a.clone() };
            let y = if tb { b.transpose() } else { b.clone() };
            worst = worst.max(check_gemm(gpu, &x, &y, ta, tb));
        }
    }
    worst
}

#[test]
fn gemm_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let worst = gemm_cases(gpu);
    eprintln!("GEMM: worst |gpu − cpu| / (√k Σ|a||b|) = {worst:.2e}");
    // Errors as on the CPU; empty products.
    let a = gaussian(1, 4, 5);
    assert!(matches!(
        gpu.gemm(a.view(), a.view(), false, false),
        Err(ComputeError::ShapeMismatch { .. })
    ));
    let e = Matrix::new(0, 5, vec![]).unwrap();
    assert_eq!(
        gpu.gemm(e.view(), a.view(), false, true).unwrap().shape(),
        (0, 4)
    );
    let z = Matrix::new(3, 0, vec![]).unwrap();
    let zz = Matrix::new(0, 2, vec![]).unwrap();
    let p = gpu.gemm(z.view(), zz.view(), false, false).unwrap();
    assert_eq!(p, Matrix::new(3, 2, vec![0.0; 6]).unwrap());
}

/// Other tile configurations (as one would tune them on a large GPU), and shaders compiled
/// without wgpu's bounds checks, give correct products.
#[test]
fn gemm_other_tiles_match_cpu() {
    for (tiles, unchecked) in [
        ((128, 128, 16, 8, 8), false),
        ((64, 128, 8, 4, 8), false),
        ((32, 32, 8, 4, 4), false),
        ((64, 64, 16, 4, 4), true),
        // GemmTiles::NARROW as the only tiles.
        ((128, 32, 16, 8, 4), false),
    ] {
        let (bm, bn, bk, tm, tn) = tiles;
        let Some(gpu) = open(GpuOptions {
            gemm_tiles: Some(GemmTiles { bm, bn, bk, tm, tn }),
            unchecked_shaders: unchecked,
            ..Default::default()
        }) else {
            return;
        };
        let worst = gemm_cases(&gpu);
        eprintln!("GEMM tiles {tiles:?} unchecked={unchecked}: worst {worst:.2e}");
    }
}

/// The GEMM timing hook: every transpose combination, with and without split-K, gives sane
/// medians (GPU times where the adapter has timestamps); bad arguments are errors.
#[test]
fn bench_gemm_times_the_kernel() {
    let Some(gpu) = gpu() else { return };
    for (m, n, k) in [(96, 80, 64), (40, 24, 1100)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let t = gpu.bench_gemm(m, n, k, ta, tb, 3).unwrap();
            assert_eq!(
                (t.m, t.n, t.k, t.trans_a, t.trans_b, t.reps),
                (m, n, k, ta, tb, 3)
            );
            assert!(t.min_seconds > 0.0 && t.min_seconds <= t.seconds, "{t:?}");
            let flop = 2.0 * (m * n * k) as f64;
            assert!((t.tflops - flop / t.seconds / 1e12).abs() <= 1e-9 * t.tflops);
            assert_eq!(t.gpu_seconds.is_some(), gpu.has_timestamps(), "{t:?}");
            if let Some(g) = t.gpu_seconds {
                assert!(g > 0.0 && g.is_finite());
            }
            // The deep, narrow shape is split along k (then a reduction pass follows).
            assert_eq!(t.splits > 1, k > 1000, "{t:?}");
        }
    }
    assert!(matches!(
        gpu.bench_gemm(0, 4, 4, false, false, 1),
        Err(ComputeError::Device(_))
    ));
    assert!(matches!(
        gpu.bench_gemm(4, 4, 4, false, false, 0),
        Err(ComputeError::Device(_))
    ));
}

/// The batched kernel directly: per-matrix and shared operands, offsets, accumulation and
/// subtraction, with split-K (k = 1100, through reduce.wgsl) and without (k = 40), against
/// per-matrix CPU products.
#[test]
fn gemm_batched_with_accumulation() {
    let Some(gpu) = gpu() else { return };
    for (k, subtract) in [(1100usize, false), (1100, true), (40, true)] {
        gemm_batched_case(gpu, k, subtract);
    }
}

fn gemm_batched_case(gpu: &Gpu, k: usize, subtract: bool) {
    let (batch, m, n) = (3usize, 37usize, 9usize);
    let a = gaussian_f32(5, batch * m, k);
    let b = gaussian_f32(6, k, n);
    let c0 = gaussian_f32(7, batch * m, n);
    let got: Vec<f32> = gpu
        .ctx
        .run(|| {
            let ctx = &gpu.ctx;
            let ab = ctx.upload(&[&a[..]], "a")?;
            let bb = ctx.upload(&[&b[..]], "b")?;
            // C starts after 5 padding elements.
            let pad = [0.0f32; 5];
            let cb = ctx.upload(&[&pad[..], &c0[..]], "c")?;
            let mut s = super::device::Session::new(ctx);
            record(
                &mut s,
                &Gemm {
                    a: Operand {
                        buf: &ab,
                        off: 0,
                        ld: k as u64,
                        stride: (m * k) as u64,
                        trans: false,
                    },
                    b: Operand {
                        buf: &bb,
                        off: 0,
                        ld: n as u64,
                        stride: 0,
                        trans: false,
                    },
                    c: Output {
                        buf: &cb,
                        off: 5,
                        ld: n as u64,
                        stride: (m * n) as u64,
                    },
                    m: m as u64,
                    n: n as u64,
                    k: k as u64,
                    batch: batch as u64,
                    accumulate: !subtract,
                    subtract,
                    f64: false,
                },
            )?;
            s.read(&cb, 5, (batch * m * n) as u64)
        })
        .unwrap();
    let bm = Matrix::new(k, n, b.clone()).unwrap();
    for z in 0..batch {
        let az = Matrix::new(m, k, a[z * m * k..(z + 1) * m * k].to_vec()).unwrap();
        let want = Cpu.gemm(az.view(), bm.view(), false, false).unwrap();
        for i in 0..m * n {
            let p = want.data()[i];
            let w = c0[z * m * n + i] + if subtract { -p } else { p };
            let g = got[z * m * n + i];
            assert!(
                (g - w).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + w.abs()) * 4.0,
                "k {k}, subtract {subtract}: matrix {z} element {i}: {g} vs {w}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomized SVD, Gram path, spectra

fn opts(exact_below: usize) -> SvdOptions {
    SvdOptions {
        exact_below,
        ..SvdOptions::default()
    }
}

/// Tall, wide, low-rank plus noise and rank-deficient inputs through the randomized path.
#[test]
fn lowrank_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let sigma: Vec<f64> = (0..200).map(|i| 0.97f64.powi(i)).collect();
    let cases: Vec<(&str, Matrix, usize)> = vec![
        ("tall", with_spectrum(1, 1500, 200, &sigma), 24),
        ("wide", with_spectrum(3, 200, 900, &sigma), 24),
        (
            "low rank + noise",
            low_rank_plus_noise(5, 700, 300, 12, 1e-3),
            16,
        ),
        ("rank 2", low_rank_plus_noise(7, 600, 300, 2, 0.0), 20),
        (
            "zero",
            Matrix::new(400, 160, vec![0.0; 400 * 160]).unwrap(),
            8,
        ),
    ];
    let mut worst = Dev::default();
    for (name, w, rank) in &cases {
        let o = SvdOptions::default();
        let g = gpu.lowrank(&[w.view()], *rank, &o).unwrap().remove(0);
        let c = Cpu.lowrank(&[w.view()], *rank, &o).unwrap().remove(0);
        if *name == "zero" {
            assert!(g.s.iter().all(|&s| s == 0.0));
            assert!(orthonormality(&g.vt.transpose(), *rank) < 1e-4);
            assert!(orthonormality(&g.u, *rank) < 1e-4);
            continue;
        }
        let d = compare(w, &g, &c, 1e-4);
        eprintln!(
            "{name} {:?} rank {rank}: error gpu {:.6e} cpu {:.6e}; {d:?}",
            w.shape(),
            rel_error(w, &g),
            rel_error(w, &c)
        );
        if *name == "rank 2" {
            assert!(g.s[2..].iter().all(|&s| s <= 1e-4 * g.s[0]));
            assert!(rel_error(w, &g) < 1e-5);
        }
        worst.error = worst.error.max(d.error);
        worst.sigma = worst.sigma.max(d.sigma);
        worst.orth = worst.orth.max(d.orth);
    }
    eprintln!("randomized SVD, worst deviation from the CPU: {worst:?}");
}

/// `SvdMethod::Randomized` at ranks where Auto takes the Gram path: the capped Krylov shape,
/// on the resident path (blocks the on-device Cholesky holds: 48 columns) and on the careful
/// path where `f64` Grams hold fewer than the 55 of rank 160, agrees with the CPU.
#[test]
fn randomized_method_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let sigma: Vec<f64> = (0..500).map(|i| 0.99f64.powi(i)).collect();
    let w = with_spectrum(11, 500, 900, &sigma);
    let o = SvdOptions {
        method: crate::compute::SvdMethod::Randomized,
        ..SvdOptions::default()
    };
    for rank in [115, 160] {
        let LowrankRoute::Sketch(shape) = o.lowrank_route((500, 900), rank) else {
            panic!("rank {rank}: not the Krylov route");
        };
        assert!(shape.block <= crate::compute::MAX_RANDOMIZED_BLOCK);
        assert_eq!(
            SvdOptions::default().lowrank_route((500, 900), rank),
            LowrankRoute::Gram
        );
        let g = gpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
        let c = Cpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
        let d = compare(&w, &g, &c, 1e-4);
        eprintln!("randomized method, rank {rank} ({shape:?}): {d:?}");
    }
}

/// The randomized SVD keeps full-rank matrices on the resident path (every orthonormalisation
/// of the Krylov basis on the device, shaders/chol.wgsl) and redoes on the careful path exactly
/// the matrices the device flags (an exactly rank-2 one: the Krylov space runs out), whose
/// neighbours in the batch keep their bits.
#[test]
fn resident_path_and_careful_redo() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(gpu) = open(GpuOptions::default()) else {
        return;
    };
    let sigma: Vec<f64> = (0..200).map(|i| 0.97f64.powi(i)).collect();
    let full = with_spectrum(1, 600, 200, &sigma);
    let other = with_spectrum(2, 600, 200, &sigma);
    let low = low_rank_plus_noise(7, 600, 200, 2, 0.0);
    let o = SvdOptions::default();
    assert!(matches!(
        o.lowrank_route((600, 200), 24),
        LowrankRoute::Sketch(_)
    ));
    let alone = gpu.lowrank(&[full.view()], 24, &o).unwrap();
    assert_eq!(gpu.ctx.careful.load(Relaxed), 0);
    let chol = |g: &Gpu| {
        g.ctx
            .dispatches
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| matches!(k, super::device::Kernel::Chol { .. }))
            .map(|(_, c)| *c)
            .sum::<u64>()
    };
    assert!(chol(&gpu) > 0);
    let mixed = gpu
        .lowrank(&[full.view(), low.view(), other.view()], 24, &o)
        .unwrap();
    assert_eq!(gpu.ctx.careful.load(Relaxed), 1);
    assert_eq!(mixed[0], alone[0]);
    assert!(rel_error(&low, &mixed[1]) < 1e-5);
    assert!(orthonormality(&mixed[1].u, 2) < 1e-4);
    let cpu = Cpu
        .lowrank(&[full.view(), low.view(), other.view()], 24, &o)
        .unwrap();
    for (w, i) in [(&full, 0), (&other, 2)] {
        compare(w, &mixed[i], &cpu[i], 1e-4);
    }
}

/// shaders/gram2.wgsl and gram64.wgsl: the Gram of `f32` columns accumulated in double-`f32`
/// or in `f64` agrees with the CPU's `f64` Gram to `f64`-like accuracy (far below one `f32`
/// rounding), for a batch, a side that is not a multiple of the tile, and columns of very
/// different scales; the same from the matrices stored transposed, and from their rows in two
/// buffers (accumulated); with 10001 rows, summed in row splits and combined (split-K).
#[test]
fn small_grams_match_f64() {
    let Some(gpu) = gpu() else { return };
    use super::device::Kernel as K;
    // gram64.wgsl needs SHADER_F64 on the device (enabled for either use of f64).
    let kernels: &[bool] = if gpu.has_f64() || gpu.has_f64_gram() {
        &[false, true]
    } else {
        &[false]
    };
    let fused = gpu.ctx.fused_fma();
    eprintln!("fma fused on this device: {fused}");
    let mut variants = vec![K::Gram2 { fused: false }];
    if fused {
        variants.push(K::Gram2 { fused: true });
    }
    if kernels.len() == 2 {
        variants.push(K::Gram64);
    }
    for &kernel in &variants {
        for n in [3001, 10001] {
            small_gram_case(gpu, n, kernel);
        }
    }
    let combined = gpu.ctx.dispatches.lock().unwrap().clone();
    assert!(combined.get(&K::Gram2Combine).is_some_and(|&c| c > 0));
    if kernels.len() == 2 {
        assert!(combined.get(&K::Gram64Combine).is_some_and(|&c| c > 0));
    }
}

/// A Gram's row splits depend on one matrix's shape and the device, never on the batch: with a
/// budget so small that a batch's partial sums do not fit together, the batch is summed in
/// sub-batches with the same splits, and every matrix gets the bits it gets alone.
#[test]
fn small_gram_bits_do_not_depend_on_the_batch() {
    use super::device::Kernel as K;
    use super::rsvd::{record_gram_with, Gram2};
    let Some(gpu) = open(GpuOptions {
        memory_budget: Some(512 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    let ctx = &gpu.ctx;
    // 1100 rows: three splits of one matrix fit an eighth of the budget, not those of four.
    let (n, k, g) = (1100usize, 40usize, 4usize);
    let xs = gaussian(77, g * n, k).data;
    let mut kernels = vec![K::Gram2 { fused: false }];
    if ctx.fused_fma() {
        kernels.push(K::Gram2 { fused: true });
    }
    if gpu.has_f64() || gpu.has_f64_gram() {
        kernels.push(K::Gram64);
    }
    for kernel in kernels {
        let at = |off| Gram2 {
            n,
            k,
            ld: k,
            stride: n * k,
            off,
            tr: false,
            acc: false,
        };
        let before = ctx.dispatches.lock().unwrap().clone();
        let (batch, alone): (Vec<u32>, Vec<Vec<u32>>) = ctx
            .run(|| {
                let xb = ctx.upload(&[&xs[..]], "x")?;
                let out = ctx.buffer((g * k * k * 8) as u64, "batch")?;
                let mut s = super::device::Session::new(ctx);
                record_gram_with(&mut s, &xb, &out, &at(0), g, kernel)?;
                let batch = s.read(&out, 0, (g * k * k * 2) as u64)?;
                let mut alone = Vec::new();
                for z in 0..g {
                    let one = ctx.buffer((k * k * 8) as u64, "alone")?;
                    record_gram_with(&mut s, &xb, &one, &at(z * n * k), 1, kernel)?;
                    alone.push(s.read(&one, 0, (k * k * 2) as u64)?);
                }
                Ok((batch, alone))
            })
            .unwrap();
        let after = ctx.dispatches.lock().unwrap().clone();
        let combine = if kernel == K::Gram64 {
            K::Gram64Combine
        } else {
            K::Gram2Combine
        };
        let ran =
            after.get(&combine).copied().unwrap_or(0) - before.get(&combine).copied().unwrap_or(0);
        // One combine per matrix in the batch (sub-batches of one), one per matrix alone.
        assert_eq!(ran, 2 * g as u64, "{kernel:?}: sub-batches");
        for (z, one) in alone.iter().enumerate() {
            let words = 2 * k * k;
            // Upper triangles only: the rest is never written.
            for a in 0..k {
                for b in a..k {
                    let o = 2 * (a * k + b);
                    assert_eq!(
                        &batch[z * words + o..z * words + o + 2],
                        &one[o..o + 2],
                        "{kernel:?}: matrix {z}, entry ({a}, {b})"
                    );
                }
            }
        }
    }
}

fn small_gram_case(gpu: &Gpu, n: usize, kernel: super::device::Kernel) {
    use super::rsvd::{gram_from_words, record_gram_with, Gram2};
    let f64 = kernel == super::device::Kernel::Gram64;
    let ctx = &gpu.ctx;
    let (k, g) = (37usize, 2usize);
    let mut xs: Vec<f32> = Vec::with_capacity(g * n * k);
    for z in 0..g {
        let x = gaussian(50 + z as u64, n, k);
        for r in 0..n {
            for c in 0..k {
                // Scales 1 … 1e-3 across the columns, and a common offset (ill-conditioned).
                let scale = 10f32.powf(-3.0 * c as f32 / k as f32);
                xs.push(x.data[r * k + c] * scale + 0.25);
            }
        }
    }
    // The same matrices transposed (k × n each), and split after row `cut`.
    let xt: Vec<f32> = (0..g)
        .flat_map(|z| {
            let xs = &xs;
            (0..k).flat_map(move |c| (0..n).map(move |r| xs[z * n * k + r * k + c]))
        })
        .collect();
    let cut = 1234;
    let top: Vec<f32> = (0..g)
        .flat_map(|z| xs[z * n * k..(z * n + cut) * k].to_vec())
        .collect();
    let bottom: Vec<f32> = (0..g)
        .flat_map(|z| xs[(z * n + cut) * k..(z + 1) * n * k].to_vec())
        .collect();
    let plain = |n, ld, stride, tr, acc| Gram2 {
        n,
        k,
        ld,
        stride,
        off: 0,
        tr,
        acc,
    };
    let runs: Vec<Vec<u32>> = ctx
        .run(|| {
            let mut s = super::device::Session::new(ctx);
            let mut outs = Vec::new();
            let xb = ctx.upload(&[&xs[..]], "x")?;
            let tb = ctx.upload(&[&xt[..]], "xt")?;
            let (b0, b1) = (
                ctx.upload(&[&top[..]], "top")?,
                ctx.upload(&[&bottom[..]], "bottom")?,
            );
            for _ in 0..3 {
                outs.push(ctx.buffer((g * k * k * 8) as u64, "pairs")?);
            }
            let (x0, x1) = (
                plain(n, k, n * k, false, false),
                plain(n, n, n * k, true, false),
            );
            record_gram_with(&mut s, &xb, &outs[0], &x0, g, kernel)?;
            record_gram_with(&mut s, &tb, &outs[1], &x1, g, kernel)?;
            let top = plain(cut, k, cut * k, false, false);
            record_gram_with(&mut s, &b0, &outs[2], &top, g, kernel)?;
            let rest = n - cut;
            let bottom = plain(rest, k, rest * k, false, true);
            record_gram_with(&mut s, &b1, &outs[2], &bottom, g, kernel)?;
            outs.iter()
                .map(|o| s.read(o, 0, (g * k * k * 2) as u64))
                .collect()
        })
        .unwrap();
    let kind = format!("{kernel:?}");
    for (what, got) in ["plain", "transposed", "two row blocks"].iter().zip(&runs) {
        let mut worst = 0.0f64;
        for z in 0..g {
            let want = crate::compute::dense::gram(&xs[z * n * k..(z + 1) * n * k], n, k);
            let v = gram_from_words(got, z, k, f64);
            for a in 0..k {
                for b in a..k {
                    let w = want[a * k + b];
                    let scale = (want[a * k + a] * want[b * k + b]).sqrt();
                    worst = worst.max((v[a * k + b] - w).abs() / scale);
                }
            }
        }
        eprintln!("{kind} Gram ({what}, {n} rows): worst |ΔG_ab| / √(G_aa G_bb) = {worst:.2e}");
        // f64 sums of exact products: within n·2⁻⁵³ of the CPU's (another order of the sum).
        let tol = if f64 { 1e-12 } else { 1e-10 };
        assert!(worst < tol, "{kind}, {what}, {n} rows: {worst:e}");
    }
    // Same sums in the same order: the transposed read gives the same bits.
    assert_eq!(runs[0], runs[1]);
}

/// The Gram-eigendecomposition path (`4k ≥ min(m, n)`), tall and wide, and the exact path.
#[test]
fn gram_and_exact_paths_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let sigma: Vec<f64> = (0..160).map(|i| 1.0 / (1.0 + i as f64)).collect();
    for (m, n, rank) in [(600, 160, 40), (160, 500, 64)] {
        let w = with_spectrum(m as u64, m, n, &sigma);
        let o = opts(64);
        let g = gpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
        let c = Cpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
        let d = compare(&w, &g, &c, 1e-4);
        eprintln!("Gram path {m}×{n} rank {rank}: {d:?}");
    }
    // Exact path: the same computation as the CPU.
    let w = gaussian(9, 60, 90);
    let g = gpu
        .lowrank(&[w.view()], 10, &SvdOptions::default())
        .unwrap();
    let c = Cpu
        .lowrank(&[w.view()], 10, &SvdOptions::default())
        .unwrap();
    assert_eq!(g, c);
    assert_eq!(
        gpu.svd_exact(w.view(), 7).unwrap(),
        Cpu.svd_exact(w.view(), 7).unwrap()
    );
}

#[test]
fn spectra_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let sigma: Vec<f64> = (0..150).map(|i| (-(i as f64) / 30.0).exp()).collect();
    let w = with_spectrum(21, 800, 150, &sigma);
    let wt = w.transpose();
    for x in [&w, &wt] {
        let o = opts(32);
        let g = gpu.spectrum_with(&[x.view()], 20, &o).unwrap().remove(0);
        let c = Cpu.spectrum_with(&[x.view()], 20, &o).unwrap().remove(0);
        assert_eq!(g.len(), c.len());
        for (a, b) in g.iter().zip(&c) {
            assert!((a - b).abs() <= 1e-4 * c[0], "{a} vs {b}");
        }
        let fg = gpu.full_spectrum(x.view()).unwrap();
        let fc = Cpu.full_spectrum(x.view()).unwrap();
        assert_eq!(fg.len(), 150);
        let worst = fg
            .iter()
            .zip(&fc)
            .map(|(a, b)| ((a - b).abs() / fc[0]) as f64)
            .fold(0.0, f64::max);
        eprintln!("full spectrum {:?}: worst |Δσ|/σ₁ = {worst:.2e}", x.shape());
        assert!(worst <= 1e-5);
    }
    assert!(gpu
        .full_spectrum(Matrix::new(0, 3, vec![]).unwrap().view())
        .unwrap()
        .is_empty());
}

/// `lowrank_many` (several jobs at a time, each within its share of the budget) gives each
/// job what `lowrank` gives it, bit for bit: jobs of several shapes and routes (randomized,
/// Gram, exact; products deep enough for split-K), on a device whose small budget splits the
/// batches into groups; an error is the first failing job's; on a rayon worker the jobs run
/// in turn.
#[test]
fn lowrank_many_matches_lowrank() {
    let Some(gpu) = open(GpuOptions {
        memory_budget: Some(2 << 20),
        ..Default::default()
    }) else {
        return;
    };
    let o = opts(32);
    let a: Vec<Matrix> = (0..5).map(|i| gaussian(70 + i, 300, 120)).collect();
    let b: Vec<Matrix> = (0..3).map(|i| gaussian(80 + i, 90, 400)).collect();
    let c: Vec<Matrix> = (0..2).map(|i| gaussian(90 + i, 20, 30)).collect();
    fn views(ms: &[Matrix]) -> Vec<MatrixRef<'_>> {
        ms.iter().map(Matrix::view).collect()
    }
    let d: Vec<Matrix> = (0..2).map(|i| gaussian(95 + i, 2048, 200)).collect();
    let (va, vb, vc, vd) = (views(&a), views(&b), views(&c), views(&d));
    let jobs: Vec<(&[MatrixRef<'_>], usize)> = vec![
        (&va[..], 8),
        (&vb[..], 70),
        (&vc[..], 5),
        (&vd[..], 30),
        (&va[..], 40),
        (&[][..], 3),
    ];
    let many = gpu.lowrank_many(&jobs, &o).unwrap();
    assert_eq!(many.len(), jobs.len());
    for (j, (got, &(batch, rank))) in many.iter().zip(&jobs).enumerate() {
        assert_eq!(*got, gpu.lowrank(batch, rank, &o).unwrap(), "job {j}");
    }
    // Job 1 fails (rank above the short side) and job 3 too: job 1's error.
    let bad: Vec<(&[MatrixRef<'_>], usize)> =
        vec![(&va[..], 8), (&vb[..], 91), (&vc[..], 5), (&vc[..], 99)];
    let err = gpu.lowrank_many(&bad, &o).unwrap_err();
    assert_eq!(err, gpu.lowrank(&vb, 91, &o).unwrap_err());
    assert_eq!(
        Cpu.lowrank_many(&jobs[..2], &o).unwrap()[1],
        Cpu.lowrank(&vb, 70, &o).unwrap()
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| gpu.lowrank_many(&jobs, &o).unwrap()), many);
}

/// shaders/transpose.wgsl against the host: tall matrices stored short side first, a group of
/// two in one block and (64 KiB bindings) one at a time from 4 uploaded blocks into 4 blocks
/// of the transpose; wide ones untouched. Bit-identical (a copy).
#[test]
fn transposed_upload_matches_host() {
    let shape = crate::compute::KrylovShape { block: 5, depth: 4 };
    let mats = [gaussian(21, 600, 96), gaussian(22, 600, 96)];
    let wide = [gaussian(23, 96, 600)];
    for gpu in [gpu(), split_gpu()].into_iter().flatten() {
        for group in [&mats[..], &wide[..]] {
            let views: Vec<MatrixRef<'_>> = group.iter().map(Matrix::view).collect();
            let got = super::rsvd::short_first_on_device(&gpu.ctx, &views, shape).unwrap();
            assert_eq!(got.len(), group.len());
            for (w, a) in group.iter().zip(&got) {
                let want = if w.rows() > w.cols() {
                    w.transpose()
                } else {
                    w.clone()
                };
                assert_eq!(
                    a,
                    &want.data,
                    "{}×{} on {:?}",
                    w.rows(),
                    w.cols(),
                    gpu.binding_limit()
                );
            }
        }
    }
}

/// Same input → bit-identical output; a matrix gets the same bits alone or in a batch, and
/// in groups cut by a small budget.
#[test]
fn deterministic_and_batch_independent() {
    let Some(gpu) = gpu() else { return };
    let sigma: Vec<f64> = (0..120).map(|i| 1.0 / (1.0 + i as f64)).collect();
    let mats: Vec<Matrix> = (0..3)
        .map(|s| with_spectrum(40 + s, 500, 120, &sigma))
        .collect();
    let views: Vec<MatrixRef<'_>> = mats.iter().map(Matrix::view).collect();
    let o = opts(32);
    let a = gpu.lowrank(&views, 12, &o).unwrap();
    let b = gpu.lowrank(&views, 12, &o).unwrap();
    assert_eq!(a, b);
    let alone = gpu.lowrank(&views[2..], 12, &o).unwrap();
    assert_eq!(alone[0], a[2]);
    let Some(small) = open(GpuOptions {
        memory_budget: Some(1400 * 1024),
        ..Default::default()
    }) else {
        return;
    };
    // Groups of two, then one (each matrix needs ~660 KB: its transpose, the upload it is
    // made from, the Krylov basis and Bᵀ).
    let LowrankRoute::Sketch(shape) = o.lowrank_route((500, 120), 12) else {
        panic!("500 × 120 at rank 12 takes the randomized path");
    };
    let plan = super::rsvd::randomized_plan(&small.ctx, 3, (500, 120), shape).unwrap();
    assert_eq!((plan.g, plan.blocks.len()), (2, 1));
    let grouped = small.lowrank(&views, 12, &o).unwrap();
    assert_eq!(grouped, a);
    for (w, (g, c)) in mats
        .iter()
        .zip(a.iter().zip(Cpu.lowrank(&views, 12, &o).unwrap().iter()))
    {
        compare(w, g, c, 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// Masks and norms

#[test]
fn masks_identical_to_cpu() {
    let Some(gpu) = gpu() else { return };
    // Heavy ties: values in {-2, …, 2}; and continuous values.
    let ties = Matrix::from_fn(31, 17, |i, j| ((i * 7 + j * 3) % 5) as f32 - 2.0).unwrap();
    let cont = gaussian(3, 45, 38);
    for w in [&ties, &cont] {
        for s in [0.0f32, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0] {
            for pattern in [
                MaskPattern::Unstructured,
                MaskPattern::Rows,
                MaskPattern::Cols,
            ] {
                assert_eq!(
                    gpu.magnitude_mask(w.view(), s, pattern).unwrap(),
                    Cpu.magnitude_mask(w.view(), s, pattern).unwrap(),
                    "{pattern:?} sparsity {s}"
                );
            }
        }
        for (n, m) in [(2, 4), (1, 4), (4, 8), (3, 7), (0, 3), (5, 5), (16, 32)] {
            let p = MaskPattern::NM { n, m };
            assert_eq!(
                gpu.magnitude_mask(w.view(), 0.0, p).unwrap(),
                Cpu.magnitude_mask(w.view(), 0.0, p).unwrap(),
                "{n}:{m}"
            );
        }
        assert_eq!(
            bits(&gpu.row_norms(w.view())),
            bits(&Cpu.row_norms(w.view()))
        );
        assert_eq!(
            bits(&gpu.col_norms(w.view())),
            bits(&Cpu.col_norms(w.view()))
        );
    }
    // Groups longer than the shader takes run on the CPU, same result.
    let p = MaskPattern::NM { n: 10, m: 40 };
    assert_eq!(
        gpu.magnitude_mask(cont.view(), 0.0, p).unwrap(),
        Cpu.magnitude_mask(cont.view(), 0.0, p).unwrap()
    );
    // All equal: the first elements in row-major order stay; N:M keeps the first rows.
    let ones = Matrix::new(8, 2, vec![-1.0; 16]).unwrap();
    for p in [MaskPattern::Unstructured, MaskPattern::NM { n: 1, m: 4 }] {
        assert_eq!(
            gpu.magnitude_mask(ones.view(), 0.5, p).unwrap(),
            Cpu.magnitude_mask(ones.view(), 0.5, p).unwrap()
        );
    }
    // Global thresholds and masks over matrices of different shapes.
    let a = gaussian(1, 50, 40);
    let b = gaussian(2, 30, 70);
    let c = Matrix::new(2, 3, vec![0.0, -1.0, 2.0, -2.0, 1.0, 3.0]).unwrap();
    let batch = [a.view(), b.view(), ties.view(), c.view()];
    for s in [0.0f32, 0.3, 0.5, 0.99, 1.0] {
        assert_eq!(
            gpu.global_threshold(&batch, s).unwrap().to_bits(),
            Cpu.global_threshold(&batch, s).unwrap().to_bits()
        );
        assert_eq!(
            gpu.global_magnitude_masks(&batch, s).unwrap(),
            Cpu.global_magnitude_masks(&batch, s).unwrap()
        );
    }
    assert_eq!(gpu.global_threshold(&[c.view()], 0.5).unwrap(), 2.0);
    assert_eq!(gpu.global_threshold(&[], 0.5).unwrap(), f32::INFINITY);
}

#[test]
fn errors_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let a = gaussian(1, 300, 200);
    let mut bad = a.clone();
    bad.data_mut()[5 * 200 + 7] = f32::NAN;
    let other = Matrix::zeros(200, 300);
    let o = SvdOptions::default();
    let backends: [&dyn Backend; 2] = [gpu, &Cpu];
    let results: Vec<Vec<String>> = backends
        .iter()
        .map(|b| {
            vec![
                // The randomized route (finiteness checked while uploading on the GPU), and
                // a non-finite input with an invalid rank (finiteness is reported first).
                format!("{:?}", b.lowrank(&[a.view(), bad.view()], 8, &o)),
                format!("{:?}", b.lowrank(&[a.view(), bad.view()], 0, &o)),
                format!("{:?}", b.lowrank(&[bad.view(), a.view()], 24, &o)),
                format!("{:?}", b.lowrank(&[a.view(), other.view()], 8, &o)),
                format!("{:?}", b.lowrank(&[a.view()], 0, &o)),
                format!("{:?}", b.lowrank(&[a.view()], 201, &o)),
                format!("{:?}", b.svd_exact(a.view(), 0)),
                format!("{:?}", b.lowrank(&[], 8, &o)),
                format!("{:?}", b.spectrum(&[bad.view()], 4)),
                format!(
                    "{:?}",
                    b.magnitude_mask(a.view(), 1.5, MaskPattern::Unstructured)
                ),
                format!(
                    "{:?}",
                    b.magnitude_mask(a.view(), f32::NAN, MaskPattern::Rows)
                ),
                format!(
                    "{:?}",
                    b.magnitude_mask(a.view(), 0.5, MaskPattern::NM { n: 3, m: 2 })
                ),
                format!("{:?}", b.magnitude_mask(bad.view(), 0.5, MaskPattern::Cols)),
                format!("{:?}", b.global_threshold(&[a.view(), bad.view()], 0.5)),
                format!("{:?}", b.global_magnitude_masks(&[a.view()], -0.1)),
                format!("{:?}", b.full_spectrum(bad.view())),
                format!("{:?}", b.gemm(a.view(), a.view(), false, false)),
            ]
        })
        .collect();
    assert_eq!(results[0], results[1]);
}

// ---------------------------------------------------------------------------------------------
// Splitting along rows (binding limit) and the memory budget

/// With a 64 KiB binding limit every matrix below is split into blocks of rows (and GEMM
/// operands into pieces); results agree with the CPU as closely as unsplit ones, masks and
/// norms stay identical.
#[test]
fn row_split_path_matches_cpu() {
    let Some(gpu) = split_gpu() else { return };
    assert_eq!(gpu.binding_limit(), 64 * 1024);
    // 2000 × 96 f32 (768 KB) goes in 12 blocks of 170 rows, one matrix at a time.
    let o = SvdOptions {
        oversample: 8,
        exact_below: 16,
        ..SvdOptions::default()
    };
    let LowrankRoute::Sketch(shape) = o.lowrank_route((600, 96), 8) else {
        panic!("600 × 96 at rank 8 takes the randomized path");
    };
    // Short side first: 96 × 600 (each row 2400 bytes) in blocks of 27 rows, one matrix at a
    // time; a tall 600 × 96 goes up in blocks of 170 of its rows and is transposed into them.
    let plan = super::rsvd::randomized_plan(&gpu.ctx, 4, (600, 96), shape).unwrap();
    assert_eq!((plan.g, plan.blocks.len(), plan.blocks[0].1), (1, 4, 27));
    assert!(super::rsvd::randomized_fits(&gpu.ctx, (600, 96), shape));
    // 2000 × 96: Bᵀ (2000 × 25, 200 KB) exceeds the binding; the batch runs on the CPU.
    assert!(!super::rsvd::randomized_fits(&gpu.ctx, (2000, 96), shape));
    // GEMM: A is 150×200 (120 KB), B 200×90: pieces along every dimension.
    let a = gaussian(1, 150, 200);
    let b = gaussian(2, 200, 90);
    for (ta, tb) in [(false, false), (true, true)] {
        let x = if ta { a.transpose() } else { a.clone() };
        let y = if tb { b.transpose() } else { b.clone() };
        check_gemm(gpu, &x, &y, ta, tb);
    }
    let sigma: Vec<f64> = (0..96).map(|i| 0.95f64.powi(i)).collect();
    // Randomized path: tall 600×96 (230 KB: uploaded in 4 blocks, transposed into 4) and wide
    // 96×600 (4 blocks); their Bᵀ, 600 × 25, just fits the binding.
    let tall = with_spectrum(11, 600, 96, &sigma);
    let wide = with_spectrum(12, 96, 600, &sigma);
    let long = with_spectrum(13, 2000, 96, &sigma);
    assert_eq!(
        gpu.lowrank(&[long.view()], 8, &o).unwrap(),
        Cpu.lowrank(&[long.view()], 8, &o).unwrap()
    );
    for w in [&tall, &wide] {
        let g = gpu.lowrank(&[w.view()], 8, &o).unwrap().remove(0);
        let c = Cpu.lowrank(&[w.view()], 8, &o).unwrap().remove(0);
        let d = compare(w, &g, &c, 1e-4);
        eprintln!("split randomized {:?}: {d:?}", w.shape());
        let s = gpu.spectrum_with(&[w.view()], 6, &o).unwrap().remove(0);
        let sc = Cpu.spectrum_with(&[w.view()], 6, &o).unwrap().remove(0);
        for (x, y) in s.iter().zip(&sc) {
            assert!((x - y).abs() <= 1e-4 * sc[0]);
        }
    }
    // Gram path: tall 2000×80 (W·E by blocks) and wide 80×700 (W·Wᵀ by pairs of blocks).
    let o2 = SvdOptions {
        oversample: 20,
        exact_below: 16,
        ..SvdOptions::default()
    };
    let tall80 = with_spectrum(13, 2000, 80, &sigma[..80]);
    let wide80 = with_spectrum(14, 80, 700, &sigma[..80]);
    for w in [&tall80, &wide80] {
        let g = gpu.lowrank(&[w.view()], 8, &o2).unwrap().remove(0);
        let c = Cpu.lowrank(&[w.view()], 8, &o2).unwrap().remove(0);
        let d = compare(w, &g, &c, 1e-4);
        eprintln!("split Gram path {:?}: {d:?}", w.shape());
        let fg = gpu.full_spectrum(w.view()).unwrap();
        let fc = Cpu.full_spectrum(w.view()).unwrap();
        for (x, y) in fg.iter().zip(&fc) {
            assert!((x - y).abs() <= 1e-5 * fc[0]);
        }
    }
    // Masks: histograms over 16384-element pieces, N:M and norms by row chunks.
    let big = gaussian(5, 300, 130);
    for p in [
        MaskPattern::Unstructured,
        MaskPattern::NM { n: 2, m: 4 },
        MaskPattern::NM { n: 3, m: 7 },
        MaskPattern::Rows,
        MaskPattern::Cols,
    ] {
        assert_eq!(
            gpu.magnitude_mask(big.view(), 0.6, p).unwrap(),
            Cpu.magnitude_mask(big.view(), 0.6, p).unwrap(),
            "{p:?}"
        );
    }
    assert_eq!(
        bits(&gpu.col_norms(big.view())),
        bits(&Cpu.col_norms(big.view()))
    );
    let batch = [big.view(), tall.view()];
    assert_eq!(
        gpu.global_magnitude_masks(&batch, 0.8).unwrap(),
        Cpu.global_magnitude_masks(&batch, 0.8).unwrap()
    );
    // A row longer than a binding is an error, not a panic.
    let long_row = Matrix::new(2, 20_000, vec![1.0; 40_000]).unwrap();
    let long_sketch = SvdOptions {
        exact_below: 0,
        oversample: 0,
        ..SvdOptions::default()
    };
    assert!(matches!(
        gpu.lowrank(&[long_row.view()], 1, &long_sketch),
        Err(ComputeError::Device(_)) | Ok(_)
    ));
}

/// The Cholesky-QR with `f32` Grams (adapters without `SHADER_F64`) still agrees with the
/// CPU (looser: the Gram's rounding is `f32`'s), and masks stay identical.
#[test]
fn f32_gram_mode_matches_cpu() {
    let Some(gpu) = open(GpuOptions {
        disable_f64: true,
        ..Default::default()
    }) else {
        return;
    };
    assert!(!gpu.has_f64());
    let sigma: Vec<f64> = (0..200).map(|i| 0.97f64.powi(i)).collect();
    let w = with_spectrum(31, 1200, 200, &sigma);
    let o = SvdOptions::default();
    let g = gpu.lowrank(&[w.view()], 24, &o).unwrap().remove(0);
    let c = Cpu.lowrank(&[w.view()], 24, &o).unwrap().remove(0);
    let d = compare(&w, &g, &c, 1e-4);
    eprintln!("f32 Grams 1200×200 rank 24: {d:?}");
    let low = low_rank_plus_noise(7, 600, 300, 2, 0.0);
    let g = gpu.lowrank(&[low.view()], 20, &o).unwrap().remove(0);
    assert!(rel_error(&low, &g) < 1e-5);
    assert!(orthonormality(&g.u, 2) < 1e-4);
    let m = gaussian(2, 40, 30);
    assert_eq!(
        gpu.magnitude_mask(m.view(), 0.4, MaskPattern::Rows)
            .unwrap(),
        Cpu.magnitude_mask(m.view(), 0.4, MaskPattern::Rows)
            .unwrap()
    );
    // The Gram path and full spectra with double-f32 Grams (shaders/gram2.wgsl), tall and
    // wide, and tall split into row blocks (the Grams accumulated over the blocks); a wide
    // matrix split into row blocks takes the CPU's route.
    let sigma: Vec<f64> = (0..160).map(|i| 1.0 / (1.0 + i as f64)).collect();
    let split = open(GpuOptions {
        disable_f64: true,
        binding_limit: Some(64 * 1024),
        ..Default::default()
    });
    let full = [(600, 160, 40), (160, 500, 64)];
    // With 64 KiB bindings the Gram (8 bytes an element) must fit one: short side 80.
    let small = [(600, 80, 20), (80, 500, 20)];
    for (gpu, shapes) in std::iter::once((&gpu, full)).chain(split.as_ref().map(|g| (g, small))) {
        for (m, n, rank) in shapes {
            let w = with_spectrum(m as u64 + 1, m, n, &sigma[..m.min(n)]);
            let o = opts(64);
            let g = gpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
            let c = Cpu.lowrank(&[w.view()], rank, &o).unwrap().remove(0);
            let d = compare(&w, &g, &c, 1e-4);
            let fg = gpu.full_spectrum(w.view()).unwrap();
            let fc = Cpu.full_spectrum(w.view()).unwrap();
            assert_eq!(fg.len(), fc.len());
            let worst = fg
                .iter()
                .zip(&fc)
                .map(|(a, b)| ((a - b).abs() / fc[0]) as f64)
                .fold(0.0, f64::max);
            eprintln!(
                "double-f32 Gram path {m}×{n} rank {rank} (binding {} B): {d:?}; full spectrum \
                 worst |Δσ|/σ₁ = {worst:.2e}",
                gpu.binding_limit()
            );
            assert!(worst <= 1e-5, "{worst:e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// End to end

/// The matrices of a small transformer-like model (batches of same-shape matrices of several
/// shapes), factorized by both backends at several ranks and masked: every result agrees.
#[test]
fn end_to_end_small_model() {
    let Some(gpu) = gpu() else { return };
    // Decaying spectra like trained weights: σᵢ = 1/(1 + i/8).
    let spec = |p: usize| -> Vec<f64> { (0..p).map(|i| 1.0 / (1.0 + i as f64 / 8.0)).collect() };
    let shapes = [(192usize, 576usize, 4usize), (576, 192, 4), (192, 192, 2)];
    let mut worst = Dev::default();
    let mut seed = 100;
    for (m, n, count) in shapes {
        let mats: Vec<Matrix> = (0..count)
            .map(|_| {
                seed += 2;
                with_spectrum(seed, m, n, &spec(m.min(n)))
            })
            .collect();
        let views: Vec<MatrixRef<'_>> = mats.iter().map(Matrix::view).collect();
        for rank in [16, 48] {
            let o = SvdOptions::default();
            let g = gpu.lowrank(&views, rank, &o).unwrap();
            let c = Cpu.lowrank(&views, rank, &o).unwrap();
            for (w, (gf, cf)) in mats.iter().zip(g.iter().zip(&c)) {
                let d = compare(w, gf, cf, 1e-4);
                worst.error = worst.error.max(d.error);
                worst.sigma = worst.sigma.max(d.sigma);
                worst.orth = worst.orth.max(d.orth);
            }
        }
        let sg = gpu.spectrum(&views, 32).unwrap();
        let sc = Cpu.spectrum(&views, 32).unwrap();
        for (a, b) in sg.iter().zip(&sc) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-4 * b[0]);
            }
        }
        assert_eq!(
            gpu.global_magnitude_masks(&views, 0.5).unwrap(),
            Cpu.global_magnitude_masks(&views, 0.5).unwrap()
        );
        for w in &views {
            assert_eq!(
                gpu.magnitude_mask(*w, 0.0, MaskPattern::NM { n: 2, m: 4 })
                    .unwrap(),
                Cpu.magnitude_mask(*w, 0.0, MaskPattern::NM { n: 2, m: 4 })
                    .unwrap()
            );
        }
    }
    eprintln!("end to end, worst deviation from the CPU: {worst:?}");
}

/// GPT-2's token embedding table (50257 × 768 `f32`, 154 MB, above lavapipe's 128 MiB
/// binding) factorized at rank 64: split along rows, agrees with the CPU. Slow on lavapipe
/// (about a minute); run with `--ignored`.
#[test]
#[ignore]
fn gpt2_embedding_table() {
    let Some(gpu) = gpu() else { return };
    let w = low_rank_plus_noise(1, 50257, 768, 48, 0.05);
    let o = SvdOptions::default();
    let t = std::time::Instant::now();
    let g = gpu.lowrank(&[w.view()], 64, &o).unwrap().remove(0);
    let tg = t.elapsed();
    let t = std::time::Instant::now();
    let c = Cpu.lowrank(&[w.view()], 64, &o).unwrap().remove(0);
    let tc = t.elapsed();
    let d = compare(&w, &g, &c, 1e-4);
    eprintln!("50257×768 rank 64: gpu {tg:?}, cpu {tc:?}; {d:?}");
}

/// The CPU's hard case (`compute::tests::tall_f32_matrix_with_decaying_spectrum`) on the
/// randomized path: a tall `f32` matrix with σᵢ = 0.9ⁱ (the tail far below `f32`
/// resolution), where an `f32` Householder QR loses rank. Rank-64 factors near-optimal and σ
/// accurate, with `f64` and with `f32` Grams.
#[test]
fn tall_decaying_spectrum() {
    let (m, n) = (12_000, 512);
    let sigma: Vec<f64> = (0..n).map(|i| 0.9f64.powi(i as i32)).collect();
    let w = with_spectrum(7, m, n, &sigma);
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let tail: f64 = sigma[64..].iter().map(|s| s * s).sum();
    let optimal = (tail / total).sqrt();
    let c = Cpu
        .lowrank(&[w.view()], 64, &SvdOptions::default())
        .unwrap()
        .remove(0);
    for disable_f64 in [false, true] {
        let Some(gpu) = open(GpuOptions {
            disable_f64,
            ..Default::default()
        }) else {
            return;
        };
        let t = std::time::Instant::now();
        let g = gpu
            .lowrank(&[w.view()], 64, &SvdOptions::default())
            .unwrap()
            .remove(0);
        let err = rel_error(&w, &g);
        let worst_sigma =
            g.s.iter()
                .zip(&sigma)
                .map(|(&s, &t)| (s as f64 - t).abs() / t)
                .fold(0.0f64, f64::max);
        let d = compare(&w, &g, &c, 1e-4);
        eprintln!(
            "{m}×{n} rank 64 (f32 Grams: {disable_f64}) in {:?}: error {err:.6e}, optimal \
             {optimal:.6e}, worst σ relative error {worst_sigma:.2e}; vs CPU {d:?}",
            t.elapsed()
        );
        assert!(err <= 1.05 * optimal);
        assert!(worst_sigma <= 1e-3);
    }
}

/// Weight uploads (`upload_target`, then `fill_finite` through staging chunks filled in
/// parallel) arrive byte for byte, whatever the part boundaries (odd lengths, parts spanning
/// several staging chunks, an empty part, a few bytes).
#[test]
fn large_uploads_are_staged_in_parallel_and_exact() {
    let Some(gpu) = open(GpuOptions::default()) else {
        return;
    };
    let ctx = &gpu.ctx;
    // Several uploads in a row: the later ones reuse the first ones' pooled staging buffers
    // (a smaller upload after a larger one, then one larger than the pool holds), and the
    // finiteness check sees a NaN in a reused buffer.
    for (round, lens) in [
        vec![3_000_001usize, 0, 17, 5_500_003],
        vec![1_200_000, 7],
        vec![12_000_000, 8_000_000],
        vec![5, 0, 3],
    ]
    .into_iter()
    .enumerate()
    {
        let mut parts: Vec<Vec<f32>> = lens
            .iter()
            .enumerate()
            .map(|(p, &n)| {
                (0..n)
                    .map(|i| (i as f32) * 0.5 + p as f32 * 1e6 - round as f32 * 7.0)
                    .collect()
            })
            .collect();
        if round == 1 {
            parts[0][1_000_000] = f32::NAN;
        }
        let refs: Vec<&[f32]> = parts.iter().map(|p| &p[..]).collect();
        let total: usize = lens.iter().sum();
        let (back, finite): (Vec<f32>, bool) = ctx
            .run(|| {
                let buf = ctx.upload_target((total * 4) as u64, "large")?;
                let finite = ctx.fill_finite(&buf, &refs, "large")?;
                let mut s = super::device::Session::new(ctx);
                Ok((s.read(&buf, 0, total as u64)?, finite))
            })
            .unwrap();
        assert_eq!(finite, round != 1, "round {round}");
        let want: Vec<f32> = parts.concat();
        assert_eq!(back.len(), want.len());
        assert!(
            back.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "round {round}"
        );
    }
}

/// `lowrank_many`'s order follows the bottleneck stage: largest jobs first where the uploads
/// dominate (small ranks: narrow Krylov bases, cheap eigendecompositions), smallest first
/// where the host's eigendecompositions do (a Gram route at a large rank); equal sizes keep
/// the callers' order. No adapter needed.
#[test]
fn job_order_follows_the_bottleneck() {
    let big = vec![0.0f32; 2048 * 1024];
    let mat = |rows: usize, cols: usize| MatrixRef::new(rows, cols, &big[..rows * cols]).unwrap();
    let opts = SvdOptions::default();
    let four: Vec<MatrixRef<'_>> = (0..4).map(|_| mat(1024, 1024)).collect();
    let one = [mat(2048, 1024)];
    // Rank 8: 40 MB to upload, eigendecompositions of ~40 × 40.
    let jobs = [(&four[..], 8), (&four[..], 8), (&one[..], 8)];
    assert_eq!(super::job_order(&jobs, &opts), vec![0, 1, 2]);
    // Rank 200 of 512 × 512: four 512 × 512 eigendecompositions against 4 MB of uploads.
    let small: Vec<MatrixRef<'_>> = (0..4).map(|_| mat(512, 512)).collect();
    let wide = [mat(512, 1024)];
    let jobs = [(&wide[..], 200), (&small[..], 200), (&small[..], 200)];
    assert_eq!(super::job_order(&jobs, &opts), vec![0, 1, 2]);
    let jobs = [(&small[..], 200), (&wide[..], 200)];
    assert_eq!(super::job_order(&jobs, &opts), vec![1, 0]);
}
