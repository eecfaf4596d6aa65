//! Product quantization of token tables: each row of a `V × D` table is cut into `D / width`
//! pieces of `width` columns, and each piece is replaced by the nearest of [`CENTROIDS`]
//! codewords of its column block, found by weighted k-means (rows weighted by how often the
//! calibration data reads them). The table is stored as one byte per piece (`V · D / width`
//! codes) plus the codebooks (`CENTROIDS · D` floats): at width 4 a quarter of the table's
//! parameters and a sixteenth of its bytes.
//!
//! Quantization approximates a table better than a low rank at the same parameter count
//! wherever the table has no dominant directions (token tables: measured on all-MiniLM-L6 in
//! docs/QUALITY.md). The engine weighs it against the plain and hot forms through
//! [`equivalent_points`] and stores whichever form approximates the table best within its
//! planned parameters.
//!
//! Deterministic: seeded k-means++ seeding per column block, Lloyd iterations in a fixed order,
//! block results independent of the threads that compute them.

use rayon::prelude::*;

use super::ComputeError;

/// Codewords per column block: codes are one byte.
pub const CENTROIDS: usize = 256;

/// The piece widths tried (those that divide `D`).
pub const WIDTHS: &[usize] = &[2, 3, 4, 6, 8];

/// Most Lloyd iterations per column block.
pub const MAX_ITERS: usize = 16;

/// Lloyd iterations stop once at most one point in `SETTLED` changes its codeword.
const SETTLED: usize = 1000;

/// Parameters the quantized form of a `v × d` table stores at `width` with `exact` rows made
/// exact: codes `v · d / width`, the block offsets `d / width`, the codebooks `k · d`
/// (`k = min(CENTROIDS, v)`), the output shape's last dimension (1), and the corrections —
/// an int32 row map of `v` entries and `exact + 1` rows of `d` (the last one zero) holding
/// `E[t] − Ê[t]` for the rows made exact.
pub fn pq_params(v: usize, d: usize, width: usize, exact: usize) -> u64 {
    let m = d / width.max(1);
    (v * m + m + CENTROIDS.min(v) * d + 1 + v + (exact + 1) * d) as u64
}

/// How a quantized table uses a parameter budget: the rows with the largest weighted error
/// made exact with what the codes and codebooks leave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// Rows made exact.
    pub exact: usize,
    /// The weighted squared error left.
    pub error: f64,
    /// Parameters stored ([`pq_params`]).
    pub params: u64,
}

/// A product-quantized table.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// Columns per piece.
    pub width: usize,
    /// Codewords per column block (`min(CENTROIDS, V)`).
    pub centroids: usize,
    /// `(D / width) · centroids` codewords of `width` floats, row-major: codeword `c` of
    /// block `s` is row `s · centroids + c`.
    pub codebook: Vec<f32>,
    /// `V × (D / width)` codes, row-major.
    pub codes: Vec<u8>,
    /// `Σₜ wₜ ‖Eₜ − Êₜ‖²`, the weighted squared error of the whole table.
    pub error: f64,
    /// Rows by weighted error, largest first (the lower index on ties).
    pub worst: Vec<u32>,
    /// `cut[j]`: the weighted error of the `j` first rows of `worst` (`v + 1` entries).
    pub cut: Vec<f64>,
}

impl Quantized {
    /// The best use of `budget` parameters for a `v × d` table: as many of the worst rows made
    /// exact as fit; `None` where the codes and codebooks alone do not fit.
    /// The form stays smaller than the table itself (what the rule requires).
    pub fn fit(&self, (v, d): (usize, usize), budget: u64) -> Option<Fit> {
        let base = pq_params(v, d, self.width, 0);
        let dense = (v * d) as u64;
        if budget < base || base >= dense {
            return None;
        }
        let room = budget.min(dense - 1) - base;
        let exact = ((room / d.max(1) as u64) as usize).min(v);
        Some(Fit {
            exact,
            error: (self.error - self.cut[exact]).max(0.0),
            params: pq_params(v, d, self.width, exact),
        })
    }

    /// Row `t` of the quantized table (`D` floats).
    pub fn row(&self, t: usize) -> Vec<f32> {
        let blocks = self.blocks();
        let mut out = Vec::with_capacity(blocks * self.width);
        for s in 0..blocks {
            let c = self.codes[t * blocks + s] as usize;
            let at = (s * self.centroids + c) * self.width;
            out.extend_from_slice(&self.codebook[at..at + self.width]);
        }
        out
    }

    /// Column blocks (`D / width`).
    pub fn blocks(&self) -> usize {
        self.codebook.len() / (self.centroids * self.width).max(1)
    }
}

/// Quantizes the `v × d` table `data` (row-major) at `width` with rows weighted by `weights`
/// (`v` non-negative values), minimising the weighted squared error block by block. Errors:
/// a `width` that does not divide `d`, data of the wrong length, non-finite values.
pub fn quantize(
    data: &[f32],
    (v, d): (usize, usize),
    weights: &[f64],
    width: usize,
    seed: u64,
) -> Result<Quantized, ComputeError> {
    super::hot::check(data, v, d)?;
    if width == 0 || d % width != 0 || weights.len() != v {
        return Err(ComputeError::Numerical {
            index: 0,
            reason: format!(
                "product quantization of a {v}×{d} table at width {width} with {} row weights",
                weights.len()
            ),
        });
    }
    if let Some(pos) = data.iter().position(|x| !x.is_finite()) {
        return Err(ComputeError::NonFinite {
            index: 0,
            row: pos / d,
            col: pos % d,
            value: data[pos],
        });
    }
    let k = CENTROIDS.min(v);
    let blocks = d / width;
    let w: Vec<f32> = weights.iter().map(|&x| x.max(0.0) as f32).collect();
    let done: Vec<Block> = (0..blocks)
        .into_par_iter()
        .map(|s| {
            let xs: Vec<f32> = data
                .chunks_exact(d)
                .flat_map(|row| row[s * width..(s + 1) * width].iter().copied())
                .collect();
            kmeans(
                &xs,
                width,
                &w,
                k,
                seed ^ (s as u64).wrapping_mul(0x9E37_79B9),
            )
        })
        .collect();
    let mut codebook = Vec::with_capacity(blocks * k * width);
    let mut codes = vec![0u8; v * blocks];
    let mut row_error = vec![0.0f64; v];
    for (s, b) in done.iter().enumerate() {
        codebook.extend_from_slice(&b.centroids);
        for (t, &a) in b.assign.iter().enumerate() {
            codes[t * blocks + s] = a as u8;
        }
        for (e, &be) in row_error.iter_mut().zip(&b.row_error) {
            *e += be;
        }
    }
    let error = row_error.iter().sum();
    let mut worst: Vec<u32> = (0..v as u32).collect();
    worst.sort_by(|&a, &b| {
        row_error[b as usize]
            .total_cmp(&row_error[a as usize])
            .then(a.cmp(&b))
    });
    let mut cut = Vec::with_capacity(v + 1);
    cut.push(0.0);
    let mut acc = 0.0;
    for &t in &worst {
        acc += row_error[t as usize];
        cut.push(acc);
    }
    Ok(Quantized {
        width,
        centroids: k,
        codebook,
        codes,
        error,
        worst,
        cut,
    })
}

/// The table quantized at each width of [`WIDTHS`] that divides `d` and whose codes and
/// codebooks store fewer parameters than the table: the forms the planner weighs (through
/// [`Quantized::fit`]) and the engine stores.
pub fn equivalent_points(
    data: &[f32],
    (v, d): (usize, usize),
    weights: &[f64],
    seed: u64,
) -> Result<Vec<Quantized>, ComputeError> {
    WIDTHS
        .iter()
        .filter(|&&w| d % w == 0 && pq_params(v, d, w, 0) < (v * d) as u64)
        .map(|&w| quantize(data, (v, d), weights, w, seed))
        .collect()
}

/// One column block's codewords (`k × width`), assignments and weighted error.
struct Block {
    centroids: Vec<f32>,
    assign: Vec<u16>,
    /// Each point's weighted squared error.
    row_error: Vec<f64>,
}

/// Weighted k-means of the `n = w.len()` points `xs` (`n × width`, row-major) into `k`
/// clusters: seeded by [`seed_codewords`], then Lloyd iterations until at most one point in
/// [`SETTLED`] changes its codeword (at most [`MAX_ITERS`]). An emptied cluster moves to the point that costs most.
fn kmeans(xs: &[f32], width: usize, w: &[f32], k: usize, seed: u64) -> Block {
    let n = w.len();
    let mut c = seed_codewords(xs, width, w, k, seed);
    let mut assign = vec![u16::MAX; n];
    let mut dist = vec![0.0f32; n];
    for iter in 0..=MAX_ITERS {
        let changed = assign_all(xs, width, &c, k, &mut assign, &mut dist);
        if changed <= n / SETTLED || iter == MAX_ITERS {
            break;
        }
        // Weighted means (f64 sums).
        let mut sum = vec![0.0f64; k * width];
        let mut mass = vec![0.0f64; k];
        for i in 0..n {
            let a = assign[i] as usize;
            let wi = w[i] as f64;
            mass[a] += wi;
            for l in 0..width {
                sum[a * width + l] += wi * xs[i * width + l] as f64;
            }
        }
        for j in 0..k {
            if mass[j] > 0.0 {
                for l in 0..width {
                    c[j * width + l] = (sum[j * width + l] / mass[j]) as f32;
                }
            } else {
                // An empty codeword takes the point that costs most (then costs nothing).
                let worst = (0..n)
                    .max_by(|&a, &b| {
                        (w[a] * dist[a])
                            .total_cmp(&(w[b] * dist[b]))
                            .then(b.cmp(&a))
                    })
                    .unwrap_or(0);
                c[j * width..(j + 1) * width]
                    .copy_from_slice(&xs[worst * width..(worst + 1) * width]);
                dist[worst] = 0.0;
            }
        }
    }
    let row_error = (0..n)
        .map(|i| {
            let a = assign[i] as usize;
            let e: f64 = (0..width)
                .map(|l| {
                    let diff = xs[i * width + l] as f64 - c[a * width + l] as f64;
                    diff * diff
                })
                .sum();
            w[i] as f64 * e
        })
        .collect();
    Block {
        centroids: c,
        assign,
        row_error,
    }
}

/// Codewords compared side by side in [`assign_all`]: four AVX-512 registers of `f32`.
const LANES: usize = 64;

/// Candidate points k-means++ seeds from, per codeword.
const SEED_CANDIDATES: usize = 8;

/// The first `k` codewords: k-means++ (each next codeword drawn by squared distance to those
/// before) over `SEED_CANDIDATES · k` points drawn by weight (systematic sampling, so that a
/// row of weight `w` appears about `w / mean` times): the weighted distribution's shape at a
/// fraction of a pass per codeword over every point.
fn seed_codewords(xs: &[f32], width: usize, w: &[f32], k: usize, seed: u64) -> Vec<f32> {
    let n = w.len();
    let total: f64 = w.iter().map(|&x| x as f64).sum();
    let want = (SEED_CANDIDATES * k).min(n.max(1) * SEED_CANDIDATES);
    let mut cand: Vec<usize> = Vec::with_capacity(want);
    if total > 0.0 {
        let step = total / want as f64;
        let mut next = super::rng::uniform(seed, 0, 1) * step;
        let mut acc = 0.0f64;
        for (i, &wi) in w.iter().enumerate() {
            acc += wi as f64;
            while next < acc && cand.len() < want {
                cand.push(i);
                next += step;
            }
        }
    }
    if cand.is_empty() {
        cand.extend(0..n.min(want));
    }
    let pt = |i: usize| &xs[i * width..(i + 1) * width];
    let mut c = Vec::with_capacity(k * width);
    let first = cand[(super::rng::uniform(seed, 0, 0) * cand.len() as f64) as usize % cand.len()];
    c.extend_from_slice(pt(first));
    let mut best = vec![f32::INFINITY; cand.len()];
    for j in 1..k {
        let prev = &c[(j - 1) * width..j * width];
        for (b, &i) in best.iter_mut().zip(&cand) {
            *b = b.min(sq_dist(pt(i), prev));
        }
        let sum: f64 = best.iter().map(|&b| b as f64).sum();
        let at = if sum > 0.0 {
            let mut goal = super::rng::uniform(seed, j as u64, 0) * sum;
            let mut at = cand.len() - 1;
            for (p, &b) in best.iter().enumerate() {
                goal -= b as f64;
                if goal < 0.0 {
                    at = p;
                    break;
                }
            }
            cand[at]
        } else {
            // Fewer distinct candidates than codewords: the rest repeat the first.
            first
        };
        c.extend_from_slice(pt(at));
    }
    c
}

fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Assigns every point to its nearest codeword (the lowest index on ties); returns how many
/// assignments changed and leaves each point's squared distance in `dist`. Compiled for the
/// widest vector unit the CPU has (the same arithmetic in every version: the results do not
/// depend on it).
fn assign_all(
    xs: &[f32],
    width: usize,
    c: &[f32],
    k: usize,
    assign: &mut [u16],
    dist: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { assign_avx512(xs, width, c, k, assign, dist) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { assign_avx2(xs, width, c, k, assign, dist) };
        }
    }
    assign_body(xs, width, c, k, assign, dist)
}

/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn assign_avx512(
    xs: &[f32],
    width: usize,
    c: &[f32],
    k: usize,
    assign: &mut [u16],
    dist: &mut [f32],
) -> usize {
    assign_body(xs, width, c, k, assign, dist)
}

/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn assign_avx2(
    xs: &[f32],
    width: usize,
    c: &[f32],
    k: usize,
    assign: &mut [u16],
    dist: &mut [f32],
) -> usize {
    assign_body(xs, width, c, k, assign, dist)
}

/// [`assign_all`]'s arithmetic, inlined into each CPU-specific version. Rust never fuses a
/// multiply and an add on its own (whatever the target features), so every version rounds
/// alike.
#[inline(always)]
fn assign_body(
    xs: &[f32],
    width: usize,
    c: &[f32],
    k: usize,
    assign: &mut [u16],
    dist: &mut [f32],
) -> usize {
    // Codewords column by column (width × k) and their squared norms: the distances to
    // [`LANES`] codewords of a point are then vector arithmetic, kept in registers.
    let mut ct = vec![0.0f32; width * k];
    for j in 0..k {
        for l in 0..width {
            ct[l * k + j] = c[j * width + l];
        }
    }
    let norms: Vec<f32> = (0..k)
        .map(|j| c[j * width..(j + 1) * width].iter().map(|x| x * x).sum())
        .collect();
    // Constant widths specialise the body below (it is inlined): its loops over a piece
    // unroll.
    match width {
        2 => assign_points(xs, 2, &ct, &norms, k, assign, dist),
        3 => assign_points(xs, 3, &ct, &norms, k, assign, dist),
        4 => assign_points(xs, 4, &ct, &norms, k, assign, dist),
        6 => assign_points(xs, 6, &ct, &norms, k, assign, dist),
        8 => assign_points(xs, 8, &ct, &norms, k, assign, dist),
        w => assign_points(xs, w, &ct, &norms, k, assign, dist),
    }
}

/// [`assign_body`] after the codewords are laid out: `ct` (`width × k`, column by column)
/// and their squared norms. Each point is compared with [`LANES`] codewords at a time
/// (`‖c‖² − 2 x·c`, the smallest per lane kept with strict `<`: the first on ties): several
/// vector registers whose addition chains are independent, so that their latency overlaps.
#[inline(always)]
fn assign_points(
    xs: &[f32],
    width: usize,
    ct: &[f32],
    norms: &[f32],
    k: usize,
    assign: &mut [u16],
    dist: &mut [f32],
) -> usize {
    let full = k - k % LANES;
    let mut changed = 0;
    for (i, x) in xs.chunks_exact(width).enumerate() {
        let mut bv = [f32::INFINITY; LANES];
        let mut bi = [0u32; LANES];
        let mut at: [u32; LANES] = std::array::from_fn(|t| t as u32);
        for j0 in (0..full).step_by(LANES) {
            let mut d = [0.0f32; LANES];
            d.copy_from_slice(&norms[j0..j0 + LANES]);
            for (l, &xl) in x.iter().enumerate() {
                let ml = -2.0 * xl;
                let col = &ct[l * k + j0..l * k + j0 + LANES];
                for t in 0..LANES {
                    d[t] += ml * col[t];
                }
            }
            // Selects as bit masks: the compiler keeps them in vector registers.
            for t in 0..LANES {
                let keep = (d[t] < bv[t]) as u32;
                let mask = keep.wrapping_neg();
                bv[t] = f32::from_bits((d[t].to_bits() & mask) | (bv[t].to_bits() & !mask));
                bi[t] = (at[t] & mask) | (bi[t] & !mask);
            }
            for a in at.iter_mut() {
                *a += LANES as u32;
            }
        }
        // Across the lanes: the smallest value, then the first codeword holding it, each by
        // halving (the values are finite or +∞: the inputs were checked).
        let mut m = bv;
        let mut half = LANES / 2;
        while half > 0 {
            for t in 0..half {
                m[t] = if m[t + half] < m[t] {
                    m[t + half]
                } else {
                    m[t]
                };
            }
            half /= 2;
        }
        let mut v = m[0];
        let mut first: [u32; LANES] =
            std::array::from_fn(|t| if bv[t] == v { bi[t] } else { u32::MAX });
        let mut half = LANES / 2;
        while half > 0 {
            for t in 0..half {
                first[t] = first[t].min(first[t + half]);
            }
            half /= 2;
        }
        let mut bj = first[0] as usize;
        // The codewords after the last whole group, one by one.
        for j in full..k {
            let mut d = norms[j];
            for (l, &xl) in x.iter().enumerate() {
                d += -2.0 * xl * ct[l * k + j];
            }
            if d < v {
                (bj, v) = (j, d);
            }
        }
        let xn: f32 = x.iter().map(|v| v * v).sum();
        dist[i] = (v + xn).max(0.0);
        if assign[i] as usize != bj {
            assign[i] = bj as u16;
            changed += 1;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: usize, d: usize) -> Vec<f32> {
        (0..v * d)
            .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect()
    }

    fn weighted_error(data: &[f32], q: &Quantized, d: usize, w: &[f64]) -> f64 {
        data.chunks_exact(d)
            .enumerate()
            .map(|(t, row)| {
                w[t] * row
                    .iter()
                    .zip(q.row(t))
                    .map(|(&a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn few_distinct_pieces_are_exact() {
        // 40 distinct rows repeated: every block has at most 40 distinct pieces < 256.
        let (v, d) = (1000, 12);
        let base = table(40, d);
        let data: Vec<f32> = (0..v)
            .flat_map(|t| base[(t % 40) * d..(t % 40 + 1) * d].to_vec())
            .collect();
        let w = vec![1.0; v];
        let q = quantize(&data, (v, d), &w, 4, 7).unwrap();
        assert_eq!(q.codes.len(), v * 3);
        assert!(q.error < 1e-9, "{}", q.error);
        assert!(weighted_error(&data, &q, d, &w) < 1e-9);
    }

    #[test]
    fn the_reported_error_is_the_stored_one_and_heavy_rows_cost_less() {
        let (v, d) = (3000, 8);
        let data = table(v, d);
        let mut w = vec![1.0; v];
        for t in (0..v).step_by(50) {
            w[t] = 500.0;
        }
        let q = quantize(&data, (v, d), &w, 4, 1).unwrap();
        let e = weighted_error(&data, &q, d, &w);
        assert!((q.error - e).abs() <= 1e-4 * e, "{} vs {e}", q.error);
        let row_err = |t: usize| -> f64 {
            data[t * d..(t + 1) * d]
                .iter()
                .zip(q.row(t))
                .map(|(&a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        let heavy: f64 = (0..v).step_by(50).map(row_err).sum::<f64>() / 60.0;
        let light: f64 = (0..v).filter(|t| t % 50 != 0).map(row_err).sum::<f64>() / 2940.0;
        assert!(heavy < 0.1 * light, "heavy {heavy} light {light}");
        // Deterministic, whatever the threads.
        let again = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| quantize(&data, (v, d), &w, 4, 1).unwrap());
        assert_eq!(q, again);
    }

    #[test]
    fn wider_pieces_store_less_and_err_more() {
        let (v, d) = (4000, 24);
        let data = table(v, d);
        let w = vec![1.0; v];
        let pts = equivalent_points(&data, (v, d), &w, 3).unwrap();
        let widths: Vec<usize> = pts.iter().map(|q| q.width).collect();
        assert_eq!(widths, vec![2, 3, 4, 6, 8]);
        for pair in pts.windows(2) {
            assert!(pair[1].error > pair[0].error);
        }
        assert_eq!(
            pq_params(v, d, 4, 10),
            (v * 6 + 6 + 256 * d + 1 + v + 11 * d) as u64
        );
        // A budget fills with exact rows, the worst first.
        let q = &pts[2];
        let base = pq_params(v, d, 4, 0);
        assert_eq!(q.fit((v, d), base - 1), None);
        let f = q.fit((v, d), base + 10 * d as u64 + 5).unwrap();
        assert_eq!((f.exact, f.params), (10, pq_params(v, d, 4, 10)));
        let worst10: f64 = q.worst[..10]
            .iter()
            .map(|&t| {
                data[t as usize * d..(t as usize + 1) * d]
                    .iter()
                    .zip(q.row(t as usize))
                    .map(|(&a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum();
        assert!((q.error - f.error - worst10).abs() <= 1e-6 * q.error);
        // However large the budget, the form stays smaller than the table.
        let most = q.fit((v, d), u64::MAX).unwrap();
        assert!(most.params < (v * d) as u64, "{most:?}");
        assert!(most.error < f.error);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(quantize(&[0.0; 12], (3, 4), &[1.0; 3], 3, 0).is_err());
        assert!(quantize(&[0.0; 11], (3, 4), &[1.0; 3], 2, 0).is_err());
        let mut d = vec![0.0; 12];
        d[5] = f32::NAN;
        assert!(matches!(
            quantize(&d, (3, 4), &[1.0; 3], 2, 0),
            Err(ComputeError::NonFinite { row: 1, col: 1, .. })
        ));
    }
}
