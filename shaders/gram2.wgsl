// The Gram matrix G = XᵀX of every matrix X (n × k, f32) of a batch, accumulated in
// double-f32: each product is split exactly into p + e (p = u·v rounded, e its rounding error
// by Dekker's product),
// and the sum is carried as an unevaluated pair (s, c) with Knuth's TwoSum, so that s + c is
// G to about n·u² relative (u = 2⁻²⁴; an f64 sum gives n·2⁻⁵³, 32 times less) on adapters without fast
// f64. Output per matrix: the upper triangle of G as (s, c) pairs, out[2(z·k·k + a·k + b)];
// with `acc` the sums start from the pairs already there (the rows of X in several buffers).
//
// X of matrix z: element (r, c) at off + z·stride + r·ld + c, or with `tr` at
// off + z·stride + c·ld + r (X stored transposed: the Gram of a wide matrix's rows).
// Workgroup (tj, ti, z): the 32 × 32 tile (ti, tj) of G (tiles below the diagonal return at
// once), 2 × 2 entries per invocation; 16 rows of both column blocks are staged in workgroup
// memory at a time (read along whichever index is contiguous). Each entry is one sum over the
// rows in order, so its bits do not depend on the batch or the tiling of the others. Every
// loop runs over a range given by the parameters.
//
// Long X (split-K): with `splits` > 1, workgroup z = matrix · splits + split sums rows
// split·chunk … (split + 1)·chunk − 1 only, into slot z of `out` (`[matrix][split][k][k][2]`,
// never with `acc`), and `combine` then adds each entry's splits in order into the final
// pairs, so that a Gram of many rows still fills the device. The split is a function of one
// matrix's shape (and the device's limits), never of the batch, so the bits are too.
struct Params {
    n: u32,
    k: u32,
    ld: u32,
    stride: u32,
    off: u32,
    // 1: X stored transposed (see above).
    tr: u32,
    // 1: add to the pairs already in `out`.
    acc: u32,
    // Always 0; see `opaque`.
    zero: u32,
    // Row splits per matrix (1: none) and rows per split.
    splits: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// x, hidden from the compiler's algebra: drivers may treat float arithmetic as associative
// (WGSL cannot mark it exact; Metal compiles with fast math by default) or contract a product
// into a following sum, which would fold TwoSum's error term to zero or make it describe a sum
// that was not computed; an exclusive-or with a uniform 0 keeps every rounding where it is
// written.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ p.zero);
}

// The upper 12 significant bits of x (the rest, x − high(x), is exact).
fn high(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) & 0xfffff000u);
}

// The pair (s, c) of entry (a, b) of output slot z to start from: 0, or with `acc` what is
// there.
fn start(z: u32, a: u32, b: u32) -> vec2<f32> {
    if (p.acc == 1u && a < p.k && b < p.k && a <= b) {
        let o = 2u * (z * p.k * p.k + a * p.k + b);
        return vec2<f32>(out[o], out[o + 1u]);
    }
    return vec2<f32>(0.0, 0.0);
}

// (s, c) + (t, d): the sum of the leading parts by TwoSum, the trailing parts and its error
// added into the second.
fn add_pair(e: vec2<f32>, f: vec2<f32>) -> vec2<f32> {
    let t = opaque(e.x + f.x);
    let zz = opaque(t - e.x);
    let lost = opaque(opaque(e.x - opaque(t - zz)) + opaque(f.x - zz));
    return vec2<f32>(t, opaque(opaque(e.y + f.y) + lost));
}

// Writes entry (a, b) of output slot z (upper triangle only).
fn finish(z: u32, a: u32, b: u32, e: vec2<f32>) {
    if (a < p.k && b < p.k && a <= b) {
        let o = 2u * (z * p.k * p.k + a * p.k + b);
        out[o] = e.x;
        out[o + 1u] = e.y;
    }
}

// Whether `fma` is fused (one rounding) on this device: WGSL lets an implementation round the
// product first, so the host sets this only after `probe` has shown it exact here.
override FUSED: bool = false;

// (s, c) + u·v: the rounded product by TwoSum, its rounding error exactly — by one fused
// multiply-add where FUSED, else by Dekker's product from 12-bit halves (uh + ul = u,
// vh + vl = v; the products of halves are exact), which needs no splitting constant.
fn add_product(e: vec2<f32>, u: f32, uh: f32, ul: f32, v: f32, vh: f32, vl: f32) -> vec2<f32> {
    let prod = opaque(u * v);
    var err: f32;
    if (FUSED) {
        err = opaque(fma(u, v, -prod));
    } else {
        let e1 = opaque(opaque(uh * vh) - prod);
        let e2 = opaque(e1 + opaque(uh * vl));
        let e3 = opaque(e2 + opaque(ul * vh));
        err = opaque(e3 + opaque(ul * vl));
    }
    let t = opaque(e.x + prod);
    let zz = opaque(t - e.x);
    let lost = opaque(opaque(e.x - opaque(t - zz)) + opaque(prod - zz));
    return vec2<f32>(t, opaque(e.y + opaque(lost + err)));
}

const T: u32 = 32u;
const R: u32 = 16u;

var<workgroup> ta: array<f32, 512>;
var<workgroup> tb: array<f32, 512>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    // z: the output slot (matrix · splits + split); m: the matrix.
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
    // This invocation's entries: rows a0, a0 + 1 and columns b0, b0 + 1 of G, as (s, c).
    let a0 = ti * T + lid.y * 2u;
    let b0 = tj * T + lid.x * 2u;
    var e00 = start(z, a0, b0);
    var e01 = start(z, a0, b0 + 1u);
    var e10 = start(z, a0 + 1u, b0);
    var e11 = start(z, a0 + 1u, b0 + 1u);
    for (var r0 = r_begin; r0 < r_end; r0 += R) {
        // Stage rows r0 … r0 + 15 of both column blocks: 512 values each, 2 per invocation.
        for (var l = 0u; l < 2u; l++) {
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
            ta[lr * T + lc] = va;
            tb[lr * T + lc] = vb;
        }
        workgroupBarrier();
        for (var q = 0u; q < R; q++) {
            let u0 = ta[q * T + lid.y * 2u];
            let u1 = ta[q * T + lid.y * 2u + 1u];
            let v0 = tb[q * T + lid.x * 2u];
            let v1 = tb[q * T + lid.x * 2u + 1u];
            let h0 = high(u0);
            let h1 = high(u1);
            let g0 = high(v0);
            let g1 = high(v1);
            e00 = add_product(e00, u0, h0, u0 - h0, v0, g0, v0 - g0);
            e01 = add_product(e01, u0, h0, u0 - h0, v1, g1, v1 - g1);
            e10 = add_product(e10, u1, h1, u1 - h1, v0, g0, v0 - g0);
            e11 = add_product(e11, u1, h1, u1 - h1, v1, g1, v1 - g1);
        }
        workgroupBarrier();
    }
    finish(z, a0, b0, e00);
    finish(z, a0, b0 + 1u, e01);
    finish(z, a0 + 1u, b0, e10);
    finish(z, a0 + 1u, b0 + 1u, e11);
}

// The final pairs from the splits' (x: `[matrix][split][k][k][2]`): entry (a, b) of matrix
// z is its splits added in order (`add_pair`), continuing what is in `out` with `acc`. One
// invocation per entry of the upper triangles; `stride` holds the number of matrices of this
// sub-batch and `off` the output slot of its first (the host takes the matrices in sub-batches
// whose partial sums fit, so that the splits depend on the shape alone).
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
        let o = 2u * ((z * p.splits + sp) * kk + a * p.k + b);
        sum = add_pair(sum, vec2<f32>(x[o], x[o + 1u]));
    }
    finish(z + p.off, a, b, sum);
}

// The rounding error of each product x[2i]·x[2i + 1] by `fma`, into out[i] (i < n): the host
// compares it with the exact error to learn whether `fma` is fused here (FUSED).
@compute @workgroup_size(64, 1, 1)
fn probe(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        let u = x[2u * i];
        let v = x[2u * i + 1u];
        out[i] = opaque(fma(u, v, -opaque(u * v)));
    }
}
