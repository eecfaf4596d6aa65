//! One Krylov block's two products over the largest 2-D weight of a model (GPT-2's token
//! table by default), timed two ways: as two passes over the matrix (`Z = Wᵀ·Q`, then `W·Z`:
//! the CPU backend's order before it took the short side first, the basis on the long side)
//! and fused into one pass over row panels (`Σₚ Wₚᵀ·(Wₚ·X)`: the basis on the short side, each
//! panel read once while it is in cache, as `rsvd::ShortFirst` now does on large matrices).
//! Same flops; the difference is memory traffic. Five blocks of 28 columns (rank 64).
//!
//! ```text
//! cargo run --release --example bench_fused_pass -- [MODEL.onnx] [--panel 256] [--reps 3]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

#[path = "common/mod.rs"]
mod common;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut path, mut panel, mut reps) = (None, 256usize, 3usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--panel" => panel = common::usize_value(&mut args, "--panel")?.max(1),
            "--reps" => reps = common::usize_value(&mut args, "--reps")?.max(1),
            _ if a.starts_with("--") => anyhow::bail!("unknown flag {a}"),
            _ => path = Some(PathBuf::from(a)),
        }
    }
    let path = path.unwrap_or_else(common::default_model);
    let model = hcc::onnx::load(&path)?;
    let g = &model.graph;
    let mut largest: Option<(usize, usize, Vec<f32>)> = None;
    for &v in g.initializers() {
        let Some(t) = g.constant(v) else { continue };
        if let &[m, n] = t.dims.as_slice() {
            let (m, n) = (m as usize, n as usize);
            if largest.as_ref().is_none_or(|l| m * n > l.0 * l.1) {
                if let Some(d) = t.as_f32() {
                    largest = Some((m, n, d.into_owned()));
                }
            }
        }
    }
    let (m, n, data) = largest.ok_or_else(|| anyhow::anyhow!("no 2-D f32 weight"))?;
    let b = 28;
    println!(
        "{m}×{n}, blocks of {b}, panels of {panel} rows, {} threads",
        rayon::current_num_threads()
    );
    let w = MatRef::from_row_major_slice(&data, m, n);
    let x = Mat::<f32>::from_fn(n, b, |i, j| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5);
    let q = Mat::<f32>::from_fn(m, b, |i, j| ((i * 13 + j * 7) % 89) as f32 / 89.0 - 0.5);
    let threads = rayon::current_num_threads().max(1);
    for rep in 0..reps {
        let t = Instant::now();
        let (mut z, mut y) = (Mat::<f32>::zeros(n, b), Mat::<f32>::zeros(m, b));
        for _ in 0..5 {
            faer::linalg::matmul::matmul(
                z.as_mut(),
                Accum::Replace,
                w.transpose(),
                q.as_ref(),
                1.0,
                Par::rayon(0),
            );
            faer::linalg::matmul::matmul(
                y.as_mut(),
                Accum::Replace,
                w,
                z.as_ref(),
                1.0,
                Par::rayon(0),
            );
        }
        let two = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut fused = Mat::<f32>::zeros(n, b);
        for _ in 0..5 {
            let starts: Vec<usize> = (0..m).step_by(panel).collect();
            let per = starts.len().div_ceil(threads).max(1);
            fused = starts
                .par_chunks(per)
                .map(|starts| {
                    let mut acc = Mat::<f32>::zeros(n, b);
                    let mut tp = Mat::<f32>::zeros(panel, b);
                    for &s in starts {
                        let rows = panel.min(m - s);
                        let wp = w.subrows(s, rows);
                        let mut tv = tp.as_mut().subrows_mut(0, rows);
                        let par = Par::Seq;
                        faer::linalg::matmul::matmul(
                            tv.rb_mut(),
                            Accum::Replace,
                            wp,
                            x.as_ref(),
                            1.0,
                            par,
                        );
                        faer::linalg::matmul::matmul(
                            acc.as_mut(),
                            Accum::Add,
                            wp.transpose(),
                            tv.rb(),
                            1.0,
                            par,
                        );
                    }
                    acc
                })
                .reduce(|| Mat::<f32>::zeros(n, b), |a, p| a + p);
        }
        let one = t.elapsed().as_secs_f64();
        println!(
            "rep {rep}: two passes {two:.3} s, fused {one:.3} s ({:.2}x) [{:.3} {:.3}]",
            two / one,
            y[(0, 0)],
            fused[(0, 0)]
        );
    }
    Ok(())
}
