//! The numeric backend: randomized SVD, spectra, GEMM, magnitude masks and thresholds.
//!
//! Everything here works on dense `f32` matrices in row-major order ([`Matrix`] owns one,
//! [`MatrixRef`] borrows one). The [`Backend`] trait is the contract; [`Cpu`] implements it on
//! faer and rayon, and is the reference a GPU backend must agree with.
//!
//! The trait is shaped for devices that like large GEMMs: low-rank factorization and spectra
//! take a *batch* of same-shape matrices (the twelve same-shape layers of a transformer), so a
//! backend can share the sketch and run the batch's GEMMs together.
//!
//! Numerics (see DESIGN.md, "Numerics"): the randomized SVD orthonormalises its sketches with
//! Cholesky-QR2 (Gram and Cholesky in `f64`), never with an `f32` Householder QR, which loses
//! rank on tall matrices with decaying spectra; the small SVD of `B = QᵀW` runs in `f64`.
//!
//! Determinism: every result is a function of the inputs and [`SvdOptions::seed`] only. The CPU
//! backend splits work into pieces of a fixed size (never by thread count) and sums partial
//! results in a fixed order, so results are bit-identical for any rayon pool size.

mod check;
mod cpu;
mod dense;
mod eigen;
pub mod gpu;
pub mod hot;
mod mask;
pub mod pq;
pub mod rng;
mod rsvd;
pub mod select;
#[cfg(test)]
mod tests;
pub mod whiten;

pub use cpu::Cpu;
pub use gpu::Gpu;
pub use rsvd::{KrylovShape, LowrankRoute};

use crate::ir::{DType, Tensor};

/// Failures of the numeric backend. None of them is a panic: every caller input is checked.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ComputeError {
    /// A matrix's data does not hold `rows × cols` elements.
    #[error("matrix data has {len} elements, but {rows}×{cols} needs {expected}")]
    DataLength {
        /// Rows claimed.
        rows: usize,
        /// Columns claimed.
        cols: usize,
        /// Elements given.
        len: usize,
        /// `rows × cols` (saturating).
        expected: usize,
    },
    /// Shapes do not fit together: a batch whose matrices differ in shape, or GEMM operands
    /// whose inner dimensions differ.
    #[error("shape mismatch ({what}) at index {index}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Which check failed.
        what: &'static str,
        /// Index of the offending matrix in its batch (for GEMM: 1, the right operand).
        index: usize,
        /// The shape (or inner dimension pair) expected.
        expected: (usize, usize),
        /// The shape (or inner dimension pair) found.
        found: (usize, usize),
    },
    /// A rank of 0 or above `min(rows, cols)`.
    #[error(
        "rank {rank} is invalid for a {rows}×{cols} matrix (must be between 1 and min(rows, cols))"
    )]
    InvalidRank {
        /// The rank asked for.
        rank: usize,
        /// Rows of the matrices.
        rows: usize,
        /// Columns of the matrices.
        cols: usize,
    },
    /// A NaN or infinity in an input matrix.
    #[error(
        "matrix {index} of the batch holds a non-finite value ({value}) at row {row}, column {col}"
    )]
    NonFinite {
        /// Index of the matrix in its batch (0 for single-matrix calls).
        index: usize,
        /// Row of the first non-finite element (row-major order).
        row: usize,
        /// Column of that element.
        col: usize,
        /// The value itself.
        value: f32,
    },
    /// A sparsity outside `[0, 1]` (or NaN).
    #[error("sparsity {0} is outside [0, 1]")]
    InvalidSparsity(f32),
    /// A mask pattern that cannot be applied (e.g. `n > m` for N:M).
    #[error("invalid mask pattern: {0}")]
    InvalidPattern(String),
    /// A tensor that is not a 2-D `f32` tensor where a matrix is needed.
    #[error("not a 2-D f32 tensor: {0}")]
    NotAMatrix(String),
    /// A dense factorization failed (e.g. the SVD did not converge).
    #[error("numerical failure on matrix {index} of the batch: {reason}")]
    Numerical {
        /// Index of the matrix in its batch.
        index: usize,
        /// What failed.
        reason: String,
    },
    /// The compute device failed or is unavailable (GPU backend): no adapter, the device was
    /// lost, it ran out of memory, or a tensor does not fit its limits. The message says which.
    #[error("compute device: {0}")]
    Device(String),
}

/// A borrowed dense `f32` matrix in row-major order: element `(i, j)` is `data[i * cols + j]`.
///
/// Construction checks that `data.len() == rows * cols`, so every `MatrixRef` is well formed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatrixRef<'a> {
    rows: usize,
    cols: usize,
    data: &'a [f32],
}

impl<'a> MatrixRef<'a> {
    /// A view of `data` as a `rows × cols` row-major matrix; errors if the length is not
    /// `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: &'a [f32]) -> Result<Self, ComputeError> {
        check_len(rows, cols, data.len())?;
        Ok(MatrixRef { rows, cols, data })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The elements, row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Element `(i, j)`, or `None` outside the matrix.
    pub fn get(&self, i: usize, j: usize) -> Option<f32> {
        (i < self.rows && j < self.cols).then(|| self.data[i * self.cols + j])
    }

    /// An owned copy.
    pub fn to_matrix(&self) -> Matrix {
        Matrix {
            rows: self.rows,
            cols: self.cols,
            data: self.data.to_vec(),
        }
    }

    /// The faer view (row stride `cols`, column stride 1).
    pub(crate) fn faer(&self) -> faer::MatRef<'a, f32> {
        faer::MatRef::from_row_major_slice(self.data, self.rows, self.cols)
    }
}

/// An owned dense `f32` matrix in row-major order: element `(i, j)` is `data[i * cols + j]`.
///
/// The fields are private so that `data.len() == rows * cols` always holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// A `rows × cols` matrix over `data` (row-major); errors if the length is not
    /// `rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, ComputeError> {
        check_len(rows, cols, data.len())?;
        Ok(Matrix { rows, cols, data })
    }

    /// A matrix whose element `(i, j)` is `f(i, j)`; errors if `rows × cols` overflows.
    pub fn from_fn(
        rows: usize,
        cols: usize,
        mut f: impl FnMut(usize, usize) -> f32,
    ) -> Result<Self, ComputeError> {
        let len = rows.checked_mul(cols).ok_or(ComputeError::DataLength {
            rows,
            cols,
            len: 0,
            expected: usize::MAX,
        })?;
        let mut data = Vec::with_capacity(len);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Ok(Matrix { rows, cols, data })
    }

    /// The matrix held by a 2-D `f32` tensor (`dims = [rows, cols]`); errors for any other
    /// dtype or rank.
    pub fn from_tensor(t: &Tensor) -> Result<Self, ComputeError> {
        let (rows, cols) = match (t.dtype, t.dims.as_slice()) {
            (DType::F32, &[r, c]) if r >= 0 && c >= 0 => (r as usize, c as usize),
            _ => {
                return Err(ComputeError::NotAMatrix(format!(
                    "dtype {:?}, dims {:?}",
                    t.dtype, t.dims
                )))
            }
        };
        let data = t
            .as_f32()
            .ok_or_else(|| ComputeError::NotAMatrix("data is not readable as f32".into()))?;
        Matrix::new(rows, cols, data.into_owned())
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, row-major, mutable (the shape cannot change).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// The elements, row-major, by value.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Element `(i, j)`, or `None` outside the matrix.
    pub fn get(&self, i: usize, j: usize) -> Option<f32> {
        self.view().get(i, j)
    }

    /// A borrowed view.
    pub fn view(&self) -> MatrixRef<'_> {
        MatrixRef {
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }

    /// The transpose (`cols × rows`), as a new matrix.
    pub fn transpose(&self) -> Matrix {
        let (r, c) = (self.rows, self.cols);
        let mut data = vec![0.0; self.data.len()];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Matrix {
            rows: c,
            cols: r,
            data,
        }
    }

    pub(crate) fn zeros(rows: usize, cols: usize) -> Matrix {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
}

fn check_len(rows: usize, cols: usize, len: usize) -> Result<(), ComputeError> {
    match rows.checked_mul(cols) {
        Some(n) if n == len => Ok(()),
        n => Err(ComputeError::DataLength {
            rows,
            cols,
            len,
            expected: n.unwrap_or(usize::MAX),
        }),
    }
}

/// A rank-`r` factorization `W ≈ u · diag(s) · vt` of an `m × n` matrix.
///
/// `u` is `m × r` with orthonormal columns, `s` holds `r` singular values in non-increasing
/// order (all ≥ 0), `vt` is `r × n` with orthonormal rows. Signs are normalised: in each row of
/// `vt` the entry of largest magnitude (the first one, on ties) is positive. Where `W` has rank
/// below `r`, the trailing singular values are (close to) zero and their vectors are an
/// arbitrary orthonormal completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    /// Left singular vectors, `m × r`.
    pub u: Matrix,
    /// Singular values, length `r`, non-increasing.
    pub s: Vec<f32>,
    /// Right singular vectors, transposed, `r × n`.
    pub vt: Matrix,
}

impl Factors {
    /// The rank `r` (number of singular triplets).
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// The balanced split `(A, B)` with `A = u · diag(√s)` (`m × r`) and
    /// `B = diag(√s) · vt` (`r × n`), so that `W ≈ A · B`.
    pub fn balanced(&self) -> (Matrix, Matrix) {
        let root: Vec<f32> = self.s.iter().map(|s| s.max(0.0).sqrt()).collect();
        let r = root.len();
        let mut a = self.u.clone();
        for row in a.data.chunks_mut(r.max(1)) {
            for (x, s) in row.iter_mut().zip(&root) {
                *x *= s;
            }
        }
        let mut b = self.vt.clone();
        let n = b.cols.max(1);
        for (row, s) in b.data.chunks_mut(n).zip(&root) {
            for x in row {
                *x *= s;
            }
        }
        (a, b)
    }

    /// `u · diag(s) · vt` as a dense `m × n` matrix (accumulated in `f64`; for tests and
    /// error measurement, not for large matrices in hot paths).
    pub fn reconstruct(&self) -> Matrix {
        let (m, r, n) = (self.u.rows, self.s.len(), self.vt.cols);
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            let mut acc = vec![0.0f64; n];
            for l in 0..r {
                let c = self.u.data[i * r + l] as f64 * self.s[l] as f64;
                for (a, v) in acc.iter_mut().zip(&self.vt.data[l * n..(l + 1) * n]) {
                    *a += c * *v as f64;
                }
            }
            for (o, a) in out[i * n..(i + 1) * n].iter_mut().zip(acc) {
                *o = a as f32;
            }
        }
        Matrix {
            rows: m,
            cols: n,
            data: out,
        }
    }
}

/// Options of the randomized SVD (Halko–Martinsson–Tropp).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvdOptions {
    /// Oversampling (`p`): the randomized SVD's Krylov basis has about `2r + p` columns
    /// ([`KrylovShape`]); `r + p` also decides the route ([`SvdOptions::lowrank_route`]).
    /// Default 10.
    pub oversample: usize,
    /// Depth `d` of the block Krylov range finder: the basis spans `A·Ω, (A·Aᵀ)·A·Ω, …,
    /// (A·Aᵀ)^d·A·Ω` (`A`: the matrix short side first, [`Backend::lowrank`]) in `d + 1` blocks of `b = ⌈(2r + p)/(d + 1)⌉` columns. Default 4 (as
    /// many products with `W` as subspace iteration with 2 power iterations, on blocks about
    /// 40 % as wide: fewer flops and a smaller error, docs/PERF.md).
    pub depth: usize,
    /// Seed of the Gaussian sketch Ω. Same seed, same inputs → bit-identical output.
    /// Default 0.
    pub seed: u64,
    /// Matrices with `min(m, n) <= exact_below`, or where `r + p >= min(m, n)`, are factorized
    /// exactly (an `f64` SVD) instead. Default 128.
    pub exact_below: usize,
    /// Which route [`Backend::lowrank`] takes where more than one applies (see
    /// [`SvdOptions::lowrank_route`]). Default [`SvdMethod::Auto`].
    pub method: SvdMethod,
}

/// How [`Backend::lowrank`] trades accuracy for speed at high ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SvdMethod {
    /// The most accurate route that costs about as much as sketching: the exact `f64` SVD for
    /// small matrices, the eigendecomposition of the short side's Gram matrix (the optimum, to
    /// the Gram's `f64` rounding) where the sketch would span at least a quarter of the short
    /// side, the randomized block Krylov route below that.
    #[default]
    Auto,
    /// The randomized block Krylov route at every rank whose basis (about `2r + p` columns)
    /// spans at most three quarters of the short side (higher ranks take Auto's route: there
    /// the exact Gram route costs about as much). Its blocks are at most
    /// [`MAX_RANDOMIZED_BLOCK`] columns wide, deepening the basis instead at high ranks (as
    /// many products, and a smaller error than wider blocks). Much faster than the Gram route
    /// on a GPU, whose eigendecompositions run on the host; its reconstruction errors are a
    /// little above the optimum (GPT-2 small's shapes at rank 256: 1.1 % above on average,
    /// where `torch.svd_lowrank(q = r + 10, niter = 2)` is 3.6 % above; docs/PERF.md).
    Randomized,
}

/// Widest Krylov block of [`SvdMethod::Randomized`] (the GPU's on-device Cholesky handles
/// blocks up to 64 columns with `f32` Grams).
pub const MAX_RANDOMIZED_BLOCK: usize = 64;

impl SvdMethod {
    /// The name used on the command line, in profiles and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SvdMethod::Auto => "auto",
            SvdMethod::Randomized => "randomized",
        }
    }
}

impl std::str::FromStr for SvdMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SvdMethod::Auto),
            "randomized" => Ok(SvdMethod::Randomized),
            other => Err(format!(
                "unknown SVD method '{other}' (expected auto or randomized)"
            )),
        }
    }
}

impl Default for SvdOptions {
    fn default() -> Self {
        SvdOptions {
            oversample: 10,
            depth: 4,
            seed: 0,
            exact_below: 128,
            method: SvdMethod::Auto,
        }
    }
}

/// Which elements a magnitude mask may remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskPattern {
    /// Keep the largest `|w|` of the whole tensor; exactly `numel − round(sparsity · numel)`
    /// elements are kept. Ties at the threshold keep the element with the lower row-major
    /// index.
    Unstructured,
    /// N:M structured sparsity: in every group of `m` consecutive elements along the input
    /// dimension — the rows, dimension 0, as in an ONNX `MatMul` weight `W[K, N]` — keep the
    /// `n` largest `|w|` (ties: the lower row index). A trailing partial group of length
    /// `L < m` keeps `min(n, L)`. The `sparsity` argument is ignored (the density is `n / m`).
    /// Pass the transpose for weights stored `[N, K]`.
    NM {
        /// Elements kept per group.
        n: usize,
        /// Group length.
        m: usize,
    },
    /// Zero the `round(sparsity · rows)` whole rows with the smallest L2 norms (ties: the row
    /// with the higher index goes first).
    Rows,
    /// Zero the `round(sparsity · cols)` whole columns with the smallest L2 norms (ties: the
    /// column with the higher index goes first).
    Cols,
}

/// A magnitude mask and its effect.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskResult {
    /// `true` where the element is kept; row-major, same shape as the input.
    pub mask: Vec<bool>,
    /// The input with removed elements set to zero.
    pub masked: Matrix,
    /// Number of `true` entries in `mask`.
    pub kept: usize,
}

/// A numeric backend. All matrices are dense `f32`, row-major.
///
/// Contracts shared by every implementation:
/// - no method panics on caller input; bad shapes, ranks, sparsities and non-finite values
///   come back as [`ComputeError`];
/// - results depend only on the inputs and the options (seed included), never on thread
///   count or scheduling; a GPU backend agrees with [`Cpu`] within stated tolerances.
pub trait Backend: Send + Sync {
    /// A short name for reports ("cpu", "gpu:…").
    fn name(&self) -> &str;

    /// Rank-`rank` factors of every matrix in `batch` by randomized SVD with a block Krylov
    /// range finder (randomized block Lanczos, Musco & Musco 2015) on `A`, the matrix short
    /// side first (`A = W` when `m ≤ n`, else `A = Wᵀ`; `s × l`): Gaussian start Ω (`l × b`,
    /// [`KrylovShape`], from `opts.seed`, the same Ω for every matrix of the batch),
    /// `Q₀ = orth(A·Ω)`, then `opts.depth` blocks `Qᵢ₊₁ = orth(A·Aᵀ·Qᵢ ⊥ Q₀…Qᵢ)` (all on the
    /// short side), then `B = Qᵀ·A` (whose blocks `Qᵢᵀ·A` the iteration has already formed)
    /// and the SVD of `B` truncated to `rank`, transposed back for a tall `W`. Small matrices
    /// (see [`SvdOptions::exact_below`]) get an exact SVD, and high ranks the Gram path
    /// ([`SvdOptions::lowrank_route`]).
    ///
    /// All matrices of a batch must have the same shape `m × n`; `rank` must be in
    /// `1..=min(m, n)`. Output `i` belongs to `batch[i]`. An empty batch gives an empty vector.
    fn lowrank(
        &self,
        batch: &[MatrixRef<'_>],
        rank: usize,
        opts: &SvdOptions,
    ) -> Result<Vec<Factors>, ComputeError>;

    /// [`Backend::lowrank`] of several batches (`jobs[j]`: a same-shape batch and its rank;
    /// shapes may differ between jobs): output `j` is what `lowrank(jobs[j].0, jobs[j].1, opts)`
    /// gives, bit for bit. A backend may overlap the jobs' work (the GPU backend runs up to
    /// eight at a time, so that one job's uploads and CPU steps overlap the others' device
    /// work). On failure, the error of the first failing job in order.
    fn lowrank_many(
        &self,
        jobs: &[(&[MatrixRef<'_>], usize)],
        opts: &SvdOptions,
    ) -> Result<Vec<Vec<Factors>>, ComputeError> {
        jobs.iter()
            .map(|&(batch, rank)| self.lowrank(batch, rank, opts))
            .collect()
    }

    /// How many jobs of [`Backend::lowrank_many`] this backend works on at a time (1: one
    /// after the other, so that callers gain nothing by holding several batches at once).
    fn concurrent_jobs(&self) -> usize {
        1
    }

    /// The exact truncated SVD (computed in `f64`): the best rank-`rank` approximation. Meant
    /// for small matrices and as the reference for [`Backend::lowrank`]; cost grows as
    /// `m·n·min(m, n)`. `rank` must be in `1..=min(m, n)`.
    fn svd_exact(&self, w: MatrixRef<'_>, rank: usize) -> Result<Factors, ComputeError>;

    /// The `min(k, min(m, n))` largest singular values of each matrix of `batch`, descending,
    /// with explicit options: exact when the matrix is small or `k` is close to `min(m, n)`,
    /// else from the block Krylov basis of [`Backend::lowrank`] with `max(opts.oversample, k)`
    /// oversampling (about `3k` columns) and `opts.depth` blocks after the first.
    fn spectrum_with(
        &self,
        batch: &[MatrixRef<'_>],
        k: usize,
        opts: &SvdOptions,
    ) -> Result<Vec<Vec<f32>>, ComputeError>;

    /// [`Backend::spectrum_with`] with default options.
    fn spectrum(&self, batch: &[MatrixRef<'_>], k: usize) -> Result<Vec<Vec<f32>>, ComputeError> {
        self.spectrum_with(batch, k, &SvdOptions::default())
    }

    /// `op(a) · op(b)` where `op(x)` is `xᵀ` if its flag is set, else `x`. The inner
    /// dimensions must agree. Deterministic.
    fn gemm(
        &self,
        a: MatrixRef<'_>,
        b: MatrixRef<'_>,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Matrix, ComputeError>;

    /// A magnitude mask of `w` removing a `sparsity` fraction (in `[0, 1]`) of it in the given
    /// pattern; see [`MaskPattern`] for counts and tie-breaking.
    fn magnitude_mask(
        &self,
        w: MatrixRef<'_>,
        sparsity: f32,
        pattern: MaskPattern,
    ) -> Result<MaskResult, ComputeError>;

    /// The global magnitude threshold across `batch` for a `sparsity` fraction: the magnitude
    /// of the `keep`-th largest `|w|` over all elements of all matrices, where
    /// `keep = total − round(sparsity · total)`. Keeping `|w| >= threshold` keeps at least
    /// `keep` elements (exactly `keep` without ties at the threshold). Returns `+∞` when
    /// `keep` is 0. Matrices may differ in shape.
    fn global_threshold(&self, batch: &[MatrixRef<'_>], sparsity: f32)
        -> Result<f32, ComputeError>;

    /// Unstructured masks for every matrix of `batch` under one global threshold, keeping
    /// exactly `keep` elements in total (as in [`Backend::global_threshold`]); ties at the
    /// threshold keep the lower (matrix index, row-major index) first.
    fn global_magnitude_masks(
        &self,
        batch: &[MatrixRef<'_>],
        sparsity: f32,
    ) -> Result<Vec<MaskResult>, ComputeError>;

    /// Every singular value of `w` (`min(rows, cols)` of them, descending), from the
    /// eigenvalues of the Gram matrix of its shorter side, accumulated in `f64`. Values below
    /// about 1e-7 of the largest are not resolved (they come out near zero). For the budget
    /// planner, which needs whole spectra of many matrices cheaply.
    fn full_spectrum(&self, w: MatrixRef<'_>) -> Result<Vec<f32>, ComputeError>;

    /// L2 norm of each row (accumulated in `f64`), length `rows`.
    fn row_norms(&self, w: MatrixRef<'_>) -> Vec<f32>;

    /// L2 norm of each column (accumulated in `f64`), length `cols`.
    fn col_norms(&self, w: MatrixRef<'_>) -> Vec<f32>;
}
