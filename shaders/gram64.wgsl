// The Gram matrix G = XᵀX of every matrix X (n × k, f32) of a batch, accumulated in f64, for
// adapters whose f64 arithmetic is fast (data-center GPUs, software adapters). A product of two
// f32 values is exact in f64 (24 + 24 significant bits), so every entry is a plain f64 sum of
// exact terms: its bits do not depend on whether the driver contracts the multiply into the add,
// and it is within n·2⁻⁵³ relative of the true sum. Same layout and parameters as
// shaders/gram2.wgsl, whose double-f32 pairs (s, c) this replaces by one f64 in the same 8
// bytes: out[z·k·k + a·k + b] (upper triangle), with `acc` continuing from what is there.
//
// X of matrix z: element (r, c) at off + z·stride + r·ld + c, or with `tr` at
// off + z·stride + c·ld + r. Workgroup (tj, ti, z): the 64 × 64 tile (ti, tj) of G (tiles
// below the diagonal return at once), 4 × 4 entries per invocation at rows ti·64 + ly + 16·i
// and columns tj·64 + lx + 16·j; 16 rows of both column blocks are staged in workgroup memory
// at a time, converted to f64 once there (a conversion per use would cost more than the
// multiply-adds on GPUs). Each entry is one sum over the rows in order.
//
// Long X (split-K), as in gram2.wgsl: with `splits` > 1, workgroup z = matrix · splits + split
// sums rows split·chunk … (split + 1)·chunk − 1 into slot z of `out` (`[matrix][split][k][k]`,
// never with `acc`), and `combine` adds each entry's splits in order. The split is a function
// of one matrix's shape (and the device's limits), never of the batch, so the bits are too.
struct Params {
    n: u32,
    k: u32,
    ld: u32,
    stride: u32,
    off: u32,
    // 1: X stored transposed (see above).
    tr: u32,
    // 1: add to the sums already in `out`.
    acc: u32,
    // Unused (gram2.wgsl's `opaque`); kept so that both kernels take the same parameters.
    zero: u32,
    // Row splits per matrix (1: none) and rows per split.
    splits: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f64>;

// Entry (a, b) of output slot z to start from: 0, or with `acc` what is there.
fn start(z: u32, a: u32, b: u32) -> f64 {
    if (p.acc == 1u && a < p.k && b < p.k && a <= b) {
        return out[z * p.k * p.k + a * p.k + b];
    }
    return f64(0.0);
}

// Writes entry (a, b) of output slot z (upper triangle only).
fn finish(z: u32, a: u32, b: u32, v: f64) {
    if (a < p.k && b < p.k && a <= b) {
        out[z * p.k * p.k + a * p.k + b] = v;
    }
}

const T: u32 = 64u;
const R: u32 = 16u;

var<workgroup> ta: array<f64, 1024>;
var<workgroup> tb: array<f64, 1024>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let z = wid.z;
    let m = z / p.splits;
    let r_begin = (z % p.splits) * p.chunk;
    let r_end = min(p.n, r_begin + p.chunk);
    let ti = wid.y;
    let tj = wid.x;
    if (tj < ti) {
        return;
    }
    let base = p.off + m * p.stride;
    let flat = lid.x + 16u * lid.y;
    var acc: array<f64, 16>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i * 4u + j] = start(z, ti * T + lid.y + 16u * i, tj * T + lid.x + 16u * j);
        }
    }
    for (var r0 = r_begin; r0 < r_end; r0 += R) {
        // Stage rows r0 … r0 + 15 of both column blocks: 1024 values each, 4 per invocation.
        for (var l = 0u; l < 4u; l++) {
            let idx = flat + 256u * l;
            var lr = idx / T;
            var lc = idx % T;
            if (p.tr == 1u) {
                // Consecutive invocations read consecutive rows (contiguous when transposed).
                lr = idx % R;
                lc = idx / R;
            }
            let r = r0 + lr;
            let ca = ti * T + lc;
            let cb = tj * T + lc;
            var va = 0.0;
            var vb = 0.0;
            if (r < r_end) {
                if (p.tr == 1u) {
                    if (ca < p.k) {
                        va = x[base + ca * p.ld + r];
                    }
                    if (cb < p.k) {
                        vb = x[base + cb * p.ld + r];
                    }
                } else {
                    if (ca < p.k) {
                        va = x[base + r * p.ld + ca];
                    }
                    if (cb < p.k) {
                        vb = x[base + r * p.ld + cb];
                    }
                }
            }
            ta[lr * T + lc] = f64(va);
            tb[lr * T + lc] = f64(vb);
        }
        workgroupBarrier();
        for (var q = 0u; q < R; q++) {
            var u: array<f64, 4>;
            var v: array<f64, 4>;
            for (var i = 0u; i < 4u; i++) {
                u[i] = ta[q * T + lid.y + 16u * i];
                v[i] = tb[q * T + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(u[i], v[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            finish(z, ti * T + lid.y + 16u * i, tj * T + lid.x + 16u * j, acc[i * 4u + j]);
        }
    }
}

// The final sums from the splits' (`parts`: `[matrix][split][k][k]` f64):
// entry (a, b) of matrix z is its splits added in order, continuing what is in `out` with
// `acc`. One invocation per entry of the upper triangles; `stride` holds the number of
// matrices of this sub-batch and `off` the output slot of its first.
@group(0) @binding(1) var<storage, read> parts: array<f64>;

@compute @workgroup_size(64, 1, 1)
fn combine(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = gid.y * nwg.x * 64u + gid.x;
    let kk = p.k * p.k;
    let z = e / kk;
    let a = (e % kk) / p.k;
    let b = e % p.k;
    if (z >= p.stride || a > b) {
        return;
    }
    var sum = start(z + p.off, a, b);
    for (var sp = 0u; sp < p.splits; sp++) {
        sum += parts[(z * p.splits + sp) * kk + a * p.k + b];
    }
    finish(z + p.off, a, b, sum);
}
