//! Data-aware low-rank factorization: the linear algebra around the backend's truncated SVD.
//!
//! A site computes `Y = X·W` (`X`: `T × K` activations, `W`: `K × N`). With the Gram
//! `G = XᵀX` of calibration activations, the output error of a replacement `Ŵ` is
//! `‖X(W − Ŵ)‖²_F = tr(ΔᵀGΔ) = ‖R·Δ‖²_F` where `G = RᵀR` (upper Cholesky factor). So the best
//! rank-`r` `Ŵ` for the outputs is `R⁻¹·[R·W]_r`: truncate the SVD of the *whitened* target
//! `M = R·W`, and its truncated singular values are exactly the output error (SVD-LLM's
//! truncation-aware whitening).
//!
//! The refit generalises it to a site whose input has already changed: the compressed model
//! feeds `X̂` where the original fed `X`, and the site should still give the original outputs
//! `X·W`. With `Ĝ = X̂ᵀX̂ = R̂ᵀR̂` and `C = X̂ᵀX`,
//! `‖XW − X̂Ŵ‖² = const + ‖R̂Ŵ − R̂⁻ᵀCW‖²`, so `Ŵ = R̂⁻¹·[R̂⁻ᵀ·C·W]_r` is the best rank-`r`
//! weight given the compressed model's inputs (layer-wise distillation in closed form; with
//! `X̂ = X` it is the whitening above).
//!
//! Grams are damped before factoring, `G + λ·mean(diag G)·I`, because calibration data never
//! spans every direction (dead channels, few tokens): `λ` bounds how much a direction unseen in
//! calibration may be sacrificed. Everything here is f64 and sequential (callers run sites in
//! parallel); only the SVD of `M` goes through a [`super::Backend`].

use faer::{Accum, MatMut, MatRef, Par};

use super::dense::{cholesky_upper, inv_upper, to_f64};

/// The damped Cholesky factor of a site's input Gram.
#[derive(Clone, Debug)]
pub struct Whitening {
    /// `K`.
    pub dim: usize,
    /// Upper `R` with `G + λ·mean(diag)·I = RᵀR`, row-major `K × K`.
    pub r: Vec<f64>,
    /// `R⁻¹`, upper, row-major.
    pub r_inv: Vec<f64>,
    /// The damping `λ` used (the requested one, raised tenfold until Cholesky succeeded).
    pub damp: f64,
}

/// Why a site could not be whitened.
#[derive(Debug, thiserror::Error)]
pub enum WhitenError {
    /// The Gram's size does not match the weight.
    #[error("the activation Gram is {gram}×{gram}, but the weight has {k} rows")]
    Dims {
        /// The Gram's dimension.
        gram: usize,
        /// The weight's rows.
        k: usize,
    },
    /// The Gram is zero, not finite, or not positive definite even when damped.
    #[error("the activation Gram is not usable ({0})")]
    Gram(String),
}

fn gemm(dst: &mut [f64], a: MatRef<'_, f64>, b: MatRef<'_, f64>) {
    let (m, n) = (a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(dst, m, n),
        Accum::Replace,
        a,
        b,
        1.0,
        Par::Seq,
    );
}

/// `left · right` (`left`: f64 `k × k`, `right`: f32 `k × n`) in f64, returned as f32.
fn times(left: MatRef<'_, f64>, right: &[f32], n: usize) -> Vec<f32> {
    let r64 = to_f64(right);
    let mut out = vec![0.0f64; left.nrows() * n];
    gemm(
        &mut out,
        left,
        MatRef::from_row_major_slice(&r64, left.ncols(), n),
    );
    out.into_iter().map(|x| x as f32).collect()
}

impl Whitening {
    /// Factors the damped Gram `g` (`k × k`, row-major, symmetric).
    pub fn new(g: &[f64], k: usize, damp: f64) -> Result<Whitening, WhitenError> {
        if g.len() != k * k || k == 0 {
            return Err(WhitenError::Dims {
                gram: (g.len() as f64).sqrt() as usize,
                k,
            });
        }
        let mean = (0..k).map(|i| g[i * k + i]).sum::<f64>() / k as f64;
        if !(mean.is_finite() && mean > 0.0) {
            return Err(WhitenError::Gram(format!("mean diagonal {mean}")));
        }
        let mut lambda = damp.max(1e-10);
        while lambda <= 1.0 {
            let mut d = g.to_vec();
            for i in 0..k {
                d[i * k + i] += lambda * mean;
            }
            if let Some(r) = cholesky_upper(&d, k) {
                let r_inv = inv_upper(&r, k);
                return Ok(Whitening {
                    dim: k,
                    r,
                    r_inv,
                    damp: lambda,
                });
            }
            lambda *= 10.0;
        }
        Err(WhitenError::Gram(
            "not positive definite even with damping 1".into(),
        ))
    }

    /// `M = R·W` (`W`: `K × n`, f32), the whitened target, as f32.
    pub fn target(&self, w: &[f32], n: usize) -> Vec<f32> {
        times(
            MatRef::from_row_major_slice(&self.r, self.dim, self.dim),
            w,
            n,
        )
    }

    /// `M = R⁻ᵀ·C·W` (this whitening is the compressed input's `R̂`; `cross` = `C = X̂ᵀX`).
    pub fn refit_target(&self, cross: &[f64], w: &[f32], n: usize) -> Vec<f32> {
        let k = self.dim;
        let w64 = to_f64(w);
        let mut cw = vec![0.0f64; k * n];
        gemm(
            &mut cw,
            MatRef::from_row_major_slice(cross, k, k),
            MatRef::from_row_major_slice(&w64, k, n),
        );
        let mut m = vec![0.0f64; k * n];
        gemm(
            &mut m,
            MatRef::from_row_major_slice(&self.r_inv, k, k).transpose(),
            MatRef::from_row_major_slice(&cw, k, n),
        );
        m.into_iter().map(|x| x as f32).collect()
    }

    /// `A = R⁻¹·Ã` for the left factor `Ã` (`K × r`, f32) of the whitened target.
    pub fn unwhiten(&self, a: &[f32], r: usize) -> Vec<f32> {
        times(
            MatRef::from_row_major_slice(&self.r_inv, self.dim, self.dim),
            a,
            r,
        )
    }
}

/// The relative output error `‖X·W − X̂·A·B‖_F / ‖X·W‖_F` on the calibration data, from the
/// statistics only: `g` = `XᵀX`, and for a refit `(hat, cross)` = (`X̂ᵀX̂`, `X̂ᵀX`) (without
/// them `X̂ = X`). `W`: `K × N`, `A`: `K × r`, `B`: `r × N` (f32), all row-major.
pub fn output_error(
    g: &[f64],
    paired: Option<(&[f64], &[f64])>,
    w: &[f32],
    a: &[f32],
    b: &[f32],
    (k, n, r): (usize, usize, usize),
) -> f64 {
    let w64 = to_f64(w);
    let a64 = to_f64(a);
    let b64 = to_f64(b);
    let mut what = vec![0.0f64; k * n];
    gemm(
        &mut what,
        MatRef::from_row_major_slice(&a64, k, r),
        MatRef::from_row_major_slice(&b64, r, n),
    );
    let sandwich = |gram: &[f64], x: &[f64], y: &[f64]| -> f64 {
        // tr(xᵀ·gram·y) = Σ (gram·y) ∘ x
        let mut gy = vec![0.0f64; k * n];
        gemm(
            &mut gy,
            MatRef::from_row_major_slice(gram, k, k),
            MatRef::from_row_major_slice(y, k, n),
        );
        gy.iter().zip(x).map(|(p, q)| p * q).sum()
    };
    let base = sandwich(g, &w64, &w64);
    let err2 = match paired {
        None => {
            let delta: Vec<f64> = w64.iter().zip(&what).map(|(p, q)| p - q).collect();
            sandwich(g, &delta, &delta)
        }
        Some((hat, cross)) => {
            base - 2.0 * sandwich(cross, &what, &w64) + sandwich(hat, &what, &what)
        }
    };
    if base > 0.0 {
        (err2.max(0.0) / base).sqrt()
    } else {
        0.0
    }
}

/// `(A', Z, cols)` of [`compact`].
pub type Compact = (Vec<f32>, Vec<f32>, Vec<usize>);

/// The compact form of a rank-`r` product `A·B` (`A`: `K × r`, `B`: `r × N`, f32 row-major):
/// `(A', Z, cols)` with `A·B = [A' | A'·Z]` with its columns put back in order by `cols`
/// (`(A·B)[:, j] = [A' | A'·Z][:, cols[j]]`), `A'`: `K × r`, `Z`: `r × (N − r)`. It stores
/// `r·(K + N − r)` numbers (plus `N` indices) instead of `r·(K + N)`: `r` columns of `B`, chosen
/// by QR with column pivoting (`B·P = Q·[R₁ R₂]`) so that `R₁` is well conditioned, become the
/// identity: `A' = A·Q·R₁`, `Z = R₁⁻¹·R₂`. Computed in f64. Errors if `B` is rank-deficient.
pub fn compact(a: &[f32], b: &[f32], (k, r, n): (usize, usize, usize)) -> Result<Compact, String> {
    if r == 0 || r >= n || a.len() != k * r || b.len() != r * n {
        return Err(format!(
            "compact form needs 0 < r < N and matching factors (K={k}, r={r}, N={n})"
        ));
    }
    let bm = faer::Mat::<f64>::from_fn(r, n, |i, j| b[i * n + j] as f64);
    let qr = bm.col_piv_qr();
    let (fwd, _) = qr.P().arrays();
    let rr = qr.thin_R(); // r × N, upper trapezoidal, in pivoted column order
    let q = qr.compute_thin_Q(); // r × r
    let d0 = rr[(0, 0)].abs();
    for j in 0..r {
        let d = rr[(j, j)].abs();
        if !(d.is_finite() && d > d0 * 1e-10) {
            return Err(format!(
                "the factor B is rank-deficient (pivot {j} of {r}: {d:e} against {d0:e})"
            ));
        }
    }
    let mut r1 = vec![0.0f64; r * r];
    for i in 0..r {
        for j in i..r {
            r1[i * r + j] = rr[(i, j)];
        }
    }
    let r1_inv = inv_upper(&r1, r);
    let m = n - r;
    let r2: Vec<f64> = (0..r)
        .flat_map(|i| (0..m).map(move |j| (i, j)))
        .map(|(i, j)| rr[(i, r + j)])
        .collect();
    let mut z = vec![0.0f64; r * m];
    gemm(
        &mut z,
        MatRef::from_row_major_slice(&r1_inv, r, r),
        MatRef::from_row_major_slice(&r2, r, m),
    );
    // Q·R₁ = B[:, J]; A' = A·B[:, J].
    let mut qr1 = vec![0.0f64; r * r];
    let qv: Vec<f64> = (0..r)
        .flat_map(|i| (0..r).map(move |j| (i, j)))
        .map(|(i, j)| q[(i, j)])
        .collect();
    gemm(
        &mut qr1,
        MatRef::from_row_major_slice(&qv, r, r),
        MatRef::from_row_major_slice(&r1, r, r),
    );
    let a64 = to_f64(a);
    let mut a2 = vec![0.0f64; k * r];
    gemm(
        &mut a2,
        MatRef::from_row_major_slice(&a64, k, r),
        MatRef::from_row_major_slice(&qr1, r, r),
    );
    // Position c of [A' | A'·Z] holds original column fwd[c].
    let mut cols = vec![0usize; n];
    for (c, &j) in fwd.iter().enumerate() {
        cols[j] = c;
    }
    Ok((
        a2.into_iter().map(|x| x as f32).collect(),
        z.into_iter().map(|x| x as f32).collect(),
        cols,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::{Backend, Cpu, MatrixRef, SvdOptions};

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// `X` with columns of very different scales, `W` random: the whitened factorization has a
    /// smaller output error than the plain one, and its predicted error is the measured one.
    #[test]
    fn whitening_beats_plain_on_outputs_and_predicts_its_error() {
        let (t, k, n, r) = (400, 24, 16, 6);
        let mut x = lcg(1, t * k);
        for row in x.chunks_mut(k) {
            for (j, v) in row.iter_mut().enumerate() {
                *v *= 1.0 + 10.0 * (j % 3 == 0) as u8 as f32;
            }
        }
        let w = lcg(2, k * n);
        let mut g = vec![0.0f64; k * k];
        for row in x.chunks(k) {
            for i in 0..k {
                for j in 0..k {
                    g[i * k + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
        let measure = |a: &[f32], b: &[f32]| -> f64 {
            let (mut e, mut base) = (0.0f64, 0.0f64);
            for row in x.chunks(k) {
                for c in 0..n {
                    let y: f64 = (0..k).map(|i| row[i] as f64 * w[i * n + c] as f64).sum();
                    let z: f64 = (0..k)
                        .map(|i| {
                            row[i] as f64
                                * (0..r)
                                    .map(|p| a[i * r + p] as f64 * b[p * n + c] as f64)
                                    .sum::<f64>()
                        })
                        .sum();
                    e += (y - z) * (y - z);
                    base += y * y;
                }
            }
            (e / base).sqrt()
        };
        let opts = SvdOptions::default();
        let plain = Cpu
            .lowrank(&[MatrixRef::new(k, n, &w).unwrap()], r, &opts)
            .unwrap();
        let (pa, pb) = plain[0].balanced();
        let wh = Whitening::new(&g, k, 1e-9).unwrap();
        let m = wh.target(&w, n);
        let f = Cpu
            .lowrank(&[MatrixRef::new(k, n, &m).unwrap()], r, &opts)
            .unwrap();
        let (ta, tb) = f[0].balanced();
        let a = wh.unwhiten(ta.data(), r);
        let e_plain = measure(pa.data(), pb.data());
        let e_white = measure(&a, tb.data());
        assert!(e_white < 0.8 * e_plain, "{e_white} vs {e_plain}");
        let predicted = output_error(&g, None, &w, &a, tb.data(), (k, n, r));
        assert!(
            (predicted - e_white).abs() < 1e-4,
            "{predicted} vs {e_white}"
        );
        // Through the refit with X̂ = X (hat = cross = G): the same factors and error.
        let m2 = wh.refit_target(&g, &w, n);
        let diff = m
            .iter()
            .zip(&m2)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "{diff}");
        let e2 = output_error(&g, Some((&g, &g)), &w, &a, tb.data(), (k, n, r));
        assert!((e2 - e_white).abs() < 1e-4, "{e2} vs {e_white}");
    }

    /// The compact form reproduces A·B, and stores r·(K + N − r) numbers.
    #[test]
    fn compact_form_is_the_same_product() {
        let (k, r, n) = (20, 5, 13);
        let a = lcg(3, k * r);
        let b = lcg(4, r * n);
        let (a2, z, cols) = compact(&a, &b, (k, r, n)).unwrap();
        assert_eq!(a2.len() + z.len(), r * (k + n - r));
        let mut seen = cols.clone();
        seen.sort();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        for i in 0..k {
            let cat: Vec<f64> = (0..n)
                .map(|c| {
                    if c < r {
                        a2[i * r + c] as f64
                    } else {
                        (0..r)
                            .map(|p| a2[i * r + p] as f64 * z[p * (n - r) + c - r] as f64)
                            .sum()
                    }
                })
                .collect();
            for j in 0..n {
                let want: f64 = (0..r)
                    .map(|p| a[i * r + p] as f64 * b[p * n + j] as f64)
                    .sum();
                assert!((cat[cols[j]] - want).abs() < 1e-5, "{i},{j}");
            }
        }
        // A rank-deficient B is an error, not garbage.
        let mut bad = b.clone();
        for j in 0..n {
            bad[n + j] = bad[j];
        }
        assert!(compact(&a, &bad, (k, r, n)).is_err());
    }

    #[test]
    fn bad_grams_are_errors() {
        assert!(matches!(
            Whitening::new(&[0.0; 4], 2, 1e-3),
            Err(WhitenError::Gram(_))
        ));
        assert!(matches!(
            Whitening::new(&[1.0; 3], 2, 1e-3),
            Err(WhitenError::Dims { .. })
        ));
        // Rank-deficient: damping makes it usable.
        let wh = Whitening::new(&[1.0, 1.0, 1.0, 1.0], 2, 1e-6).unwrap();
        assert!(wh.damp >= 1e-6);
    }
}
