// The Gram matrix G = XᵀX of every matrix X (n × k, f32) of a batch, accumulated in
// double-f32: each product is split exactly into p + e (p = u·v rounded, e its rounding error
// by Dekker's product),
// and the sum is carried as an unevaluated pair (s, c) with Knuth's TwoSum, so that s + c is
// G to about n·u² relative (u = 2⁻²⁴; an f64 sum gives n·2⁻⁵³, 32 times less) on adapters without fast
// f64. Output per matrix: the upper triangle of G as (s, c) pairs, out[2(z·k·k + a·k + b)].
//
// X of matrix z: element (r, c) at off + z·stride + r·ld + c. Workgroup (tile, z): an 8 × 8
// tile of G (tiles below the diagonal return at once); 32 rows of both column blocks are
// staged in workgroup memory at a time, each of the four row groups of invocations sums every
// fourth of them, and the four pairs are added exactly at the end. Every loop runs over a
// range given by the parameters.
struct Params {
    n: u32,
    k: u32,
    ld: u32,
    stride: u32,
    off: u32,
    // Tiles per side: ⌈k / 8⌉.
    tiles: u32,
    // Always 0; see `opaque`.
    zero: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// x, hidden from the compiler's algebra: drivers may treat float arithmetic as associative
// (WGSL cannot mark it exact), which would fold TwoSum's error term to zero; an exclusive-or
// with a uniform 0 keeps every rounding where it is written.
fn opaque(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ p.zero);
}

var<workgroup> ta: array<f32, 256>;
var<workgroup> tb: array<f32, 256>;
var<workgroup> ps: array<f32, 256>;
var<workgroup> pc: array<f32, 256>;

// (s, c) += x exactly up to c's rounding (Knuth's TwoSum, every step kept by `opaque`).
fn two_sum(s: f32, x: f32) -> vec2<f32> {
    let t = opaque(s + x);
    let zz = opaque(t - s);
    let err = opaque(opaque(s - opaque(t - zz)) + opaque(x - zz));
    return vec2<f32>(t, err);
}

@compute @workgroup_size(8, 8, 4)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let z = wid.y;
    let ti = wid.x / p.tiles;
    let tj = wid.x % p.tiles;
    if (tj < ti) {
        return;
    }
    let a = ti * 8u + lid.y;
    let b = tj * 8u + lid.x;
    let base = p.off + z * p.stride;
    // The 256 invocations stage a 32-row × 8-column slice of each column block per step.
    let flat = lid.x + 8u * lid.y + 64u * lid.z;
    let lr = flat / 8u;
    let lc = flat % 8u;
    var s = 0.0;
    var c = 0.0;
    for (var r0 = 0u; r0 < p.n; r0 += 32u) {
        let r = r0 + lr;
        let ca = ti * 8u + lc;
        let cb = tj * 8u + lc;
        var va = 0.0;
        var vb = 0.0;
        if (r < p.n && ca < p.k) {
            va = x[base + r * p.ld + ca];
        }
        if (r < p.n && cb < p.k) {
            vb = x[base + r * p.ld + cb];
        }
        ta[flat] = va;
        tb[flat] = vb;
        workgroupBarrier();
        // This invocation's rows of the slice: w, w + 4, …, 28 + w.
        for (var q = lid.z; q < 32u; q += 4u) {
            let u = ta[q * 8u + lid.y];
            let v = tb[q * 8u + lid.x];
            // Exact product error (Dekker) from 12-bit halves cut by masking, so that no fused
            // multiply-add (which a driver may split) and no splitting constant is needed.
            let uh = bitcast<f32>(bitcast<u32>(u) & 0xfffff000u);
            let ul = opaque(u - uh);
            let vh = bitcast<f32>(bitcast<u32>(v) & 0xfffff000u);
            let vl = opaque(v - vh);
            let prod = opaque(u * v);
            let e1 = opaque(opaque(uh * vh) - prod);
            let e2 = opaque(e1 + opaque(uh * vl));
            let e3 = opaque(e2 + opaque(ul * vh));
            let e = opaque(e3 + opaque(ul * vl));
            let ts = two_sum(s, prod);
            s = ts.x;
            c = opaque(c + opaque(ts.y + e));
        }
        workgroupBarrier();
    }
    // The four row groups' pairs, added exactly into group 0's.
    ps[flat] = s;
    pc[flat] = c;
    workgroupBarrier();
    if (lid.z == 0u && a < p.k && b < p.k && a <= b) {
        for (var w = 1u; w < 4u; w++) {
            let ts = two_sum(s, ps[flat + 64u * w]);
            s = ts.x;
            c = opaque(c + opaque(ts.y + pc[flat + 64u * w]));
        }
        let o = 2u * (z * p.k * p.k + a * p.k + b);
        out[o] = s;
        out[o + 1u] = c;
    }
}
