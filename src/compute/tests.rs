//! Tests of the CPU backend's numerics, determinism, masks and errors.

use super::rng::{gaussian_f32, gaussian_f64};
use super::*;

/// A random `rows × p` matrix with orthonormal columns, row-major: Cholesky-QR2 in `f64` of a
/// Gaussian matrix, which is well conditioned (κ ≈ (√rows + √p)/(√rows − √p)), so the result
/// is orthonormal to `f64` rounding (checked).
fn random_orthonormal(seed: u64, rows: usize, p: usize) -> Vec<f64> {
    let q = orth_f64(&gaussian_f64(seed, rows, p), rows, p);
    let g = super::dense::gram(&q, rows, p);
    for i in 0..p {
        for j in 0..p {
            let e = if i == j { 1.0 } else { 0.0 };
            assert!((g[i * p + j] - e).abs() < 1e-12);
        }
    }
    q
}

/// Cholesky-QR2 in `f64` (the test's own, on `f64` input).
fn orth_f64(y: &[f64], m: usize, k: usize) -> Vec<f64> {
    let mut q = y.to_vec();
    for _ in 0..2 {
        let g = super::dense::gram(&q, m, k);
        let r = super::dense::cholesky_upper(&g, k).unwrap();
        let ri = super::dense::inv_upper(&r, k);
        q = super::dense::mul_rows(
            faer::MatRef::from_row_major_slice(&q, m, k),
            faer::MatRef::from_row_major_slice(&ri, k, k),
        );
    }
    q
}

/// `U · diag(sigma) · Vᵀ` (`m × n`, `f64` products) cast to `f32`.
fn with_spectrum(seed: u64, m: usize, n: usize, sigma: &[f64]) -> Matrix {
    let p = sigma.len();
    let mut us = random_orthonormal(seed, m, p);
    let v = random_orthonormal(seed.wrapping_add(1), n, p);
    for row in us.chunks_mut(p) {
        for (x, s) in row.iter_mut().zip(sigma) {
            *x *= s;
        }
    }
    let w = super::dense::mul_rows(
        faer::MatRef::from_row_major_slice(&us, m, p),
        faer::MatRef::from_row_major_slice(&v, n, p).transpose(),
    );
    Matrix::new(m, n, w.iter().map(|&x| x as f32).collect()).unwrap()
}

/// `‖W − u·diag(s)·vt‖_F / ‖W‖_F`, product by the backend's GEMM, differences in `f64`.
fn rel_error(w: MatrixRef<'_>, f: &Factors) -> f64 {
    let (a, b) = f.balanced();
    let approx = Cpu.gemm(a.view(), b.view(), false, false).unwrap();
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in w.data().iter().zip(approx.data()) {
        num += (x as f64 - y as f64).powi(2);
        den += (x as f64).powi(2);
    }
    (num / den).sqrt()
}

/// `max |MᵀM − I|` over the first `r` columns of `u` (row-major; also used by the GPU tests).
pub(super) fn orthonormality(u: &Matrix, r: usize) -> f64 {
    let g = Cpu.gemm(u.view(), u.view(), true, false).unwrap();
    let mut dev = 0.0f64;
    for i in 0..r {
        for j in 0..r {
            let e = if i == j { 1.0 } else { 0.0 };
            dev = dev.max((g.get(i, j).unwrap() as f64 - e).abs());
        }
    }
    dev
}

fn geometric(p: usize, ratio: f64) -> Vec<f64> {
    (0..p).map(|i| ratio.powi(i as i32)).collect()
}

/// Embedding-table shape in f32: a 30000 × 256 matrix with a geometric spectrum, where an f32
/// Householder QR of the sketch loses rank. Rank-64 factors must be near-optimal and the
/// singular values accurate.
#[test]
fn tall_f32_matrix_with_decaying_spectrum() {
    let (m, n, r) = (30_000, 256, 64);
    // σᵢ = 0.9ⁱ: σ₆₃/σ₀ ≈ 1.3e-3, the tail falls below f32 resolution.
    let sigma = geometric(n, 0.9);
    let w = with_spectrum(7, m, n, &sigma);
    let f = Cpu
        .lowrank(&[w.view()], r, &SvdOptions::default())
        .unwrap()
        .remove(0);
    assert_eq!((f.u.shape(), f.s.len(), f.vt.shape()), ((m, r), r, (r, n)));
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let tail: f64 = sigma[r..].iter().map(|s| s * s).sum();
    let optimal = (tail / total).sqrt();
    let err = rel_error(w.view(), &f);
    let worst_sigma =
        f.s.iter()
            .zip(&sigma)
            .map(|(&s, &t)| (s as f64 - t).abs() / t)
            .fold(0.0f64, f64::max);
    eprintln!(
        "30000×256 rank 64: error {err:.6e}, optimal {optimal:.6e} (ratio {:.5}), \
         worst σ relative error {worst_sigma:.2e}",
        err / optimal
    );
    assert!(err <= 1.05 * optimal, "error {err} vs optimal {optimal}");
    for (i, (&s, &t)) in f.s.iter().zip(&sigma).enumerate() {
        let rel = (s as f64 - t).abs() / t;
        assert!(rel <= 1e-3, "σ{i}: {s} vs {t} (relative {rel})");
    }
    for w in f.s.windows(2) {
        assert!(w[0] >= w[1]);
    }
    assert!(
        orthonormality(&f.u, f.rank()) < 1e-4,
        "{}",
        orthonormality(&f.u, f.rank())
    );
    assert!(orthonormality(&f.vt.transpose(), f.rank()) < 1e-4);
}

/// Randomized rank-64 factors with two power iterations are within 2% of the exact truncated
/// SVD's error on a 512 × 768 matrix with a decaying spectrum.
#[test]
fn randomized_close_to_exact() {
    let sigma: Vec<f64> = (0..512).map(|i| (-(i as f64) / 60.0).exp()).collect();
    let w = with_spectrum(11, 512, 768, &sigma);
    let opts = SvdOptions::default();
    let rand = Cpu.lowrank(&[w.view()], 64, &opts).unwrap().remove(0);
    let exact = Cpu.svd_exact(w.view(), 64).unwrap();
    let (er, ee) = (rel_error(w.view(), &rand), rel_error(w.view(), &exact));
    eprintln!(
        "512×768 rank 64: randomized {er:.6e}, exact {ee:.6e}, ratio {:.5}",
        er / ee
    );
    assert!(er <= 1.02 * ee, "randomized {er} vs exact {ee}");
    for (i, (&a, &b)) in rand.s.iter().zip(&exact.s).enumerate().take(32) {
        assert!((a - b).abs() <= 1e-3 * b, "σ{i}: {a} vs {b}");
    }
    // The spectrum agrees with the exact singular values.
    let spec = Cpu.spectrum(&[w.view()], 32).unwrap().remove(0);
    for (i, (&a, &b)) in spec.iter().zip(&exact.s).enumerate() {
        assert!((a - b).abs() <= 5e-3 * b, "spectrum σ{i}: {a} vs {b}");
    }
}

/// `SvdMethod::Randomized` takes the Krylov route where Auto takes the Gram path, with blocks of
/// at most `MAX_RANDOMIZED_BLOCK` columns; small matrices stay exact, and ranks whose capped
/// basis would be narrower than the sketch keep Auto's route.
#[test]
fn randomized_method_routes() {
    let auto = SvdOptions::default();
    let rand = SvdOptions {
        method: SvdMethod::Randomized,
        ..SvdOptions::default()
    };
    assert_eq!(auto.lowrank_route((768, 3072), 256), LowrankRoute::Gram);
    assert_eq!(
        rand.lowrank_route((768, 3072), 256),
        LowrankRoute::Sketch(KrylovShape {
            block: 58,
            depth: 8
        })
    );
    // Rank 64: already narrow blocks, the same route either way.
    assert_eq!(
        rand.lowrank_route((3072, 768), 64),
        auto.lowrank_route((3072, 768), 64)
    );
    assert_eq!(rand.lowrank_route((100, 1000), 60), LowrankRoute::Exact);
    // 700 × 900: a basis of 2r + 10 columns up to ¾ of 700 (rank 257), Auto's route above.
    assert!(matches!(
        rand.lowrank_route((700, 900), 257),
        LowrankRoute::Sketch(k) if k.block <= MAX_RANDOMIZED_BLOCK && k.width() >= 524
    ));
    assert_eq!(rand.lowrank_route((700, 900), 258), LowrankRoute::Gram);
    assert_eq!(rand.lowrank_route((700, 900), 685), LowrankRoute::Gram);
    assert_eq!(
        KrylovShape::capped(256, 10, 4, 768, 64),
        KrylovShape {
            block: 58,
            depth: 8
        }
    );
    assert_eq!(
        KrylovShape::capped(20, 10, 4, 768, 64),
        KrylovShape::new(20, 10, 4, 768)
    );
    assert_eq!("randomized".parse::<SvdMethod>(), Ok(SvdMethod::Randomized));
    assert!("fast"
        .parse::<SvdMethod>()
        .unwrap_err()
        .contains("auto or randomized"));
}

/// At a rank where Auto is exact (the Gram path), the randomized method's error is a little
/// above the optimum and exactly what its singular values say (`‖W‖² − Σσ²`: the factors are
/// `Q·B_r` with `Q` orthonormal), with accurate leading singular values, orthonormal factors
/// and the same bits every time.
#[test]
fn randomized_method_near_exact_at_high_rank() {
    let sigma: Vec<f64> = (0..500).map(|i| (-(i as f64) / 250.0).exp()).collect();
    let w = with_spectrum(21, 500, 900, &sigma);
    let rank = 160;
    let rand = SvdOptions {
        method: SvdMethod::Randomized,
        ..SvdOptions::default()
    };
    let auto = SvdOptions::default();
    assert_eq!(auto.lowrank_route((500, 900), rank), LowrankRoute::Gram);
    // 2r + p = 330 columns: six blocks of 55 (five of 66 without the cap).
    assert_eq!(
        rand.lowrank_route((500, 900), rank),
        LowrankRoute::Sketch(KrylovShape {
            block: 55,
            depth: 5
        })
    );
    let f = Cpu.lowrank(&[w.view()], rank, &rand).unwrap().remove(0);
    let g = Cpu.lowrank(&[w.view()], rank, &auto).unwrap().remove(0);
    assert_eq!(f.rank(), rank);
    let (er, eg) = (rel_error(w.view(), &f), rel_error(w.view(), &g));
    let total: f64 = w.data().iter().map(|&x| x as f64 * x as f64).sum();
    let kept: f64 = f.s.iter().map(|&x| x as f64 * x as f64).sum();
    let claimed = (1.0 - kept / total).max(0.0).sqrt();
    eprintln!("500×900 rank {rank}: randomized {er:.6e} (claimed {claimed:.6e}), Gram {eg:.6e}");
    assert!(
        er >= eg * (1.0 - 1e-4) && er <= 1.03 * eg,
        "randomized {er} vs exact {eg}"
    );
    assert!(
        (er - claimed).abs() <= 1e-4 * er,
        "measured {er} vs claimed {claimed}"
    );
    for (i, (&a, &b)) in f.s.iter().zip(&g.s).enumerate().take(50) {
        assert!((a - b).abs() <= 1e-3 * b, "σ{i}: {a} vs {b}");
    }
    assert!(orthonormality(&f.u, rank) < 1e-4);
    assert!(orthonormality(&f.vt.transpose(), rank) < 1e-4);
    assert_eq!(f, Cpu.lowrank(&[w.view()], rank, &rand).unwrap().remove(0));
}

/// Same seed → bit-identical factors, spectra and products on 1 thread and on 4.
#[test]
fn deterministic_across_thread_counts() {
    let sigma: Vec<f64> = (0..300).map(|i| 1.0 / (1.0 + i as f64)).collect();
    let batch: Vec<Matrix> = (0..3)
        .map(|s| with_spectrum(100 + s, 5000, 300, &sigma))
        .collect();
    let views: Vec<MatrixRef<'_>> = batch.iter().map(Matrix::view).collect();
    let opts = SvdOptions {
        seed: 42,
        ..SvdOptions::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let f = Cpu.lowrank(&views, 40, &opts).unwrap();
            let s = Cpu.spectrum_with(&views, 20, &opts).unwrap();
            let g = Cpu.gemm(views[0], views[1], true, false).unwrap();
            (f, s, g)
        })
    };
    let (f1, s1, g1) = run(1);
    let (f4, s4, g4) = run(4);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (a, b) in f1.iter().zip(&f4) {
        assert_eq!(bits(a.u.data()), bits(b.u.data()));
        assert_eq!(bits(&a.s), bits(&b.s));
        assert_eq!(bits(a.vt.data()), bits(b.vt.data()));
    }
    for (a, b) in s1.iter().zip(&s4) {
        assert_eq!(bits(a), bits(b));
    }
    assert_eq!(bits(g1.data()), bits(g4.data()));
    // A different seed gives a different (but still good) sketch.
    let other = Cpu
        .lowrank(&views[..1], 40, &SvdOptions { seed: 43, ..opts })
        .unwrap();
    assert_ne!(bits(other[0].u.data()), bits(f1[0].u.data()));
    // Batch position does not matter: one matrix alone gives the same factors.
    assert_eq!(bits(f1[2].u.data()), {
        let alone = Cpu.lowrank(&views[2..], 40, &opts).unwrap();
        bits(alone[0].u.data())
    });
}

/// Small matrices take the exact path; it matches `svd_exact`.
#[test]
fn small_matrices_are_exact() {
    let w = Matrix::new(40, 70, gaussian_f32(3, 40, 70)).unwrap();
    let a = Cpu
        .lowrank(&[w.view()], 10, &SvdOptions::default())
        .unwrap()
        .remove(0);
    let b = Cpu.svd_exact(w.view(), 10).unwrap();
    assert_eq!(a, b);
    let spec = Cpu.spectrum(&[w.view()], 100).unwrap().remove(0);
    assert_eq!(spec.len(), 40);
    for (x, y) in spec.iter().zip(&b.s) {
        assert!((x - y).abs() <= 1e-5 * y);
    }
}

/// Rank-deficient inputs (zero, rank 2) still give orthonormal factors and no error.
#[test]
fn rank_deficient_inputs() {
    let (m, n) = (600, 300);
    let zero = Matrix::zeros(m, n);
    let x = gaussian_f32(5, m, 2);
    let y = gaussian_f32(6, 2, n);
    let low = Matrix::from_fn(m, n, |i, j| x[i * 2] * y[j] + x[i * 2 + 1] * y[n + j]).unwrap();
    for w in [&zero, &low] {
        let f = Cpu
            .lowrank(&[w.view()], 20, &SvdOptions::default())
            .unwrap()
            .remove(0);
        assert!(f.s.iter().all(|s| s.is_finite()));
        assert!(f.s[2..].iter().all(|&s| s <= 1e-4 * f.s[0].max(1.0)));
        assert!(orthonormality(&f.vt.transpose(), f.rank()) < 1e-4);
        if w == &low {
            assert!(
                orthonormality(&f.u, f.rank()) < 1e-4,
                "{}",
                orthonormality(&f.u, f.rank())
            );
            assert!(rel_error(w.view(), &f) < 1e-5);
        }
    }
}

#[test]
fn gemm_matches_naive_in_all_transpositions() {
    let a = Matrix::new(37, 300, gaussian_f32(1, 37, 300)).unwrap();
    let b = Matrix::new(300, 19, gaussian_f32(2, 300, 19)).unwrap();
    let naive = |a: &Matrix, b: &Matrix| {
        Matrix::from_fn(a.rows(), b.cols(), |i, j| {
            (0..a.cols())
                .map(|l| a.get(i, l).unwrap() as f64 * b.get(l, j).unwrap() as f64)
                .sum::<f64>() as f32
        })
        .unwrap()
    };
    let want = naive(&a, &b);
    let (at, bt) = (a.transpose(), b.transpose());
    for (x, y, ta, tb) in [
        (&a, &b, false, false),
        (&at, &b, true, false),
        (&a, &bt, false, true),
        (&at, &bt, true, true),
    ] {
        let got = Cpu.gemm(x.view(), y.view(), ta, tb).unwrap();
        assert_eq!(got.shape(), (37, 19));
        for (g, w) in got.data().iter().zip(want.data()) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()));
        }
    }
    assert!(matches!(
        Cpu.gemm(a.view(), a.view(), false, false),
        Err(ComputeError::ShapeMismatch { .. })
    ));
}

#[test]
fn errors_name_the_problem() {
    let a = Matrix::new(300, 200, gaussian_f32(1, 300, 200)).unwrap();
    let mut bad = a.clone();
    bad.data_mut()[5 * 200 + 7] = f32::NAN;
    let other = Matrix::zeros(200, 300);
    let o = SvdOptions::default();
    match Cpu.lowrank(&[a.view(), bad.view()], 8, &o) {
        Err(ComputeError::NonFinite {
            index: 1,
            row: 5,
            col: 7,
            ..
        }) => {}
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        Cpu.lowrank(&[a.view(), other.view()], 8, &o),
        Err(ComputeError::ShapeMismatch { index: 1, .. })
    ));
    for rank in [0, 201] {
        assert!(matches!(
            Cpu.lowrank(&[a.view()], rank, &o),
            Err(ComputeError::InvalidRank { .. })
        ));
        assert!(matches!(
            Cpu.svd_exact(a.view(), rank),
            Err(ComputeError::InvalidRank { .. })
        ));
    }
    assert!(Cpu.lowrank(&[], 8, &o).unwrap().is_empty());
    assert!(matches!(
        MatrixRef::new(3, 3, &[0.0; 8]),
        Err(ComputeError::DataLength { .. })
    ));
    assert!(matches!(
        Cpu.magnitude_mask(a.view(), 1.5, MaskPattern::Unstructured),
        Err(ComputeError::InvalidSparsity(_))
    ));
    assert!(matches!(
        Cpu.magnitude_mask(a.view(), 0.5, MaskPattern::NM { n: 3, m: 2 }),
        Err(ComputeError::InvalidPattern(_))
    ));
    assert!(matches!(
        Cpu.global_threshold(&[a.view(), bad.view()], 0.5),
        Err(ComputeError::NonFinite { index: 1, .. })
    ));
}

/// Exact counts for every sparsity, ties broken by index.
#[test]
fn unstructured_mask_counts_and_ties() {
    // Heavy ties: values in {-2, -1, 0, 1, 2}.
    let w = Matrix::from_fn(31, 17, |i, j| ((i * 7 + j * 3) % 5) as f32 - 2.0).unwrap();
    let total = 31 * 17;
    for s in [0.0f32, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0] {
        let r = Cpu
            .magnitude_mask(w.view(), s, MaskPattern::Unstructured)
            .unwrap();
        let want = total - ((s as f64) * total as f64).round() as usize;
        assert_eq!(r.kept, want, "sparsity {s}");
        assert_eq!(r.mask.iter().filter(|&&k| k).count(), want);
        // Every kept magnitude ≥ every removed one; among equal magnitudes at the boundary,
        // the kept ones come first in row-major order.
        let mags: Vec<f32> = w.data().iter().map(|x| x.abs()).collect();
        let min_kept = (0..total)
            .filter(|&e| r.mask[e])
            .map(|e| mags[e])
            .fold(f32::INFINITY, f32::min);
        for e in 0..total {
            if !r.mask[e] {
                assert!(mags[e] <= min_kept);
                if mags[e] == min_kept {
                    assert!((e + 1..total).all(|p| mags[p] != min_kept || !r.mask[p]));
                }
            }
        }
        for e in 0..total {
            let x = if r.mask[e] { w.data()[e] } else { 0.0 };
            assert_eq!(r.masked.data()[e], x);
        }
    }
    // All equal: the first `keep` elements in row-major order stay.
    let ones = Matrix::new(4, 5, vec![1.0; 20]).unwrap();
    let r = Cpu
        .magnitude_mask(ones.view(), 0.5, MaskPattern::Unstructured)
        .unwrap();
    assert_eq!(r.mask, (0..20).map(|e| e < 10).collect::<Vec<_>>());
}

#[test]
fn nm_mask_is_valid() {
    let (rows, cols) = (30, 9); // 30 = 7 groups of 4 + a partial group of 2
    let w = Matrix::new(rows, cols, gaussian_f32(9, rows, cols)).unwrap();
    let r = Cpu
        .magnitude_mask(w.view(), 0.0, MaskPattern::NM { n: 2, m: 4 })
        .unwrap();
    assert_eq!(r.kept, cols * (7 * 2 + 2));
    for j in 0..cols {
        for g0 in (0..rows).step_by(4) {
            let group: Vec<usize> = (g0..(g0 + 4).min(rows)).collect();
            let kept: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| r.mask[i * cols + j])
                .collect();
            assert_eq!(kept.len(), 2.min(group.len()));
            let min_kept = kept
                .iter()
                .map(|&i| w.get(i, j).unwrap().abs())
                .fold(f32::INFINITY, f32::min);
            for &i in &group {
                if !r.mask[i * cols + j] {
                    assert!(w.get(i, j).unwrap().abs() <= min_kept);
                }
            }
        }
    }
    // Ties: all equal keeps the first n rows of each group.
    let ones = Matrix::new(8, 2, vec![-1.0; 16]).unwrap();
    let r = Cpu
        .magnitude_mask(ones.view(), 0.0, MaskPattern::NM { n: 1, m: 4 })
        .unwrap();
    let kept: Vec<usize> = (0..16).filter(|&e| r.mask[e]).collect();
    assert_eq!(kept, vec![0, 1, 8, 9]);
}

#[test]
fn row_and_col_masks() {
    // Row i has norm proportional to (i % 5) + 1; ties broken by index.
    let w = Matrix::from_fn(10, 6, |i, _| ((i % 5) + 1) as f32).unwrap();
    let r = Cpu
        .magnitude_mask(w.view(), 0.3, MaskPattern::Rows)
        .unwrap();
    // Three rows go: both norm-1 rows (0 and 5) and the higher-index norm-2 row (6).
    let gone: Vec<usize> = (0..10).filter(|&i| !r.mask[i * 6]).collect();
    assert_eq!(gone, vec![0, 5, 6]);
    assert_eq!(r.kept, 7 * 6);
    let norms = Cpu.row_norms(w.view());
    assert!((norms[3] - 4.0 * 6f32.sqrt()).abs() < 1e-5);
    let wt = w.transpose();
    let c = Cpu
        .magnitude_mask(wt.view(), 0.3, MaskPattern::Cols)
        .unwrap();
    assert_eq!(c.masked, r.masked.transpose());
    assert_eq!(Cpu.col_norms(wt.view()), norms);
}

#[test]
fn global_threshold_and_masks() {
    let a = Matrix::new(50, 40, gaussian_f32(1, 50, 40)).unwrap();
    let b = Matrix::new(30, 70, gaussian_f32(2, 30, 70)).unwrap();
    let batch = [a.view(), b.view()];
    let total = 50 * 40 + 30 * 70;
    for s in [0.0f32, 0.3, 0.5, 0.99, 1.0] {
        let t = Cpu.global_threshold(&batch, s).unwrap();
        let keep = total - ((s as f64) * total as f64).round() as usize;
        let above = batch
            .iter()
            .flat_map(|w| w.data())
            .filter(|x| x.abs() >= t)
            .count();
        assert_eq!(above, keep, "sparsity {s}");
        let masks = Cpu.global_magnitude_masks(&batch, s).unwrap();
        assert_eq!(masks.iter().map(|m| m.kept).sum::<usize>(), keep);
    }
    assert_eq!(Cpu.global_threshold(&batch, 1.0).unwrap(), f32::INFINITY);
    // The 3rd largest of {0, ±1, ±2, 3} is 2.
    let c = Matrix::new(2, 3, vec![0.0, -1.0, 2.0, -2.0, 1.0, 3.0]).unwrap();
    assert_eq!(Cpu.global_threshold(&[c.view()], 0.5).unwrap(), 2.0);
}

#[test]
fn balanced_split_reconstructs() {
    let w = Matrix::new(20, 30, gaussian_f32(4, 20, 30)).unwrap();
    let f = Cpu.svd_exact(w.view(), 20).unwrap();
    assert!(rel_error(w.view(), &f) < 1e-5);
    let full = f.reconstruct();
    for (x, y) in full.data().iter().zip(w.data()) {
        assert!((x - y).abs() < 1e-4);
    }
}

/// Checks that `q` (`m × k`, from `orth` of `y`) is orthonormal and spans `y`, both to `tol`.
fn assert_orthonormal_basis(y: &[f32], q: &[f32], m: usize, k: usize, tol: f64) {
    let y = super::dense::to_f64(y);
    let q = super::dense::to_f64(q);
    let g = super::dense::gram(&q, m, k);
    for i in 0..k {
        for j in 0..k {
            let e = if i == j { 1.0 } else { 0.0 };
            assert!(
                (g[i * k + j] - e).abs() < tol,
                "QᵀQ[{i},{j}] = {}",
                g[i * k + j]
            );
        }
    }
    // ‖Y − Q Qᵀ Y‖ / ‖Y‖.
    let qm = faer::MatRef::from_row_major_slice(&q, m, k);
    let ym = faer::MatRef::from_row_major_slice(&y, m, k);
    let c = super::dense::mul_rows(qm.transpose(), ym);
    let p = super::dense::mul_rows(qm, faer::MatRef::from_row_major_slice(&c, k, k));
    let num: f64 = y.iter().zip(&p).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = y.iter().map(|a| a * a).sum();
    assert!((num / den).sqrt() < tol, "{}", (num / den).sqrt());
}

/// Cholesky-QR on a sketch with κ ≈ 1e12: the Gram is not positive definite in f64, so the
/// shifted pass runs; the result must still be orthonormal and span the sketch, for a final
/// basis and for a power-method iterate alike (κ is far above the one-pass limit).
#[test]
fn orth_handles_ill_conditioned_sketches() {
    use super::rsvd::{orth, Orth};
    let (m, k) = (5000, 40);
    let sigma: Vec<f64> = (0..k)
        .map(|i| 10f64.powf(-12.0 * i as f64 / (k - 1) as f64))
        .collect();
    let w = with_spectrum(21, m, k, &sigma);
    for need in [Orth::Final, Orth::Iterate] {
        let q = orth(w.data(), m, k, need).unwrap();
        // Returned in f32: orthonormal to f32 rounding.
        assert_orthonormal_basis(w.data(), &q, m, k, 1e-6);
    }
}

/// A well-conditioned sketch (κ = 1e3, below the one-pass limit): an iterate takes a single
/// Cholesky-QR pass and is still orthonormal to f32 rounding; the final basis is the same span.
#[test]
fn orth_one_pass_for_well_conditioned_iterates() {
    use super::rsvd::{orth, Orth};
    let (m, k) = (20_000, 48);
    let sigma: Vec<f64> = (0..k)
        .map(|i| 10f64.powf(-3.0 * i as f64 / (k - 1) as f64))
        .collect();
    let w = with_spectrum(22, m, k, &sigma);
    let one = orth(w.data(), m, k, Orth::Iterate).unwrap();
    assert_orthonormal_basis(w.data(), &one, m, k, 1e-6);
    let two = orth(w.data(), m, k, Orth::Final).unwrap();
    assert_orthonormal_basis(w.data(), &two, m, k, 1e-6);
}

#[test]
fn matrix_from_tensor() {
    let t = crate::ir::Tensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let m = Matrix::from_tensor(&t).unwrap();
    assert_eq!(m.shape(), (2, 3));
    assert_eq!(m.get(1, 0), Some(4.0));
    assert_eq!(m.get(2, 0), None);
    let v = crate::ir::Tensor::from_f32(vec![6], &[0.0; 6]);
    assert!(matches!(
        Matrix::from_tensor(&v),
        Err(ComputeError::NotAMatrix(_))
    ));
}

#[test]
fn cholesky_and_triangular_inverse() {
    let k = 50;
    let x = gaussian_f64(8, 200, k);
    let g = super::dense::gram(&x, 200, k);
    let r = super::dense::cholesky_upper(&g, k).unwrap();
    let ri = super::dense::inv_upper(&r, k);
    for i in 0..k {
        for j in 0..k {
            if i > j {
                assert_eq!((r[i * k + j], ri[i * k + j]), (0.0, 0.0));
            }
            let rtr: f64 = (0..k).map(|l| r[l * k + i] * r[l * k + j]).sum();
            assert!((rtr - g[i * k + j]).abs() < 1e-10 * g[i * k + i].max(1.0));
            let id: f64 = (0..k).map(|l| r[i * k + l] * ri[l * k + j]).sum();
            assert!((id - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
        }
    }
    let mut singular = g.clone();
    for i in 0..k {
        singular[i * k + 1] = singular[i * k];
        singular[k + i] = singular[i];
    }
    assert!(super::dense::cholesky_upper(&singular, k).is_none());
}

#[test]
fn full_spectrum_matches_exact_svd() {
    let cpu = Cpu;
    for (m, n) in [(60usize, 40usize), (40, 60)] {
        let data: Vec<f32> = (0..m * n)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let w = MatrixRef::new(m, n, &data).unwrap();
        let full = cpu.full_spectrum(w).unwrap();
        let exact = cpu.svd_exact(w, m.min(n)).unwrap();
        assert_eq!(full.len(), m.min(n));
        for (a, b) in full.iter().zip(&exact.s) {
            assert!((a - b).abs() <= 1e-4 * exact.s[0], "{a} vs {b}");
        }
    }
}
