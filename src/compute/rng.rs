//! A counter-based Gaussian generator: element `(row, col)` of a sketch is a pure function of
//! `(seed, col, row)`, so sketches are identical whatever the order or threads that fill them,
//! and column `j` does not depend on how many columns there are.
//!
//! Public for tests and benchmarks that need reproducible random matrices
//! (`examples/bench_gpu.rs`); the randomized SVD draws its sketch Ω from it.

/// SplitMix64's finaliser: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample for `(seed, col, row)` (Box–Muller on two hashed uniforms).
pub fn normal(seed: u64, col: u64, row: u64) -> f64 {
    let key = mix(mix(seed) ^ col.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let h1 = mix(key ^ row.wrapping_mul(2));
    let h2 = mix(key ^ row.wrapping_mul(2).wrapping_add(1));
    // u1 in (0, 1], u2 in [0, 1).
    let u1 = ((h1 >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
    let u2 = (h2 >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A uniform sample in `[0, 1)` for `(seed, a, b)`: a pure function of its arguments.
pub fn uniform(seed: u64, a: u64, b: u64) -> f64 {
    let h = mix(mix(seed ^ 0x5851_F42D_4C95_7F2D) ^ a.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ mix(b));
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A `rows × cols` Gaussian matrix, row-major `f32`: element `(i, j)` is `normal(seed, j, i)`
/// (filled in parallel; the values do not depend on the threads).
pub fn gaussian_f32(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0.0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
        for (j, x) in row.iter_mut().enumerate() {
            *x = normal(seed, j as u64, i as u64) as f32;
        }
    });
    out
}

/// As [`gaussian_f32`], in `f64`.
#[cfg(test)]
pub(crate) fn gaussian_f64(seed: u64, rows: usize, cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            out.push(normal(seed, j as u64, i as u64));
        }
    }
    out
}
