//! The tiled GEMM (shaders/gemm.wgsl): tile configuration, dispatch with deterministic
//! split-K (shaders/reduce.wgsl), and the host-level `Backend::gemm` that splits operands
//! larger than a storage binding or the memory budget into pieces.

use super::device::{device_err, Ctx, GpuResult, Kernel, Session, GEMM_WGSL, REDUCE_WGSL};
use crate::compute::{ComputeError, Matrix, MatrixRef};

/// Split-K aims for about this many workgroups per GEMM (a function of the shapes only, so
/// results are the same on every run on one device).
const TARGET_GROUPS: u64 = 512;
/// Least depth of `k` per split.
const MIN_K_PER_SPLIT: u64 = 256;
/// Most splits of one GEMM.
const MAX_SPLITS: u64 = 64;

/// The GEMM's tile configuration: each workgroup computes a `bm × bn` tile of C from
/// `bk`-deep slices staged in workgroup memory, each of its `(bm / tm) · (bn / tn)`
/// invocations a `tm × tn` register block.
///
/// Constraints (checked by [`GemmTiles::validate`]): `tm` and `tn` are multiples of 4 (vec4
/// registers), `bk` a multiple of 4, `bm % tm == 0`, `bn % tn == 0`, the tile loads divide
/// evenly over the invocations (`bm·bk` and `bn·bk` multiples of the invocation count), and the
/// invocation count and the workgroup memory (`(bm + bn) · bk · 4` bytes) fit the adapter.
/// The constants are substituted into shaders/gemm.wgsl before it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTiles {
    /// Rows of C per workgroup.
    pub bm: u32,
    /// Columns of C per workgroup.
    pub bn: u32,
    /// Depth of one staged slice.
    pub bk: u32,
    /// Rows of C per invocation.
    pub tm: u32,
    /// Columns of C per invocation.
    pub tn: u32,
}

impl Default for GemmTiles {
    /// 64 × 64 tiles, 16 deep, 4 × 4 per invocation (256 invocations, 8 KiB of workgroup
    /// memory): runs everywhere, lavapipe included.
    fn default() -> Self {
        GemmTiles {
            bm: 64,
            bn: 64,
            bk: 16,
            tm: 4,
            tn: 4,
        }
    }
}

impl GemmTiles {
    /// Tiles for narrow products (`n ≤ 32` columns: the Krylov blocks, their Grams and
    /// projections): 128 × 32 tiles, 16 deep, 8 × 4 per invocation (128 invocations, 10 KiB of
    /// workgroup memory), so that a block of 28 columns no longer leaves 36 of 64 tile columns
    /// idle.
    pub const NARROW: GemmTiles = GemmTiles {
        bm: 128,
        bn: 32,
        bk: 16,
        tm: 8,
        tn: 4,
    };

    /// Invocations per workgroup.
    pub fn threads(&self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    /// Checks the constraints listed on the type against the adapter's limits.
    pub fn validate(
        &self,
        max_invocations: u32,
        max_workgroup_bytes: u32,
    ) -> Result<(), ComputeError> {
        let t = *self;
        let bad = |why: &str| Err(ComputeError::Device(format!("GEMM tiles {t:?}: {why}")));
        if [t.bm, t.bn, t.bk, t.tm, t.tn].contains(&0) {
            return bad("zero size");
        }
        if t.tm % 4 != 0 || t.tn % 4 != 0 || t.bk % 4 != 0 {
            return bad("tm, tn and bk must be multiples of 4");
        }
        if t.bm % t.tm != 0 || t.bn % t.tn != 0 {
            return bad("bm must be a multiple of tm and bn of tn");
        }
        let threads = self.threads();
        if threads > max_invocations {
            return bad(&format!(
                "{threads} invocations per workgroup, the adapter allows {max_invocations}"
            ));
        }
        if (t.bm * t.bk) % threads != 0 || (t.bn * t.bk) % threads != 0 {
            return bad("bm·bk and bn·bk must be multiples of the invocation count");
        }
        let bytes = (t.bm as u64 + t.bn as u64) * t.bk as u64 * 4;
        if bytes > max_workgroup_bytes as u64 {
            return bad(&format!(
                "{bytes} bytes of workgroup memory, the adapter allows {max_workgroup_bytes}"
            ));
        }
        Ok(())
    }

    /// The tiles in `HCC_GEMM_TILES` (`BM,BN,BK,TM,TN`), if the variable is set.
    pub fn from_env() -> Result<Option<GemmTiles>, ComputeError> {
        let Ok(v) = std::env::var("HCC_GEMM_TILES") else {
            return Ok(None);
        };
        let parts: Vec<u32> = v
            .split(',')
            .map(|s| s.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| device_err(format!("HCC_GEMM_TILES={v:?}: {e}")))?;
        match parts.as_slice() {
            &[bm, bn, bk, tm, tn] => Ok(Some(GemmTiles { bm, bn, bk, tm, tn })),
            _ => Err(device_err(format!(
                "HCC_GEMM_TILES={v:?}: expected five numbers BM,BN,BK,TM,TN"
            ))),
        }
    }

    /// Whether the vec4 loads of a `tile × bk` operand tile (`tile` = `bm` for A, `bn` for
    /// B) divide evenly over the invocations.
    fn vec_loads(&self, tile: u32) -> bool {
        (tile * self.bk / self.threads()) % 4 == 0
    }
}

/// Replaces the line starting with `prefix` by `line`; errors if there is none.
fn replace_line(src: &str, prefix: &str, line: &str) -> GpuResult<String> {
    let mut found = false;
    let out: Vec<&str> = src
        .lines()
        .map(|l| {
            if !found && l.starts_with(prefix) {
                found = true;
                line
            } else {
                l
            }
        })
        .collect();
    if !found {
        return Err(device_err(format!(
            "shader template has no line {prefix:?}"
        )));
    }
    Ok(out.join("\n"))
}

fn acc_type(src: &str, f64: bool) -> GpuResult<String> {
    let t = if f64 { "f64" } else { "f32" };
    replace_line(src, "alias acc_t =", &format!("alias acc_t = {t};"))
}

/// gemm.wgsl with the tile constants and the accumulator type substituted.
pub(super) fn gemm_source(tiles: &GemmTiles, f64: bool) -> GpuResult<String> {
    let mut s = GEMM_WGSL.to_string();
    for (name, v) in [
        ("BM", tiles.bm),
        ("BN", tiles.bn),
        ("BK", tiles.bk),
        ("TM", tiles.tm),
        ("TN", tiles.tn),
    ] {
        s = replace_line(
            &s,
            &format!("const {name}: u32 ="),
            &format!("const {name}: u32 = {v}u;"),
        )?;
    }
    acc_type(&s, f64)
}

/// reduce.wgsl with the accumulator type substituted.
pub(super) fn reduce_source(f64: bool) -> GpuResult<String> {
    acc_type(REDUCE_WGSL, f64)
}

/// chol.wgsl with the Gram type and the largest Gram side `kmax` substituted.
pub(super) fn chol_source(f64: bool, kmax: u32) -> GpuResult<String> {
    let s = replace_line(
        super::device::CHOL_WGSL,
        "const KMAX: u32 =",
        &format!("const KMAX: u32 = {kmax}u;"),
    )?;
    acc_type(&s, f64)
}

/// The largest Gram side chol.wgsl handles in `max_workgroup_bytes` of workgroup memory
/// (its two `k × k` arrays of `f32` or `f64` and three 256-entry reductions), at most 64.
pub(super) fn chol_kmax(f64: bool, max_workgroup_bytes: u32) -> u32 {
    let el = if f64 { 8 } else { 4 };
    [64u32, 48, 32, 16]
        .into_iter()
        .find(|&k| 2 * k * k * el + 3 * 256 * 4 + 64 <= max_workgroup_bytes)
        .unwrap_or(0)
}

/// An input operand: element `(r, c)` of matrix `z` of the stored (untransposed) matrix is at
/// `off + z · stride + r · ld + c`; `stride` 0 shares one matrix across the batch.
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    pub(super) buf: &'a wgpu::Buffer,
    pub(super) off: u64,
    pub(super) ld: u64,
    pub(super) stride: u64,
    pub(super) trans: bool,
}

/// The output: element `(i, j)` of matrix `z` at `off + z · stride + i · ld + j`.
#[derive(Clone, Copy)]
pub(super) struct Output<'a> {
    pub(super) buf: &'a wgpu::Buffer,
    pub(super) off: u64,
    pub(super) ld: u64,
    pub(super) stride: u64,
}

/// One batched GEMM: `C[z] (+)= op(A[z]) · op(B[z])` for `z < batch`, `op(A)` `m × k`,
/// `op(B)` `k × n`. With `f64`, accumulation and C are `f64` (inputs stay `f32`).
#[derive(Clone, Copy)]
pub(super) struct Gemm<'a> {
    pub(super) a: Operand<'a>,
    pub(super) b: Operand<'a>,
    pub(super) c: Output<'a>,
    pub(super) m: u64,
    pub(super) n: u64,
    pub(super) k: u64,
    pub(super) batch: u64,
    pub(super) accumulate: bool,
    pub(super) subtract: bool,
    pub(super) f64: bool,
}

impl<'a> Operand<'a> {
    /// Untransposed matrices at element 0 of `buf`, leading dimension `ld`, `stride` elements
    /// apart (0: one matrix for the whole batch).
    pub(super) fn new(buf: &'a wgpu::Buffer, ld: usize, stride: usize) -> Self {
        Operand {
            buf,
            off: 0,
            ld: ld as u64,
            stride: stride as u64,
            trans: false,
        }
    }

    /// The same operand, used transposed.
    pub(super) fn t(self) -> Self {
        Operand {
            trans: true,
            ..self
        }
    }
}

impl<'a> Output<'a> {
    /// Matrices at element `off` of `buf`, leading dimension `ld`, `stride` elements apart.
    pub(super) fn new(buf: &'a wgpu::Buffer, off: usize, ld: usize, stride: usize) -> Self {
        Output {
            buf,
            off: off as u64,
            ld: ld as u64,
            stride: stride as u64,
        }
    }
}

impl<'a> Gemm<'a> {
    /// `C[z] = op(A[z]) · op(B[z])` for `z < batch` with `op(A)` `m × k` and `op(B)` `k × n`
    /// (`mnk`), overwriting C, accumulated in `f32`; see [`Gemm::accumulate`] and
    /// [`Gemm::f64`].
    pub(super) fn new(
        a: Operand<'a>,
        b: Operand<'a>,
        c: Output<'a>,
        (m, n, k): (usize, usize, usize),
        batch: usize,
    ) -> Self {
        Gemm {
            a,
            b,
            c,
            m: m as u64,
            n: n as u64,
            k: k as u64,
            batch: batch as u64,
            accumulate: false,
            subtract: false,
            f64: false,
        }
    }

    /// One product of whole buffers: `C = op(A) · op(B)` with A stored with leading dimension
    /// `lda` (transposed where `ta`), B likewise, C `m × n` with leading dimension `n`.
    pub(super) fn single(
        (a, lda, ta): (&'a wgpu::Buffer, usize, bool),
        (b, ldb, tb): (&'a wgpu::Buffer, usize, bool),
        c: &'a wgpu::Buffer,
        (m, n, k): (usize, usize, usize),
    ) -> Self {
        let op = |buf, ld, trans| Operand {
            trans,
            ..Operand::new(buf, ld, 0)
        };
        Gemm::new(
            op(a, lda, ta),
            op(b, ldb, tb),
            Output::new(c, 0, n, 0),
            (m, n, k),
            1,
        )
    }

    /// Adds to C instead of overwriting it, where `yes`.
    pub(super) fn accumulate(self, yes: bool) -> Self {
        Gemm {
            accumulate: yes,
            ..self
        }
    }

    /// `C −= op(A) · op(B)` instead of overwriting C.
    pub(super) fn subtract(self) -> Self {
        Gemm {
            subtract: true,
            ..self
        }
    }

    /// The `accumulate` mode of the shaders: 0 overwrite, 1 add, 2 subtract.
    fn mode(&self) -> u32 {
        if self.subtract {
            2
        } else {
            self.accumulate as u32
        }
    }

    /// Accumulates in `f64` and writes an `f64` C, where `yes`.
    pub(super) fn f64(self, yes: bool) -> Self {
        Gemm { f64: yes, ..self }
    }
}

fn u32_of(v: u64, what: &str) -> GpuResult<u32> {
    u32::try_from(v).map_err(|_| device_err(format!("GEMM {what} {v} does not fit 32 bits")))
}

/// Number of k-splits and the depth of each (a multiple of `bk`): enough workgroups to fill
/// a large device when C has few tiles. A function of one matrix's shape and the device
/// limits only — never of the batch size — so a matrix gets the same bits in any batch.
pub(super) fn split_plan(
    ctx: &Ctx,
    t: &GemmTiles,
    m: u64,
    n: u64,
    k: u64,
    acc_bytes: u64,
) -> (u64, u64) {
    let bk = t.bk as u64;
    let tiles = m.div_ceil(t.bm as u64) * n.div_ceil(t.bn as u64);
    let mut splits = 1u64;
    if tiles < TARGET_GROUPS && k >= 2 * MIN_K_PER_SPLIT {
        splits = TARGET_GROUPS
            .div_ceil(tiles)
            .min(k / MIN_K_PER_SPLIT)
            .min(MAX_SPLITS);
    }
    // One matrix's partial products must fit the partial-buffer cap.
    let cap = partial_cap(ctx);
    while splits > 1 && (splits * m * n * acc_bytes > cap || splits > ctx.max_groups as u64) {
        splits /= 2;
    }
    let chunk = k.div_ceil(splits.max(1)).next_multiple_of(bk).max(bk);
    (k.div_ceil(chunk).max(1), chunk)
}

/// Bytes of split-K partial products one dispatch may use: one binding, and a modest share
/// of the budget — the whole budget's, even on a worker of `lowrank_many` that plans within a
/// share of it: the split count decides the summation order, so it must depend on the shape
/// and the device only (each concurrent job has its own scratch of at most this size).
fn partial_cap(ctx: &Ctx) -> u64 {
    ctx.binding_limit.min(ctx.budget / 8).max(1)
}

/// The tiles an `m × n` product runs with, and whether they are the narrow ones
/// ([`GemmTiles::NARROW`] for tall narrow outputs, `n ≤ 32` and `m ≥ 128`, where the adapter
/// takes them; small square outputs such as Grams keep the default tiles, measured faster).
pub(super) fn tiles_for(ctx: &Ctx, m: u64, n: u64) -> (GemmTiles, bool) {
    match ctx.narrow {
        Some(t) if n <= t.bn as u64 && m >= t.bm as u64 => (t, true),
        _ => (ctx.tiles, false),
    }
}

/// Records one batched GEMM (several dispatches where m or the batch is larger than one
/// dispatch covers, or where split-K needs a reduction).
pub(super) fn record(s: &mut Session<'_>, g: &Gemm<'_>) -> GpuResult<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let (t, _) = tiles_for(s.ctx, g.m, g.n);
    let rows_per_dispatch = s.ctx.max_groups as u64 * t.bm as u64;
    let mut i0 = 0u64;
    while i0 < g.m {
        let rows = rows_per_dispatch.min(g.m - i0);
        let mut sub = *g;
        sub.m = rows;
        sub.a.off += if g.a.trans { i0 } else { i0 * g.a.ld };
        sub.c.off += i0 * g.c.ld;
        record_batches(s, &sub)?;
        i0 += rows;
    }
    Ok(())
}

/// Cuts the batch so that `batch · splits` workgroups along z and the partial products fit.
fn record_batches(s: &mut Session<'_>, g: &Gemm<'_>) -> GpuResult<()> {
    let ctx = s.ctx;
    let acc_bytes = if g.f64 { 8 } else { 4 };
    let (t, _) = tiles_for(ctx, g.m, g.n);
    let (splits, chunk) = split_plan(ctx, &t, g.m, g.n, g.k, acc_bytes);
    let mut per = ctx.max_groups as u64 / splits;
    if splits > 1 {
        per = per.min(partial_cap(ctx) / (splits * g.m * g.n * acc_bytes));
    }
    let per = per.max(1);
    let mut z0 = 0u64;
    while z0 < g.batch {
        let count = per.min(g.batch - z0);
        let mut sub = *g;
        sub.batch = count;
        sub.a.off += z0 * g.a.stride;
        sub.b.off += z0 * g.b.stride;
        sub.c.off += z0 * g.c.stride;
        record_one(s, &sub, splits, chunk)?;
        z0 += count;
    }
    Ok(())
}

fn record_one(s: &mut Session<'_>, g: &Gemm<'_>, splits: u64, chunk: u64) -> GpuResult<()> {
    let ctx = s.ctx;
    let (t, narrow) = tiles_for(ctx, g.m, g.n);
    let acc_bytes = if g.f64 { 8 } else { 4 };
    let vec_ok =
        |o: &Operand<'_>| o.off % 4 == 0 && o.ld % 4 == 0 && (g.batch == 1 || o.stride % 4 == 0);
    let kernel = Kernel::Gemm {
        f64: g.f64,
        ta: g.a.trans,
        tb: g.b.trans,
        va: t.vec_loads(t.bm) && vec_ok(&g.a),
        vb: t.vec_loads(t.bn) && vec_ok(&g.b),
        narrow,
    };
    let groups = (
        u32_of(g.n.div_ceil(t.bn as u64), "column tiles")?,
        u32_of(g.m.div_ceil(t.bm as u64), "row tiles")?,
        u32_of(g.batch * splits, "batch")?,
    );
    let mut params = [
        u32_of(g.m, "m")?,
        u32_of(g.n, "n")?,
        u32_of(g.k, "k")?,
        u32_of(splits, "splits")?,
        u32_of(g.a.ld, "lda")?,
        u32_of(g.b.ld, "ldb")?,
        0,
        u32_of(chunk, "k chunk")?,
        u32_of(g.a.off, "A offset")?,
        u32_of(g.b.off, "B offset")?,
        0,
        0,
        u32_of(g.a.stride, "A stride")?,
        u32_of(g.b.stride, "B stride")?,
        0,
        0,
    ];
    if splits == 1 {
        params[6] = u32_of(g.c.ld, "ldc")?;
        params[10] = u32_of(g.c.off, "C offset")?;
        params[11] = g.mode();
        params[14] = u32_of(g.c.stride, "C stride")?;
        return s.dispatch(
            kernel,
            &params,
            &[g.a.buf, g.b.buf, g.c.buf, g.a.buf, g.b.buf],
            groups,
        );
    }
    let partial = s.scratch(g.batch * splits * g.m * g.n * acc_bytes)?;
    params[6] = u32_of(g.n, "ldc")?;
    params[14] = u32_of(g.m * g.n, "partial stride")?;
    s.dispatch(
        kernel,
        &params,
        &[g.a.buf, g.b.buf, &partial, g.a.buf, g.b.buf],
        groups,
    )?;
    let total = g.batch * g.m * g.n;
    let (x, y) = ctx.grid(total.div_ceil(256))?;
    let rparams = [
        u32_of(g.m, "m")?,
        u32_of(g.n, "n")?,
        u32_of(splits, "splits")?,
        u32_of(g.batch, "batch")?,
        u32_of(g.c.ld, "ldc")?,
        u32_of(g.c.off, "C offset")?,
        u32_of(g.c.stride, "C stride")?,
        g.mode(),
    ];
    s.dispatch(
        Kernel::Reduce { f64: g.f64 },
        &rparams,
        &[&partial, g.c.buf],
        (x, y, 1),
    )
}

/// Rows `r0..r1`, columns `c0..c1` of a row-major matrix with `cols` columns, as row slices.
fn piece(
    data: &[f32],
    cols: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
) -> Vec<&[f32]> {
    if c0 == 0 && c1 == cols {
        return vec![&data[r0 * cols..r1 * cols]];
    }
    (r0..r1)
        .map(|r| &data[r * cols + c0..r * cols + c1])
        .collect()
}

fn ranges(len: usize, block: usize) -> Vec<(usize, usize)> {
    let block = block.max(1);
    (0..len.div_ceil(block))
        .map(|i| (i * block, ((i + 1) * block).min(len)))
        .collect()
}

/// `op(a) · op(b)` for host matrices (shapes already checked, output non-empty). Operands
/// larger than a binding, or than the budget together, are cut into blocks of rows of op(a),
/// columns of op(b) and depth; depth blocks accumulate in order.
pub(super) fn gemm_host(
    ctx: &Ctx,
    a: MatrixRef<'_>,
    b: MatrixRef<'_>,
    ta: bool,
    tb: bool,
) -> GpuResult<Matrix> {
    let (m, k) = if ta { (a.cols(), a.rows()) } else { a.shape() };
    let n = if tb { b.rows() } else { b.cols() };
    let lim = (ctx.binding_limit / 4) as usize;
    let budget = ((ctx.budget / 4) as usize).max(3);
    let (mut mb, mut nb, mut kb) = (m, n, k.max(1));
    loop {
        let fits = mb * kb <= lim
            && kb * nb <= lim
            && mb * nb <= lim
            && mb * kb + kb * nb + mb * nb <= budget;
        if fits || (mb == 1 && nb == 1 && kb == 1) {
            break;
        }
        if mb >= nb && mb >= kb {
            mb = mb.div_ceil(2);
        } else if nb >= kb {
            nb = nb.div_ceil(2);
        } else {
            kb = kb.div_ceil(2);
        }
    }
    let mut out = vec![0.0f32; m * n];
    for &(i0, i1) in &ranges(m, mb) {
        for &(j0, j1) in &ranges(n, nb) {
            let c = ctx.buffer(((i1 - i0) * (j1 - j0) * 4) as u64, "GEMM output")?;
            let mut s = Session::new(ctx);
            let kr = ranges(k, kb);
            if kr.is_empty() {
                s.clear(&c);
            }
            for (step, &(l0, l1)) in kr.iter().enumerate() {
                // Stored orientation: op(a)[i, l] is a[l, i] when transposed.
                let (pa, lda) = if ta {
                    (piece(a.data(), a.cols(), (l0, l1), (i0, i1)), i1 - i0)
                } else {
                    (piece(a.data(), a.cols(), (i0, i1), (l0, l1)), l1 - l0)
                };
                let (pb, ldb) = if tb {
                    (piece(b.data(), b.cols(), (j0, j1), (l0, l1)), l1 - l0)
                } else {
                    (piece(b.data(), b.cols(), (l0, l1), (j0, j1)), j1 - j0)
                };
                let abuf = ctx.upload(&pa, "GEMM A")?;
                let bbuf = ctx.upload(&pb, "GEMM B")?;
                let g = Gemm::single(
                    (&abuf, lda, ta),
                    (&bbuf, ldb, tb),
                    &c,
                    (i1 - i0, j1 - j0, l1 - l0),
                );
                record(&mut s, &g.accumulate(step > 0))?;
                if kr.len() > 1 {
                    // Keep the resident set to one set of pieces.
                    s.flush()?;
                }
            }
            let v: Vec<f32> = s.read(&c, 0, ((i1 - i0) * (j1 - j0)) as u64)?;
            let w = j1 - j0;
            for (r, row) in v.chunks(w.max(1)).enumerate() {
                out[(i0 + r) * n + j0..(i0 + r) * n + j1].copy_from_slice(row);
            }
        }
    }
    Matrix::new(m, n, out)
}
