//! Factorize every 2-D f32 weight of an ONNX model at one rank through the CPU backend and
//! print the time per shape group (one batch per shape) and in total.
//!
//! ```text
//! cargo run --release --example bench_lowrank -- [MODEL.onnx] [--rank 64] [--min-elems 65536]
//!     [--oversample 10] [--depth 4] [--threads N] [--check] [--same] [--transpose]
//! ```
//!
//! `--same` factorizes the first matrix of each group as many times as the group has matrices
//! (one buffer, so it stays in the caches that hold it): against the default, it tells how
//! much of a group's time goes to reading different matrices from memory. `--transpose`
//! factorizes every matrix's transpose instead (the same algorithm, the Krylov basis on the
//! short side either way: it measures the other memory layout).
//!
//! `--check` also computes the exact truncated SVD of the first matrix of each group (slow) and
//! prints both relative Frobenius errors.
//!
//! MODEL defaults to `$HCC_MODELS/gpt2-small-random.onnx` (`HCC_MODELS` defaults to
//! `~/.cache/hcc-models`). Like the Python peer baseline, a weight is taken when it has at least
//! `--min-elems` elements and the rank saves parameters (`r·(K+N) < K·N`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use hcc::compute::{Backend, Cpu, MatrixRef, SvdOptions};
use hcc::ir::DType;

#[path = "common/mod.rs"]
mod common;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut path: Option<PathBuf> = None;
    let mut rank = 64usize;
    let mut min_elems = 65536usize;
    let mut threads = 0usize;
    let mut check = false;
    let mut same = false;
    let mut transpose = false;
    let mut opts = SvdOptions::default();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| common::usize_value(&mut args, flag);
        match a.as_str() {
            "--rank" => rank = value("--rank")?,
            "--min-elems" => min_elems = value("--min-elems")?,
            "--oversample" => opts.oversample = value("--oversample")?,
            "--depth" => opts.depth = value("--depth")?,
            "--threads" => threads = value("--threads")?,
            "--check" => check = true,
            "--same" => same = true,
            "--transpose" => transpose = true,
            _ if a.starts_with("--") => anyhow::bail!("unknown flag {a}"),
            _ => path = Some(PathBuf::from(a)),
        }
    }
    let path = path.unwrap_or_else(common::default_model);
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }

    let t0 = Instant::now();
    let model = hcc::onnx::load(&path)?;
    let graph = &model.graph;
    // Shape → the data of every weight of that shape.
    let mut groups: BTreeMap<(usize, usize), Vec<Cow<'_, [f32]>>> = BTreeMap::new();
    for &v in graph.initializers() {
        let Some(t) = graph.constant(v) else { continue };
        let (k, n) = match (t.dtype, t.dims.as_slice()) {
            (DType::F32, &[k, n]) if k > 0 && n > 0 => (k as usize, n as usize),
            _ => continue,
        };
        if k * n < min_elems || rank * (k + n) >= k * n {
            continue;
        }
        if let Some(data) = t.as_f32() {
            if transpose {
                let mut tr = vec![0.0f32; k * n];
                for (i, row) in data.chunks_exact(n).enumerate() {
                    for (j, &x) in row.iter().enumerate() {
                        tr[j * k + i] = x;
                    }
                }
                groups.entry((n, k)).or_default().push(Cow::Owned(tr));
            } else {
                groups.entry((k, n)).or_default().push(data);
            }
        }
    }
    let load_s = t0.elapsed().as_secs_f64();
    println!(
        "model {} loaded in {load_s:.3}s; rank {rank}, oversample {}, Krylov depth {}, {} threads",
        path.display(),
        opts.oversample,
        opts.depth,
        rayon::current_num_threads()
    );

    // Touch every weight once so that paging the memory-mapped file in is timed apart.
    let t = Instant::now();
    let mut checksum = 0.0f64;
    for datas in groups.values() {
        for d in datas {
            checksum += d.iter().step_by(1024).map(|&x| x as f64).sum::<f64>();
        }
    }
    println!(
        "page-in of the weights {:.3}s (checksum {checksum:.3})",
        t.elapsed().as_secs_f64()
    );

    let backend = Cpu::new();
    let mut total = 0.0f64;
    let mut sites = 0usize;
    for (&(k, n), datas) in &groups {
        let batch = datas
            .iter()
            .map(|d| MatrixRef::new(k, n, if same { &datas[0] } else { d }))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        let factors = backend.lowrank(&batch, rank, &opts)?;
        let s = t.elapsed().as_secs_f64();
        total += s;
        sites += factors.len();
        let s0 = factors.first().and_then(|f| f.s.first()).copied();
        println!(
            "{:>6} × {:<6} × {:>3}  {:>8.3}s  ({:.3}s each, σ₀ of first {:.4})",
            k,
            n,
            batch.len(),
            s,
            s / batch.len() as f64,
            s0.unwrap_or(0.0)
        );
    }
    if check {
        for (&(k, n), datas) in &groups {
            let w = MatrixRef::new(k, n, &datas[0])?;
            let approx = backend.lowrank(&[w], rank, &opts)?.remove(0);
            let t = Instant::now();
            let exact = backend.svd_exact(w, rank)?;
            let te = t.elapsed().as_secs_f64();
            let (ea, ee) = (
                rel_error(&backend, w, &approx)?,
                rel_error(&backend, w, &exact)?,
            );
            let ds = approx
                .s
                .iter()
                .zip(&exact.s)
                .map(|(a, b)| ((a - b) / b).abs())
                .fold(0.0f32, f32::max);
            println!(
                "check {k} × {n}: randomized error {ea:.5}, exact {ee:.5} (ratio {:.4}), \
                 max σ relative difference {ds:.2e}, exact SVD took {te:.2}s",
                ea / ee
            );
        }
    }
    println!(
        "factorize {total:.3}s ({sites} matrices) on backend {}",
        backend.name()
    );
    Ok(())
}

/// `‖W − u·diag(s)·vt‖_F / ‖W‖_F` (product in f32, sums in f64).
fn rel_error(b: &Cpu, w: MatrixRef<'_>, f: &hcc::compute::Factors) -> anyhow::Result<f64> {
    let (x, y) = f.balanced();
    let p = b.gemm(x.view(), y.view(), false, false)?;
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &c) in w.data().iter().zip(p.data()) {
        num += (a as f64 - c as f64).powi(2);
        den += (a as f64).powi(2);
    }
    Ok((num / den).sqrt())
}
