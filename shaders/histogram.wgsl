// Histogram of f32 magnitudes for the exact radix select of mask.rs (two 16-bit passes).
//
// For finite f32 the bit pattern with the sign cleared orders exactly like |w|. Pass 1 counts
// `bits >> 16` over all elements; pass 2 counts `bits & 0xffff` over the elements whose
// `bits >> 16 == prefix`. Counts are integer atomics, so the histogram is exact and does not
// depend on scheduling. Elements `[off, off + count)` of `data` (f32 seen as u32) are counted;
// the dispatch is 2-D like reduce.wgsl, each invocation takes a grid-stride share.
struct Params {
    off: u32,
    count: u32,
    // 16 for pass 1, 0 for pass 2.
    shift: u32,
    // 1 for pass 2 (only `bits >> 16 == prefix` counted).
    use_prefix: u32,
    prefix: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<atomic<u32>, 65536>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let stride = nwg.x * nwg.y * 256u;
    for (var e = gid.y * nwg.x * 256u + gid.x; e < p.count; e += stride) {
        let bits = data[p.off + e] & 0x7fffffffu;
        if (p.use_prefix == 0u || (bits >> 16u) == p.prefix) {
            atomicAdd(&hist[(bits >> p.shift) & 0xffffu], 1u);
        }
    }
}
