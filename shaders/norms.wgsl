// Squared L2 norms of rows and columns, accumulated in f64 in the CPU's order (each sum runs
// sequentially over its row or column), so the result is bit-identical to the CPU backend's:
// the product of two f32 is exact in f64, so whether a driver fuses multiply and add does not
// change any rounding.
//
// `row_sq`: out[off_out + r] = Σ_j w[r, j]²  for the rows of this chunk.
// `col_sq`: out[j] += Σ_r w[r, j]²  (rows in order), continuing the running sums of previous
// row chunks, so a matrix split along rows gives the same bits as one pass.
struct Params {
    rows: u32,
    cols: u32,
    off: u32,
    off_out: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f64>;

@compute @workgroup_size(64, 1, 1)
fn row_sq(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = gid.y * nwg.x * 64u + gid.x;
    if (r >= p.rows) {
        return;
    }
    var s = f64(0.0);
    let base = p.off + r * p.cols;
    for (var j = 0u; j < p.cols; j++) {
        let x = f64(data[base + j]);
        s = s + x * x;
    }
    out[p.off_out + r] = s;
}

@compute @workgroup_size(64, 1, 1)
fn col_sq(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let j = gid.y * nwg.x * 64u + gid.x;
    if (j >= p.cols) {
        return;
    }
    var s = out[j];
    for (var r = 0u; r < p.rows; r++) {
        let x = f64(data[p.off + r * p.cols + j]);
        s = s + x * x;
    }
    out[j] = s;
}
