// Out-of-place transpose of a batch of row blocks, through a 16 × 16 tile in workgroup memory
// (reads and writes both run along rows):
//   dst[dst_off + z·dst_stride + j·dst_ld + i] = src[src_off + z·src_stride + i·src_ld + j]
// for i < rows, j < cols, z < the dispatch's z. The randomized SVD uses it to store a tall
// matrix W (uploaded in blocks of its rows) as A = Wᵀ, its short side first: `src_off` picks
// the first column of W that a block of A's rows holds, `dst_off` the first row of W that the
// source block holds.
struct Params {
    rows: u32,
    cols: u32,
    src_ld: u32,
    src_stride: u32,
    src_off: u32,
    dst_ld: u32,
    dst_stride: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

var<workgroup> tile: array<array<f32, 17>, 16>;

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let i0 = wg.y * 16u;
    let j0 = wg.x * 16u;
    let i = i0 + lid.y;
    let j = j0 + lid.x;
    if (i < p.rows && j < p.cols) {
        tile[lid.y][lid.x] = src[p.src_off + wg.z * p.src_stride + i * p.src_ld + j];
    }
    workgroupBarrier();
    let jj = j0 + lid.y;
    let ii = i0 + lid.x;
    if (jj < p.cols && ii < p.rows) {
        dst[p.dst_off + wg.z * p.dst_stride + jj * p.dst_ld + ii] = tile[lid.x][lid.y];
    }
}
