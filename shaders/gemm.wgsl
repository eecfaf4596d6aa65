// Tiled, batched GEMM:  C[z] = op(A[z]) · op(B[z]), or C[z] + that when `accumulate` is 1,
// C[z] − that when it is 2;
// op(X) = Xᵀ when the pipeline constant TRANS_A / TRANS_B is set (a flag, not a copy).
//
// op(A) is m × k, op(B) is k × n, C is m × n; all row-major with leading dimensions lda, ldb,
// ldc and element offsets. Dispatch: x = ⌈n / BN⌉, y = ⌈m / BM⌉, z = batch · splits.
// Workgroup z works on matrix `z / splits` over the k-range `[s · k_chunk, (s + 1) · k_chunk)`
// with `s = z % splits` and writes C at `c_off + z · c_stride` — with splits > 1 that is a
// partial buffer that reduce.wgsl sums in split order (deterministic split-K).
//
// Each workgroup computes a BM × BN tile of C: BK-deep slices of op(A) and op(B) are staged in
// workgroup memory (k-major, vec4-packed), each invocation accumulates a TM × TN register block.
//
// The tile configuration below is replaced by `GemmTiles` (src/compute/gpu/gemm.rs) before the
// module is compiled; the values here are the defaults and what naga validates. `acc_t` is
// replaced by f64 for the Gram / high-precision variant (inputs stay f32; the products of two
// f32 are exact in f64).
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;
alias acc_t = f32;

// Transposes, and vec4 global loads (when offsets, strides and leading dimensions are
// multiples of 4), as pipeline-overridable constants.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override VEC_A: bool = false;
override VEC_B: bool = false;

const WG_X: u32 = BN / TN;
const WG_Y: u32 = BM / TM;
const THREADS: u32 = WG_X * WG_Y;
const A_LOADS: u32 = BM * BK / THREADS;
const B_LOADS: u32 = BN * BK / THREADS;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    splits: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    k_chunk: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    accumulate: u32,
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<acc_t>;
// The same buffers as `a` and `b`, seen as vec4 (used when VEC_A / VEC_B).
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;

// tile_a[l][i] = op(A)[m0 + i][k0 + l];  tile_b[l][j] = op(B)[k0 + l][n0 + j].
var<workgroup> tile_a: array<vec4<f32>, BK * BM / 4u>;
var<workgroup> tile_b: array<vec4<f32>, BK * BN / 4u>;

fn store_a(l: u32, i: u32, v: f32) {
    let s = l * BM + i;
    tile_a[s / 4u][s % 4u] = v;
}

fn store_b(l: u32, j: u32, v: f32) {
    let s = l * BN + j;
    tile_b[s / 4u][s % 4u] = v;
}

// Keeps the components of `v` whose index `first + t` is below `bound`.
fn mask4(v: vec4<f32>, first: u32, bound: u32) -> vec4<f32> {
    let idx = vec4<u32>(first, first + 1u, first + 2u, first + 3u);
    return select(vec4<f32>(0.0), v, idx < vec4<u32>(bound));
}

fn load_tile_a(tid: u32, a_base: u32, m0: u32, k0: u32, k_end: u32) {
    if (VEC_A) {
        // Four consecutive elements along the contiguous dimension of A per load.
        for (var e = 0u; e < A_LOADS / 4u; e++) {
            let idx = (e * THREADS + tid) * 4u;
            if (TRANS_A) {
                // A is k × m: contiguous along i.
                let l = idx / BM;
                let i = idx % BM;
                var v = vec4<f32>(0.0);
                if (k0 + l < k_end && m0 + i < p.m) {
                    v = mask4(a4[(a_base + (k0 + l) * p.lda + m0 + i) / 4u], m0 + i, p.m);
                }
                let s = (l * BM + i) / 4u;
                tile_a[s] = v;
            } else {
                // A is m × k: contiguous along l.
                let i = idx / BK;
                let l = idx % BK;
                var v = vec4<f32>(0.0);
                if (m0 + i < p.m && k0 + l < k_end) {
                    v = mask4(a4[(a_base + (m0 + i) * p.lda + k0 + l) / 4u], k0 + l, k_end);
                }
                store_a(l, i, v.x);
                store_a(l + 1u, i, v.y);
                store_a(l + 2u, i, v.z);
                store_a(l + 3u, i, v.w);
            }
        }
    } else {
        for (var e = 0u; e < A_LOADS; e++) {
            let idx = e * THREADS + tid;
            var i: u32;
            var l: u32;
            if (TRANS_A) {
                l = idx / BM;
                i = idx % BM;
            } else {
                i = idx / BK;
                l = idx % BK;
            }
            let gi = m0 + i;
            let gl = k0 + l;
            var v = 0.0;
            if (gi < p.m && gl < k_end) {
                if (TRANS_A) {
                    v = a[a_base + gl * p.lda + gi];
                } else {
                    v = a[a_base + gi * p.lda + gl];
                }
            }
            store_a(l, i, v);
        }
    }
}

fn load_tile_b(tid: u32, b_base: u32, n0: u32, k0: u32, k_end: u32) {
    if (VEC_B) {
        for (var e = 0u; e < B_LOADS / 4u; e++) {
            let idx = (e * THREADS + tid) * 4u;
            if (TRANS_B) {
                // B is n × k: contiguous along l.
                let j = idx / BK;
                let l = idx % BK;
                var v = vec4<f32>(0.0);
                if (n0 + j < p.n && k0 + l < k_end) {
                    v = mask4(b4[(b_base + (n0 + j) * p.ldb + k0 + l) / 4u], k0 + l, k_end);
                }
                store_b(l, j, v.x);
                store_b(l + 1u, j, v.y);
                store_b(l + 2u, j, v.z);
                store_b(l + 3u, j, v.w);
            } else {
                // B is k × n: contiguous along j.
                let l = idx / BN;
                let j = idx % BN;
                var v = vec4<f32>(0.0);
                if (k0 + l < k_end && n0 + j < p.n) {
                    v = mask4(b4[(b_base + (k0 + l) * p.ldb + n0 + j) / 4u], n0 + j, p.n);
                }
                let s = (l * BN + j) / 4u;
                tile_b[s] = v;
            }
        }
    } else {
        for (var e = 0u; e < B_LOADS; e++) {
            let idx = e * THREADS + tid;
            var j: u32;
            var l: u32;
            if (TRANS_B) {
                j = idx / BK;
                l = idx % BK;
            } else {
                l = idx / BN;
                j = idx % BN;
            }
            let gj = n0 + j;
            let gl = k0 + l;
            var v = 0.0;
            if (gj < p.n && gl < k_end) {
                if (TRANS_B) {
                    v = b[b_base + gj * p.ldb + gl];
                } else {
                    v = b[b_base + gl * p.ldb + gj];
                }
            }
            store_b(l, j, v);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let matrix = wg.z / p.splits;
    let split = wg.z % p.splits;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    let a_base = p.a_off + matrix * p.a_stride;
    let b_base = p.b_off + matrix * p.b_stride;

    var acc: array<vec4<acc_t>, TM * TN / 4u>;
    var ar: array<vec4<f32>, TM / 4u>;
    var br: array<vec4<f32>, TN / 4u>;

    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        load_tile_a(tid, a_base, m0, k0, k_end);
        load_tile_b(tid, b_base, n0, k0, k_end);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var q = 0u; q < TM / 4u; q++) {
                ar[q] = tile_a[(kk * BM + lid.y * TM) / 4u + q];
            }
            for (var q = 0u; q < TN / 4u; q++) {
                br[q] = tile_b[(kk * BN + lid.x * TN) / 4u + q];
            }
            for (var i = 0u; i < TM; i++) {
                let av = acc_t(ar[i / 4u][i % 4u]);
                for (var q = 0u; q < TN / 4u; q++) {
                    acc[i * (TN / 4u) + q] += vec4<acc_t>(br[q]) * av;
                }
            }
        }
        workgroupBarrier();
    }

    let c_base = p.c_off + wg.z * p.c_stride;
    for (var i = 0u; i < TM; i++) {
        let gi = m0 + lid.y * TM + i;
        if (gi >= p.m) {
            break;
        }
        for (var j = 0u; j < TN; j++) {
            let gj = n0 + lid.x * TN + j;
            if (gj >= p.n) {
                break;
            }
            let at = c_base + gi * p.ldc + gj;
            var v = acc[i * (TN / 4u) + j / 4u][j % 4u];
            if (p.accumulate == 1u) {
                v = c[at] + v;
            } else if (p.accumulate == 2u) {
                v = c[at] - v;
            }
            c[at] = v;
        }
    }
}
