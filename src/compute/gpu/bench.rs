//! Kernel-only GEMM timing ([`super::Gpu::bench_gemm`]).

use super::device::{device_err, Ctx, GpuResult, Session, Stamps};
use super::gemm::{record, split_plan, Gemm};
use crate::compute::rng::gaussian_f32;

/// Compute passes that carry timestamps per timed GEMM (a GEMM records one pass per dispatch:
/// the tiled kernel, the split-K reduction, more where the rows exceed one dispatch).
const STAMPED_PASSES: u32 = 32;

/// The timing of one GEMM shape by [`super::Gpu::bench_gemm`].
///
/// Times are medians over the timed repetitions, in seconds; TFLOP/s count `2·m·n·k`
/// floating-point operations per GEMM.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmTiming {
    /// Rows of `op(A)` and of C.
    pub m: usize,
    /// Columns of `op(B)` and of C.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// Whether A is stored `k × m` and used transposed.
    pub trans_a: bool,
    /// Whether B is stored `n × k` and used transposed.
    pub trans_b: bool,
    /// Timed repetitions (after one warm-up).
    pub reps: usize,
    /// Split-K factor the backend chose for this shape (1: none; else a reduction pass
    /// follows the tiled kernel).
    pub splits: u64,
    /// Median wall time from submitting the GEMM's commands to the end of the wait for them.
    pub seconds: f64,
    /// Fastest wall time seen.
    pub min_seconds: f64,
    /// `2·m·n·k / seconds / 10¹²`.
    pub tflops: f64,
    /// Median time on the GPU itself, from the start of the GEMM's first compute pass to the
    /// end of its last, from timestamp queries; `None` where the adapter lacks
    /// `TIMESTAMP_QUERY` (or the driver reported no usable timestamps).
    pub gpu_seconds: Option<f64>,
    /// `2·m·n·k / gpu_seconds / 10¹²`.
    pub gpu_tflops: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    if v.len() % 2 == 1 {
        v[h]
    } else {
        (v[h - 1] + v[h]) / 2.0
    }
}

/// See [`super::Gpu::bench_gemm`].
pub(super) fn bench_gemm(
    ctx: &Ctx,
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    reps: usize,
) -> GpuResult<GemmTiming> {
    if m == 0 || n == 0 || k == 0 || reps == 0 {
        return Err(device_err(format!(
            "bench_gemm needs m, n, k and reps of at least 1, got {m}, {n}, {k}, {reps}"
        )));
    }
    // Stored orientation: A is m × k (k × m when transposed), B is k × n (n × k).
    let a = gaussian_f32(1, m, k);
    let b = gaussian_f32(2, k, n);
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    let flop = 2.0 * m as f64 * n as f64 * k as f64;
    ctx.run(|| {
        let abuf = ctx.upload(&[&a[..]], "benchmark A")?;
        let bbuf = ctx.upload(&[&b[..]], "benchmark B")?;
        let cbuf = ctx.buffer((m * n * 4) as u64, "benchmark C")?;
        let g = Gemm::single((&abuf, lda, ta), (&bbuf, ldb, tb), &cbuf, (m, n, k));
        let stamps = if ctx.timestamps {
            Some(Stamps::new(ctx, STAMPED_PASSES)?)
        } else {
            None
        };
        let period_ns = ctx.queue.get_timestamp_period() as f64;
        let mut wall = Vec::with_capacity(reps);
        let mut gpu = Vec::with_capacity(reps);
        for rep in 0..=reps {
            // Recording (pipelines, bind groups, the split-K partial buffer) is not timed.
            let mut s = match &stamps {
                Some(st) => {
                    st.reset();
                    Session::with_stamps(ctx, st)
                }
                None => Session::new(ctx),
            };
            record(&mut s, &g)?;
            let t = s.flush_timed()?;
            let span = match &stamps {
                Some(st) => gpu_span(ctx, st, period_ns)?,
                None => None,
            };
            if rep > 0 {
                wall.push(t);
                gpu.extend(span);
            }
        }
        let seconds = median(wall.clone());
        let gpu_seconds = (gpu.len() == reps).then(|| median(gpu));
        Ok(GemmTiming {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            reps,
            splits: split_plan(
                ctx,
                &super::gemm::tiles_for(ctx, m as u64, n as u64).0,
                m as u64,
                n as u64,
                k as u64,
                4,
            )
            .0,
            seconds,
            min_seconds: wall.iter().copied().fold(f64::INFINITY, f64::min),
            tflops: flop / seconds / 1e12,
            gpu_seconds,
            gpu_tflops: gpu_seconds.map(|t| flop / t / 1e12),
        })
    })
}

/// Seconds from the first pass's start to the last pass's end, read back from `stamps` (in a
/// submission of its own, after the timed one); `None` if some pass had no room or the
/// timestamps are not increasing.
fn gpu_span(ctx: &Ctx, stamps: &Stamps, period_ns: f64) -> GpuResult<Option<f64>> {
    let (used, overflow) = stamps.used();
    if used < 2 || overflow {
        return Ok(None);
    }
    let resolve = ctx.checked("timestamp resolve buffer", || {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: used as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    })?;
    let mut s = Session::new(ctx);
    s.encoder()
        .resolve_query_set(&stamps.set, 0..used, &resolve, 0);
    let ticks: Vec<u64> = s.read(&resolve, 0, used as u64)?;
    let (first, last) = (ticks[0], ticks[used as usize - 1]);
    if last <= first {
        return Ok(None);
    }
    Ok(Some((last - first) as f64 * period_ns * 1e-9))
}
