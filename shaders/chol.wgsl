// One Cholesky-QR step for every matrix of a batch, one workgroup per matrix, so that a whole
// orthonormalisation runs on the device without a read back (the host's `rsvd::orth`
// decisions, made here per matrix):
//
//   from the Gram G = YᵀY (k × k, acc_t) of the current iterate Y, write the k × k matrix
//   that Y is multiplied by next into `rinv`: R⁻¹ (upper triangular, G = RᵀR), or the identity
//   for a matrix that is done.
//
// Per matrix z, `state[4z ..]` carries across the passes of one orthonormalisation:
//   [0] done (0 / 1; reset by pass 0),
//   [1] flags, or-ed and never cleared here: 1 the shifted Cholesky failed too (the host's
//       fallback), 2 not orthonormal after the last recorded pass, 4 the projected iterate
//       lost too much (`kept` ≤ `keep`, checked on pass 0 where asked),
//   [2] `kept`: the smallest diagonal entry of pass 0's Gram (f32 bits).
// A flagged matrix is redone by the host's careful path; what an unflagged one gets is what
// that path would compute, up to the rounding of this Cholesky.
//
// Decisions (pass p): with f32 Grams, max|G − I| < tol → done (identity). Else the Cholesky
// of G (a pivot must exceed `pivot` · G_jj: the host's 1e-14 with f64 Grams; 16 f32 units
// with f32 Grams, below which an f32 pivot is rounding noise — stricter than the host, which
// factors the same f32 Gram in f64), or of G + sI with the shift of shifted Cholesky-QR3,
// s = 11(rows·k + k(k+1))·eps·trace G, grown ×100 up to four times; none → flag 1. Then R⁻¹;
// done when p = 0, Iterate, the factor is unshifted and ‖R‖_F‖R⁻¹‖_F ≤ one_pass (a single
// pass), or with f64 Grams when max|G − I| < 0.5 (this pass finishes).
//
// The workgroup array `m` (k ≤ KMAX) holds R in its upper triangle and the strictly upper part
// of R⁻¹, transposed, in its strictly lower triangle. Every loop runs over a range given by the
// parameters. `acc_t` is replaced by f64 for Grams accumulated in f64, and KMAX by what the
// adapter's workgroup memory holds (src/compute/gpu/gemm.rs, `chol_source`).
alias acc_t = f32;
const KMAX: u32 = 64u;
const KK: u32 = KMAX * KMAX;

struct Params {
    k: u32,
    count: u32,
    rows: u32,
    pass_index: u32,
    // bit 0: Iterate (a single pass may do), bit 1: last recorded pass, bit 2: check `kept`,
    // bit 3: Grams in f64 (the f64 decisions).
    flags: u32,
    eps: f32,
    one_pass: f32,
    tol: f32,
    keep: f32,
    pivot: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gram: array<acc_t>;
@group(0) @binding(2) var<storage, read_write> rinv: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>;

const WG: u32 = 256u;
const BIG: f32 = 3.0e38;

var<workgroup> m: array<acc_t, KK>;
var<workgroup> gm: array<acc_t, KK>;
var<workgroup> red_max: array<f32, WG>;
var<workgroup> red_min: array<f32, WG>;
var<workgroup> red_sum: array<f32, WG>;
var<workgroup> s_flag: u32;
var<workgroup> s_dev: f32;
var<workgroup> s_trace: f32;

// Whether x is NaN or infinite (bit test: comparisons may assume finite values).
fn bad(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

fn set_identity(base: u32, lid: u32) {
    let k = p.k;
    for (var e = lid; e < k * k; e += WG) {
        rinv[base + e] = select(0.0, 1.0, e / k == e % k);
    }
}

// Reduces red_max (max), red_min (min) and red_sum (sum) over the workgroup into index 0.
fn reduce3(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lid < s) {
            red_max[lid] = max(red_max[lid], red_max[lid + s]);
            red_min[lid] = min(red_min[lid], red_min[lid + s]);
            red_sum[lid] = red_sum[lid] + red_sum[lid + s];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let z = wid.y * nwg.x + wid.x;
    if (z >= p.count) {
        return;
    }
    let k = p.k;
    let base = z * k * k;
    let st = 4u * z;
    let f64_grams = (p.flags & 8u) != 0u;
    if (k > KMAX) {
        if (lid == 0u) {
            state[st] = 1u;
            state[st + 1u] = state[st + 1u] | 1u;
        }
        set_identity(base, lid);
        return;
    }

    if (lid == 0u) {
        if (p.pass_index == 0u) {
            state[st] = 0u;
        }
        s_flag = state[st];
    }
    let done = workgroupUniformLoad(&s_flag);
    if (done != 0u) {
        set_identity(base, lid);
        return;
    }

    // G into workgroup memory.
    for (var e = lid; e < k * k; e += WG) {
        gm[e] = gram[base + e];
    }
    workgroupBarrier();

    // max |G − I|, the smallest diagonal entry and the trace.
    var dev = 0.0;
    var dmin = BIG;
    var tr = 0.0;
    for (var e = lid; e < k * k; e += WG) {
        let i = e / k;
        let j = e % k;
        let g = f32(gm[e]);
        let d = abs(g - select(0.0, 1.0, i == j));
        dev = max(dev, select(d, BIG, bad(d)));
        if (i == j) {
            dmin = min(dmin, g);
            tr = tr + g;
        }
    }
    red_max[lid] = dev;
    red_min[lid] = dmin;
    red_sum[lid] = tr;
    reduce3(lid);
    if (lid == 0u) {
        s_dev = red_max[0];
        s_trace = red_sum[0];
        if (p.pass_index == 0u) {
            state[st + 2u] = bitcast<u32>(red_min[0]);
            if ((p.flags & 4u) != 0u && red_min[0] <= p.keep) {
                state[st + 1u] = state[st + 1u] | 4u;
            }
        }
    }
    dev = workgroupUniformLoad(&s_dev);
    let trace = workgroupUniformLoad(&s_trace);
    if (!f64_grams && dev < p.tol) {
        if (lid == 0u) {
            state[st] = 1u;
        }
        set_identity(base, lid);
        return;
    }
    let finishes = dev < 0.5;

    // Cholesky of G + shift·I: attempt 0 unshifted, then the shifted ones.
    var shift = acc_t(11.0) * acc_t(f32(p.rows * k + k * (k + 1u))) * acc_t(p.eps) * acc_t(trace);
    var ok = false;
    var shifted = false;
    for (var attempt = 0u; attempt < 5u; attempt++) {
        if (attempt > 0u && (bad(trace) || trace <= 0.0)) {
            break;
        }
        let s = select(acc_t(0.0), shift, attempt > 0u);
        for (var e = lid; e < k * k; e += WG) {
            m[e] = gm[e] + select(acc_t(0.0), s, e / k == e % k);
        }
        if (lid == 0u) {
            s_flag = 1u;
        }
        workgroupBarrier();
        for (var j = 0u; j < k; j++) {
            if (lid == 0u) {
                let pv = m[j * k + j];
                let gjj = gm[j * k + j] + s;
                if (pv > acc_t(0.0) && pv > gjj * acc_t(p.pivot) && !bad(f32(pv))) {
                    m[j * k + j] = sqrt(pv);
                } else {
                    s_flag = 0u;
                }
            }
            if (workgroupUniformLoad(&s_flag) == 0u) {
                break;
            }
            let d = m[j * k + j];
            for (var c = j + 1u + lid; c < k; c += WG) {
                m[j * k + c] = m[j * k + c] / d;
            }
            workgroupBarrier();
            let t = k - j - 1u;
            for (var e = lid; e < t * t; e += WG) {
                let a = j + 1u + e / t;
                let c = j + 1u + e % t;
                if (c >= a) {
                    m[a * k + c] = m[a * k + c] - m[j * k + a] * m[j * k + c];
                }
            }
            workgroupBarrier();
        }
        if (workgroupUniformLoad(&s_flag) == 1u) {
            ok = true;
            shifted = attempt > 0u;
            break;
        }
        if (attempt > 0u) {
            shift = shift * acc_t(100.0);
        }
    }
    if (!ok) {
        if (lid == 0u) {
            state[st] = 1u;
            state[st + 1u] = state[st + 1u] | 1u;
        }
        set_identity(base, lid);
        return;
    }

    // R⁻¹ by columns: thread c solves R x = e_c by back substitution, keeping x's strictly
    // upper part in row c of m's lower triangle.
    var rsq = 0.0;
    var xsq = 0.0;
    for (var c = lid; c < k; c += WG) {
        let dc = acc_t(1.0) / m[c * k + c];
        xsq = xsq + f32(dc * dc);
        for (var ii = 0u; ii < c; ii++) {
            let i = c - 1u - ii;
            var acc = m[i * k + c] * dc;
            for (var l = i + 1u; l < c; l++) {
                acc = acc + m[i * k + l] * m[c * k + l];
            }
            let x = -acc / m[i * k + i];
            m[c * k + i] = x;
            xsq = xsq + f32(x * x);
        }
        for (var i = 0u; i <= c; i++) {
            let r = f32(m[i * k + c]);
            rsq = rsq + r * r;
        }
    }
    workgroupBarrier();
    for (var e = lid; e < k * k; e += WG) {
        let i = e / k;
        let c = e % k;
        var v = 0.0;
        if (i == c) {
            v = f32(acc_t(1.0) / m[c * k + c]);
        } else if (i < c) {
            v = f32(m[c * k + i]);
        }
        rinv[base + e] = v;
    }
    red_max[lid] = 0.0;
    red_min[lid] = 0.0;
    red_sum[lid] = rsq;
    reduce3(lid);
    let rs = red_sum[0];
    workgroupBarrier();
    red_sum[lid] = xsq;
    reduce3(lid);
    let xs = red_sum[0];
    let cond = sqrt(rs) * sqrt(xs);
    // Only an unshifted factor may finish an iterate in one pass (as on the host).
    let single = p.pass_index == 0u && (p.flags & 1u) != 0u && !shifted && !bad(cond)
        && cond <= p.one_pass;
    let now_done = single || (f64_grams && finishes);
    if (lid == 0u) {
        if (now_done) {
            state[st] = 1u;
        } else if ((p.flags & 2u) != 0u) {
            state[st + 1u] = state[st + 1u] | 2u;
        }
    }
}
