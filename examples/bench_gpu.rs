//! GPU backend benchmark: kernel-only GEMM throughput and the GPT-2-small randomized SVD on the
//! GPU and CPU backends.
//!
//! ```text
//! cargo run --release --example bench_gpu -- [--json] [--software] [--small] [--reps N]
//!     [--no-cpu] [--no-gemm] [--ranks 64,256] [--svd auto,randomized]
//! ```
//!
//! - Prints the adapter, the GEMM tiles in use (`HCC_GEMM_TILES`) and whether the shaders run
//!   without bounds checks (`HCC_GPU_UNCHECKED=1`).
//! - GEMM (`Gpu::bench_gemm`: the kernel alone, operands resident, median of `--reps` after
//!   one warm-up): 4096³, 8192³ in all four transpose combinations, and the products the
//!   randomized SVD runs on GPT-2 small: `W·Ω` and `Wᵀ·Q` for the 50257×768 embedding at a
//!   sketch of 74 columns (rank 64 + oversampling 10), and for a 768×3072 weight at 74 and
//!   266 (rank 256) columns.
//! - rSVD: the 49 weight matrices of GPT-2 small (12 × 768×2304, 12 × 768×768,
//!   12 × 768×3072, 12 × 3072×768 and the 50257×768 embedding), random N(0, 1) from a fixed
//!   seed (`compute::rng`), factorized at rank 64 and at rank 256 through `Backend::lowrank`
//!   in same-shape batches, as the rewrite engine batches them; each batch timed (median of 3
//!   after one warm-up) on the GPU and the CPU backend (default rayon pool), with the mean
//!   relative reconstruction error from the singular values, `√(1 − Σs²/‖W‖²_F)`.
//!
//! Output: markdown tables on stdout; with `--json`, one JSON object on stdout instead (the
//! tables then go to stderr). `--software` accepts a software adapter (Mesa lavapipe) when
//! there is no GPU; `--small` divides every dimension, rank and `exact_below` by 8 so that
//! the whole run takes well under a minute on lavapipe. `--no-cpu` skips the CPU backend,
//! `--no-gemm` the GEMM table; `--ranks` picks the rSVD ranks (default 64,256), `--svd` the
//! SVD methods (default auto,randomized; a method is skipped at a rank where it takes the same
//! route as auto for every shape).

use std::time::Instant;

use hcc::compute::gpu::{GemmTiming, GpuOptions};
use hcc::compute::rng::gaussian_f32;
use hcc::compute::{Backend, Cpu, Gpu, LowrankRoute, MatrixRef, SvdMethod, SvdOptions};
use serde_json::{json, Value};

/// Seed of the random weight matrices (matrix `j` of group `g` uses `SEED + 100 g + j`).
const SEED: u64 = 2024;
/// Timed runs per rSVD batch (after one warm-up).
const RSVD_RUNS: usize = 3;

struct Args {
    json: bool,
    software: bool,
    small: bool,
    reps: Option<usize>,
    cpu: bool,
    gemm: bool,
    ranks: Vec<usize>,
    methods: Vec<SvdMethod>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        json: false,
        software: false,
        small: false,
        reps: None,
        cpu: true,
        gemm: true,
        ranks: vec![64, 256],
        methods: vec![SvdMethod::Auto, SvdMethod::Randomized],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--software" => a.software = true,
            "--small" => a.small = true,
            "--no-cpu" => a.cpu = false,
            "--no-gemm" => a.gemm = false,
            "--ranks" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--ranks needs a value such as 64,256"))?;
                a.ranks = v
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--ranks {v}: {e}"))?;
            }
            "--svd" => {
                let v = it.next().ok_or_else(|| {
                    anyhow::anyhow!("--svd needs a value such as auto,randomized")
                })?;
                a.methods = v
                    .split(',')
                    .map(|x| x.trim().parse::<SvdMethod>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--svd {v}: {e}"))?;
            }
            "--reps" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--reps needs a value"))?;
                a.reps = Some(v.parse()?);
            }
            "-h" | "--help" => {
                println!(
                    "bench_gpu [--json] [--software] [--small] [--reps N] [--no-cpu] [--no-gemm] \
                     [--ranks 64,256] [--svd auto,randomized]\n\
                     (see the header of examples/bench_gpu.rs)"
                );
                std::process::exit(0);
            }
            _ => anyhow::bail!("unknown argument {arg} (try --help)"),
        }
    }
    Ok(a)
}

/// Where the tables go: stdout, or stderr when stdout carries the JSON.
struct Out {
    json: bool,
}

impl Out {
    fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

fn env_or_unset(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| "unset".to_string())
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG=hcc=debug (or trace) prints the GPU backend's timings of each phase.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = parse_args()?;
    let out = Out { json: args.json };
    // Every dimension (and rank) of the benchmark, scaled for --small.
    let d = |x: usize| if args.small { (x / 8).max(1) } else { x };
    let reps = args.reps.unwrap_or(if args.small { 3 } else { 10 }).max(1);

    let gpu = Gpu::new_with(GpuOptions {
        allow_software: args.software,
        ..Default::default()
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}{}",
            if args.software {
                ""
            } else {
                " (pass --software to accept a software adapter such as lavapipe)"
            }
        )
    })?;
    let info = gpu.adapter();
    let t = gpu.tiles();
    let device = json!({
        "adapter": info.name,
        "backend": info.backend,
        "device_type": info.device_type,
        "driver": info.driver,
        "software": info.software,
        "f64_shaders": gpu.has_f64(),
        "timestamps": gpu.has_timestamps(),
        "binding_limit_bytes": gpu.binding_limit(),
        "memory_budget_bytes": gpu.memory_budget(),
        "gemm_tiles": {"bm": t.bm, "bn": t.bn, "bk": t.bk, "tm": t.tm, "tn": t.tn},
        "HCC_GEMM_TILES": env_or_unset("HCC_GEMM_TILES"),
        "HCC_GPU_UNCHECKED": env_or_unset("HCC_GPU_UNCHECKED"),
        "unchecked_shaders": gpu.unchecked_shaders(),
        "cpu_threads": rayon::current_num_threads(),
        "small": args.small,
    });
    out.line("## Device\n");
    out.line("| | |\n|---|---|");
    out.line(&format!(
        "| adapter | {} ({}, {}{}) |",
        info.name,
        info.backend,
        info.device_type,
        if info.driver.is_empty() {
            String::new()
        } else {
            format!(", {}", info.driver)
        }
    ));
    out.line(&format!(
        "| GEMM tiles | bm {} bn {} bk {} tm {} tn {} (HCC_GEMM_TILES: {}) |",
        t.bm,
        t.bn,
        t.bk,
        t.tm,
        t.tn,
        env_or_unset("HCC_GEMM_TILES")
    ));
    out.line(&format!(
        "| shader checks | {} (HCC_GPU_UNCHECKED: {}) |",
        if gpu.unchecked_shaders() { "off" } else { "on" },
        env_or_unset("HCC_GPU_UNCHECKED")
    ));
    out.line(&format!(
        "| f64 shaders / f64 Grams / timestamps | {} / {} (HCC_GPU_F64_GRAM: {}) / {} |",
        gpu.has_f64(),
        gpu.has_f64_gram(),
        env_or_unset("HCC_GPU_F64_GRAM"),
        gpu.has_timestamps()
    ));
    out.line(&format!(
        "| binding limit / memory budget | {} MiB / {} MiB |",
        gpu.binding_limit() >> 20,
        gpu.memory_budget() >> 20
    ));
    out.line(&format!(
        "| CPU threads (rayon) | {} |",
        rayon::current_num_threads()
    ));
    if args.small {
        out.line("| scale | --small: dimensions, ranks and exact_below ÷ 8 |");
    }

    let gemm = if args.gemm {
        bench_gemms(&gpu, &out, &d, reps)?
    } else {
        Vec::new()
    };
    let (rsvd, totals) = bench_rsvd(&gpu, &out, &d, &args)?;
    if let Some(report) = gpu.profile_report() {
        eprintln!("\n## GPU profile (HCC_GPU_PROFILE=1)\n\n{report}");
    }

    if args.json {
        let report = json!({
            "device": device,
            "gemm": gemm,
            "rsvd": rsvd,
            "rsvd_totals": totals,
        });
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// `x` with three significant digits.
fn sig3(x: f64) -> String {
    let digits = if x > 0.0 && x.is_finite() {
        (2 - x.log10().floor() as i64).clamp(0, 9) as usize
    } else {
        1
    };
    format!("{x:.digits$}")
}

fn op_name(ta: bool, tb: bool) -> &'static str {
    match (ta, tb) {
        (false, false) => "NN",
        (false, true) => "NT",
        (true, false) => "TN",
        (true, true) => "TT",
    }
}

fn bench_gemms(
    gpu: &Gpu,
    out: &Out,
    d: &dyn Fn(usize) -> usize,
    reps: usize,
) -> anyhow::Result<Vec<Value>> {
    // (what, m, n, k, trans_a, trans_b), full-size dimensions.
    let mut cases: Vec<(String, usize, usize, usize, bool, bool)> =
        vec![("4096³".into(), 4096, 4096, 4096, false, false)];
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        cases.push(("8192³".into(), 8192, 8192, 8192, ta, tb));
    }
    cases.push((
        "rSVD W·Ω, 50257×768 · 768×74".into(),
        50257,
        74,
        768,
        false,
        false,
    ));
    cases.push((
        "rSVD Wᵀ·Q, (50257×768)ᵀ · 50257×74".into(),
        768,
        74,
        50257,
        true,
        false,
    ));
    for k in [74, 266] {
        cases.push((
            format!("rSVD W·X, 768×3072 · 3072×{k}"),
            768,
            k,
            3072,
            false,
            false,
        ));
        cases.push((
            format!("rSVD Wᵀ·Q, (768×3072)ᵀ · 768×{k}"),
            3072,
            k,
            768,
            true,
            false,
        ));
    }
    out.line(&format!(
        "\n## GEMM (kernel only: operands resident, median of {reps} after 1 warm-up)\n"
    ));
    out.line("| product | m × n × k | op | split-K | wall ms | TFLOP/s | GPU ms | GPU TFLOP/s |");
    out.line("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (what, m, n, k, ta, tb) in cases {
        let (m, n, k) = (d(m), d(n), d(k));
        let r: GemmTiming = gpu.bench_gemm(m, n, k, ta, tb, reps)?;
        let opt = |x: Option<f64>, scale: f64| x.map_or("–".to_string(), |v| sig3(v * scale));
        out.line(&format!(
            "| {what} | {m} × {n} × {k} | {} | {} | {} | {} | {} | {} |",
            op_name(ta, tb),
            r.splits,
            sig3(r.seconds * 1e3),
            sig3(r.tflops),
            opt(r.gpu_seconds, 1e3),
            opt(r.gpu_tflops, 1.0),
        ));
        rows.push(json!({
            "what": what,
            "m": m, "n": n, "k": k,
            "op": op_name(ta, tb),
            "splits": r.splits,
            "reps": r.reps,
            "seconds": r.seconds,
            "min_seconds": r.min_seconds,
            "tflops": r.tflops,
            "gpu_seconds": r.gpu_seconds,
            "gpu_tflops": r.gpu_tflops,
        }));
    }
    Ok(rows)
}

/// One same-shape batch of random weights.
struct Batch {
    rows: usize,
    cols: usize,
    mats: Vec<Vec<f32>>,
    /// `‖W‖²_F` of each matrix.
    sq_norms: Vec<f64>,
}

/// One backend's result on one batch.
struct Run {
    median_s: f64,
    runs: Vec<f64>,
    /// Median of each run's time less its uploads of the weight matrices.
    resident_s: f64,
    mean_error: f64,
}

fn run_batch(
    backend: &dyn Backend,
    batch: &[MatrixRef<'_>],
    sq_norms: &[f64],
    rank: usize,
    opts: &SvdOptions,
    uploads: &dyn Fn() -> f64,
) -> anyhow::Result<Run> {
    // Warm-up; its factors give the errors (every run gives the same bits).
    let factors = backend.lowrank(batch, rank, opts)?;
    let mean_error = factors
        .iter()
        .zip(sq_norms)
        .map(|(f, &w2)| {
            let kept: f64 = f.s.iter().map(|&s| s as f64 * s as f64).sum();
            (1.0 - kept / w2).max(0.0).sqrt()
        })
        .sum::<f64>()
        / factors.len() as f64;
    let mut runs = Vec::with_capacity(RSVD_RUNS);
    let mut resident = Vec::with_capacity(RSVD_RUNS);
    for _ in 0..RSVD_RUNS {
        let up = uploads();
        let t = Instant::now();
        let f = backend.lowrank(batch, rank, opts)?;
        let s = t.elapsed().as_secs_f64();
        runs.push(s);
        resident.push(s - (uploads() - up));
        drop(f);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(Run {
        median_s: median(&runs),
        resident_s: median(&resident),
        runs,
        mean_error,
    })
}

fn route_name(r: LowrankRoute) -> String {
    match r {
        LowrankRoute::Exact => "exact".into(),
        LowrankRoute::Gram => "Gram".into(),
        LowrankRoute::Sketch(k) => format!("Krylov {}×{}", k.depth + 1, k.block),
    }
}

fn bench_rsvd(
    gpu: &Gpu,
    out: &Out,
    d: &dyn Fn(usize) -> usize,
    args: &Args,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let (with_cpu, small) = (args.cpu, args.small);
    // GPT-2 small: (rows, cols, count).
    let groups = [
        (768, 2304, 12),
        (768, 768, 12),
        (768, 3072, 12),
        (3072, 768, 12),
        (50257, 768, 1),
    ];
    let base = SvdOptions {
        exact_below: d(SvdOptions::default().exact_below),
        ..Default::default()
    };
    let opts = &base;
    let t0 = Instant::now();
    let data: Vec<Batch> = groups
        .iter()
        .enumerate()
        .map(|(g, &(r, c, count))| {
            let (r, c) = (d(r), d(c));
            let mats: Vec<Vec<f32>> = (0..count)
                .map(|j| gaussian_f32(SEED + 100 * g as u64 + j as u64, r, c))
                .collect();
            let sq_norms = mats
                .iter()
                .map(|m| m.iter().map(|&x| x as f64 * x as f64).sum())
                .collect();
            Batch {
                rows: r,
                cols: c,
                mats,
                sq_norms,
            }
        })
        .collect();
    eprintln!(
        "generated the {} matrices in {:.2} s",
        groups.iter().map(|g| g.2).sum::<usize>(),
        t0.elapsed().as_secs_f64()
    );
    out.line(&format!(
        "\n## rSVD: the 49 weight matrices of GPT-2 small, N(0, 1) (seed {SEED}), \
         same-shape batches through Backend::lowrank (oversample {}, Krylov depth {}, \
         exact below {}), median of {RSVD_RUNS} after 1 warm-up; error = mean √(1 − Σs²/‖W‖²)\n",
        opts.oversample, opts.depth, opts.exact_below
    ));
    out.line("| rank | shape | count | route | GPU s | GPU s without uploads | CPU s | CPU/GPU | GPU error | CPU error | Δ error |");
    out.line("|---|---|---|---|---|---|---|---|---|---|---|");
    let cpu = Cpu::new();
    let mut rows = Vec::new();
    let mut totals = Vec::new();
    for (rank, method) in args
        .ranks
        .iter()
        .flat_map(|&r| args.methods.iter().map(move |&m| (r, m)))
    {
        let rank = if small { rank / 8 } else { rank };
        let opts = SvdOptions {
            method,
            ..base.clone()
        };
        // A method that takes Auto's route for every shape would repeat Auto's rows.
        if method != SvdMethod::Auto
            && data.iter().all(|b| {
                opts.lowrank_route((b.rows, b.cols), rank)
                    == base.lowrank_route((b.rows, b.cols), rank)
            })
        {
            continue;
        }
        let m = method.name();
        let (mut gpu_total, mut cpu_total, mut count_total) = (0.0, 0.0, 0usize);
        let mut resident_total = 0.0;
        let (mut gpu_err_sum, mut cpu_err_sum) = (0.0, 0.0);
        for b in &data {
            let (r, c) = (b.rows, b.cols);
            let batch = b
                .mats
                .iter()
                .map(|m| MatrixRef::new(r, c, m))
                .collect::<Result<Vec<_>, _>>()?;
            let route = route_name(opts.lowrank_route((r, c), rank));
            let g = run_batch(gpu, &batch, &b.sq_norms, rank, &opts, &|| {
                gpu.upload_seconds()
            })?;
            let cp = if with_cpu {
                Some(run_batch(&cpu, &batch, &b.sq_norms, rank, &opts, &|| 0.0)?)
            } else {
                None
            };
            let n = batch.len();
            gpu_total += g.median_s;
            resident_total += g.resident_s;
            gpu_err_sum += g.mean_error * n as f64;
            count_total += n;
            if let Some(cp) = &cp {
                cpu_total += cp.median_s;
                cpu_err_sum += cp.mean_error * n as f64;
            }
            out.line(&format!(
                "| {rank} {m} | {r}×{c} | {n} | {route} | {:.3} | {:.3} | {} | {} | {:.6} | {} | {} |",
                g.median_s,
                g.resident_s,
                cp.as_ref()
                    .map_or("–".into(), |cp| format!("{:.3}", cp.median_s)),
                cp.as_ref().map_or("–".into(), |cp| format!(
                    "{:.2}",
                    cp.median_s / g.median_s
                )),
                g.mean_error,
                cp.as_ref()
                    .map_or("–".into(), |cp| format!("{:.6}", cp.mean_error)),
                cp.as_ref().map_or("–".into(), |cp| format!(
                    "{:.1e}",
                    g.mean_error - cp.mean_error
                )),
            ));
            let side = |x: &Run| json!({"median_s": x.median_s, "without_uploads_s": x.resident_s, "runs_s": x.runs, "mean_rel_error": x.mean_error});
            rows.push(json!({
                "rank": rank,
                "svd": m,
                "rows": r,
                "cols": c,
                "count": n,
                "route": route,
                "gpu": side(&g),
                "cpu": cp.as_ref().map(side),
            }));
        }
        // All shapes in one Backend::lowrank_many call (the GPU backend overlaps several jobs).
        let views: Vec<Vec<MatrixRef<'_>>> = data
            .iter()
            .map(|b| {
                b.mats
                    .iter()
                    .map(|m| MatrixRef::new(b.rows, b.cols, m))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let jobs: Vec<(&[MatrixRef<'_>], usize)> = views.iter().map(|v| (&v[..], rank)).collect();
        let first = gpu.lowrank_many(&jobs, &opts)?;
        for (j, got) in first.iter().enumerate() {
            // Bit for bit what one lowrank call per shape gives.
            anyhow::ensure!(
                *got == gpu.lowrank(jobs[j].0, rank, &opts)?,
                "lowrank_many differs from lowrank on job {j}"
            );
        }
        drop(first);
        // Uploads overlap other jobs' work here: no "without uploads" figure.
        let mut many = Vec::new();
        for _ in 0..RSVD_RUNS {
            let t = Instant::now();
            let f = gpu.lowrank_many(&jobs, &opts)?;
            many.push(t.elapsed().as_secs_f64());
            drop(f);
        }
        many.sort_by(f64::total_cmp);
        let many_s = many[many.len() / 2];
        out.line(&format!(
            "| {rank} {m} | all shapes, one lowrank_many call ({} at a time) | {count_total} | | **{many_s:.3}** | – (overlapped) | | | | | |",
            gpu.concurrent_jobs()
        ));
        let gpu_err = gpu_err_sum / count_total as f64;
        let cpu_err = cpu_err_sum / count_total as f64;
        out.line(&format!(
            "| {rank} {m} | **total** | {count_total} | | **{gpu_total:.3}** | **{resident_total:.3}** | {} | {} | {gpu_err:.6} | {} | {} |",
            if with_cpu { format!("**{cpu_total:.3}**") } else { "–".into() },
            if with_cpu { format!("{:.2}", cpu_total / gpu_total) } else { "–".into() },
            if with_cpu { format!("{cpu_err:.6}") } else { "–".into() },
            if with_cpu { format!("{:.1e}", gpu_err - cpu_err) } else { "–".into() },
        ));
        totals.push(json!({
            "rank": rank,
            "svd": m,
            "count": count_total,
            "gpu_s": gpu_total,
            "gpu_without_uploads_s": resident_total,
            "gpu_many_s": many_s,
            "gpu_many_runs_s": many,
            "gpu_concurrent_jobs": gpu.concurrent_jobs(),
            "cpu_s": with_cpu.then_some(cpu_total),
            "gpu_mean_rel_error": gpu_err,
            "cpu_mean_rel_error": with_cpu.then_some(cpu_err),
        }));
    }
    Ok((rows, totals))
}
