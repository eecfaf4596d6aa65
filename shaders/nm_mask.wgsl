// N:M structured sparsity along dimension 0 (MaskPattern::NM): in every group of `group`
// consecutive rows of one column keep the `keep` largest |w|, ties to the lower row; a
// trailing partial group of length L keeps min(keep, L).
//
// One invocation per (group, column). The result is a bit mask per (group, column): bit t set
// ⇔ row `g · group + t` is kept (group ≤ 32). Magnitudes are compared as sign-cleared bit
// patterns, exactly like the CPU. The rows `[0, rows)` of this chunk start at element `off`
// of `data`; group 0 of the chunk starts at row 0.
struct Params {
    rows: u32,
    cols: u32,
    keep: u32,
    group: u32,
    off: u32,
    groups: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = gid.y * nwg.x * 256u + gid.x;
    if (t >= p.groups * p.cols) {
        return;
    }
    let g = t / p.cols;
    let j = t % p.cols;
    let r0 = g * p.group;
    let len = min(p.group, p.rows - r0);
    var v: array<u32, 32>;
    for (var i = 0u; i < len; i++) {
        v[i] = data[p.off + (r0 + i) * p.cols + j] & 0x7fffffffu;
    }
    var bits = 0u;
    for (var i = 0u; i < len; i++) {
        // Rank of row i: rows with a larger magnitude, or an equal one and a lower index.
        var rank = 0u;
        for (var s = 0u; s < len; s++) {
            if (v[s] > v[i] || (v[s] == v[i] && s < i)) {
                rank += 1u;
            }
        }
        if (rank < p.keep) {
            bits |= 1u << i;
        }
    }
    out[t] = bits;
}
