// Split-K reduction for gemm.wgsl: out[b] = Σ_s partial[b · splits + s]  (out[b] + that when
// `accumulate` is 1, out[b] − that when it is 2), the splits summed in order, so the result does not depend on scheduling.
//
// partial holds batch · splits contiguous m × n matrices; out[b] is written at
// `out_off + b · out_stride + i · ldc + j`. One invocation per element; the dispatch is 2-D
// (x · 256 elements per row of workgroups) so that large outputs stay within the per-dimension
// workgroup limit. `acc_t` is replaced by f64 for the f64 GEMM variant.
alias acc_t = f32;

struct Params {
    m: u32,
    n: u32,
    splits: u32,
    batch: u32,
    ldc: u32,
    out_off: u32,
    out_stride: u32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<acc_t>;
@group(0) @binding(2) var<storage, read_write> out: array<acc_t>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let e = gid.y * nwg.x * 256u + gid.x;
    let size = p.m * p.n;
    if (e >= size * p.batch) {
        return;
    }
    let b = e / size;
    let r = e % size;
    var s = partial[(b * p.splits) * size + r];
    for (var t = 1u; t < p.splits; t++) {
        s = s + partial[(b * p.splits + t) * size + r];
    }
    let at = p.out_off + b * p.out_stride + (r / p.n) * p.ldc + r % p.n;
    if (p.accumulate == 1u) {
        s = out[at] + s;
    } else if (p.accumulate == 2u) {
        s = out[at] - s;
    }
    out[at] = s;
}
