//! Evaluation of `where`, `let`, `emit` and `require` clauses for one match: builtins, kernels
//! (memoised), and the plan of new operations (a [`Patch`]), which the engine applies only once
//! every clause has passed.

use std::collections::HashMap;
use std::sync::Arc;

use super::kernels;
use super::matcher::{const_tensor, Bindings};
use super::value::Val;
use crate::dsl::ast::{Arg, BinaryOp, Clause, Expr, ExprKind, Literal, UnaryOp};
use crate::ir::{AttrValue, Attribute, DType, Graph, Tensor, ValueDef, ValueId};

/// An operation planned by `emit`.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub op_type: String,
    pub domain: String,
    pub attributes: Vec<Attribute>,
    pub inputs: Vec<Val>,
    pub outputs: usize,
}

/// What one rule application will do: new operations, and new definitions for matched values.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    pub nodes: Vec<PlannedNode>,
    /// (matched value, its replacement)
    pub emits: Vec<(ValueId, Val)>,
}

/// How a `lowrank` call chooses its rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankSpec {
    Fixed(usize),
    Plan,
    Energy(f64),
}

/// A `lowrank` call seen while surveying a pipeline (before planning).
#[derive(Clone, Debug)]
pub struct Request {
    /// Identifies the matrix (a stored constant's id, or a derived tensor's digest).
    pub key: String,
    /// Shown in reports.
    pub name: String,
    pub matrix: Arc<Tensor>,
    pub spec: RankSpec,
    /// The value whose activations whiten the factorization (`whiten = x`), by name.
    pub tap: Option<String>,
    /// Stored in the compact form (`lowrank_compact`): `r·(K + N − r) + N` parameters.
    pub compact: bool,
    /// Asked for by `lowrank_hot`: a token table that may keep its most-read rows exactly
    /// (see [`crate::compute::hot`]) when every site reading it asks for that.
    pub hot: bool,
    /// Asked for by `pq`: a token table that may be stored product-quantized (see
    /// [`crate::compute::pq`]) when every site reading it asks for that (`hot` is then set
    /// too: the hot and plain forms stay candidates).
    pub pq: bool,
}

/// How calibration data steers `lowrank(W, rank, whiten = x)`.
#[derive(Clone, Debug)]
pub struct WhitenOptions {
    /// Activation statistics (from [`crate::eval::calib`]); whitening is off without them.
    pub calib: Arc<crate::eval::calib::Calibration>,
    /// Gram damping `λ` (relative to the mean diagonal).
    pub damp: f64,
    /// Token tables: every row's count is raised by `token_damp` times the mean count (a
    /// uniform prior mixed into the calibration text's token frequencies), so that rows the
    /// text never read keep part of their weight.
    pub token_damp: f64,
}

/// Product quantizations of token tables at every width tried (see
/// [`crate::compute::pq::equivalent_points`]), by table and row weighting: k-means is the
/// costly part of weighing the quantized form, and auto's engines share one cache.
#[derive(Debug, Default)]
pub struct PqCache(std::sync::Mutex<HashMap<String, PqPoints>>);

/// A table's quantized forms with the parameters each stores.
pub type PqPoints = Arc<Vec<crate::compute::pq::Quantized>>;

impl PqCache {
    /// The quantized forms under `key`, computed by `f` the first time.
    pub fn get_or_try(
        &self,
        key: &str,
        f: impl FnOnce() -> Result<Vec<crate::compute::pq::Quantized>, String>,
    ) -> Result<PqPoints, String> {
        if let Some(p) = self.0.lock().map_err(|e| e.to_string())?.get(key) {
            return Ok(p.clone());
        }
        let p = Arc::new(f()?);
        self.0
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key.to_string(), p.clone());
        Ok(p)
    }
}

/// The statistics one whitened site uses.
#[derive(Clone, Copy, Debug)]
pub enum SiteStats<'a> {
    /// The input's Gram `XᵀX`.
    Full(&'a crate::eval::calib::Gram),
    /// A token table read by `Gather`: how often each row was read (the Gram of one-hot rows
    /// is this diagonal).
    Counts(&'a [f64]),
}

impl WhitenOptions {
    /// The statistics of `tap` if they fit a `k`-row weight.
    pub fn site(&self, tap: Option<&str>, k: usize) -> Option<SiteStats<'_>> {
        let tap = tap?;
        if let Some(c) = self.calib.counts.get(tap) {
            return (c.len() <= k).then_some(SiteStats::Counts(c));
        }
        let g = self.calib.grams.get(tap)?;
        (g.dim == k).then_some(SiteStats::Full(g))
    }

    /// The weight of each of a `k`-row token table's rows: its count plus `token_damp` times
    /// the mean count (missing counts are 0), divided by `1 + token_damp` — a mixture of the
    /// data's token frequencies and a uniform prior with the data's total weight, so that a
    /// table's whitened energies stay in the units of the other sites' (the tokens run).
    pub fn row_weights(&self, c: &[f64], k: usize) -> Result<Vec<f64>, String> {
        let mean = c.iter().sum::<f64>() / k as f64;
        if mean.is_nan() || mean <= 0.0 {
            return Err("no token of the calibration data reads this table".into());
        }
        let lambda = self.token_damp.max(1e-10);
        let prior = lambda * mean;
        Ok((0..k)
            .map(|i| (c.get(i).copied().unwrap_or(0.0) + prior) / (1.0 + lambda))
            .collect())
    }

    /// Whitens `w` (`k × n`, f32) for `stats`: the target `M` whose truncated SVD is the best
    /// rank-`r` site (see [`crate::compute::whiten`]), and how to map its left factor back.
    pub fn target(
        &self,
        stats: SiteStats<'_>,
        w: &[f32],
        (k, n): (usize, usize),
    ) -> Result<(Vec<f32>, Unwhiten), String> {
        use crate::compute::whiten::Whitening;
        match stats {
            SiteStats::Counts(c) => Ok(weighted_rows(w, n, &self.row_weights(c, k)?)),
            SiteStats::Full(g) => {
                let wh = Whitening::new(&g.data, k, self.damp).map_err(|e| e.to_string())?;
                Ok((wh.target(w, n), Unwhiten::Full(wh)))
            }
        }
    }
}

/// The target of a table whose rows are weighted by `weights` (`w` is `weights.len() × n`,
/// row-major): every row scaled by the square root of its weight, and how to undo it on the
/// left factor.
fn weighted_rows(w: &[f32], n: usize, weights: &[f64]) -> (Vec<f32>, Unwhiten) {
    let scale: Vec<f64> = weights.iter().map(|&x| x.sqrt()).collect();
    let m = w
        .chunks(n)
        .zip(&scale)
        .flat_map(|(row, &s)| row.iter().map(move |&x| (x as f64 * s) as f32))
        .collect();
    (m, Unwhiten::Rows(scale))
}

/// How a whitened target's left factor maps back to the weight's.
pub enum Unwhiten {
    /// `A = R⁻¹·Ã`.
    Full(crate::compute::whiten::Whitening),
    /// `A = diag(1/s)·Ã`.
    Rows(Vec<f64>),
}

impl Unwhiten {
    fn apply(&self, a: &[f32], r: usize) -> Vec<f32> {
        match self {
            Unwhiten::Full(wh) => wh.unwhiten(a, r),
            Unwhiten::Rows(s) => a
                .chunks(r.max(1))
                .zip(s)
                .flat_map(|(row, &x)| row.iter().map(move |&v| (v as f64 / x) as f32))
                .collect(),
        }
    }
}

/// What a kernel did at a site, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Note {
    pub kernel: String,
    /// The constant the kernel transformed.
    pub constant: String,
    pub shape: Vec<i64>,
    pub rank: Option<usize>,
    pub sparsity: Option<f64>,
    /// ‖W − Ŵ‖_F / ‖W‖_F of the result.
    pub rel_error: f64,
    pub params_before: u64,
    pub params_after: u64,
    /// Whether the result came from the memo (a tied weight already transformed elsewhere).
    pub shared: bool,
    /// How a masked constant is stored: `"sparse"` (ONNX `sparse_initializer`, values + int64
    /// indices) when that is smaller, else `"dense"` (zeros stored densely save nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Bytes the storage saves against the dense constant (0 when stored densely).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_saved: Option<u64>,
    /// Set when the factorization was whitened by calibration data: the value whose
    /// activations it preserves. `rel_error` is then the site's relative *output* error on the
    /// calibration data, ‖X·(W − Ŵ)‖/‖X·W‖ (for a token table: the error of its rows weighted
    /// by how often they were read, plus the token damping's prior), not a weight-space error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whitened: Option<String>,
    /// With `whitened`: "whitened" (the input's Gram) or "token counts" (a table read by a
    /// Gather, rows weighted by how often the data read them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `lowrank_hot`: how many rows of the token table are stored exactly (the rest at
    /// `rank`); `pq`: how many rows are corrected exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_rows: Option<usize>,
    /// `pq`: columns per quantized piece (each piece one byte, a codeword of its column block).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pq_width: Option<usize>,
    /// `pq`: codewords per column block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub centroids: Option<usize>,
}

impl Note {
    /// The note of a factorization of the `k × n` constant `name` at `rank`, storing
    /// `params_after` parameters (not whitened, not shared, no special storage).
    pub fn factored(
        kernel: &str,
        name: &str,
        (k, n): (usize, usize),
        rank: usize,
        rel_error: f64,
        params_after: u64,
    ) -> Note {
        Note {
            kernel: kernel.into(),
            constant: name.to_string(),
            shape: vec![k as i64, n as i64],
            rank: Some(rank),
            sparsity: None,
            rel_error,
            params_before: (k * n) as u64,
            params_after,
            shared: false,
            storage: None,
            bytes_saved: None,
            whitened: None,
            method: None,
            hot_rows: None,
            pq_width: None,
            centroids: None,
        }
    }
}

/// Kernel state for a whole pipeline: the memo (results per kernel and arguments: a constant
/// used at several sites is transformed once, and the identical result is stored once), the
/// numeric backend, planned ranks, and what kernels did at the current site.
pub struct Memo {
    map: HashMap<String, (Val, Option<Note>)>,
    pub hits: usize,
    pub misses: usize,
    pub backend: Arc<dyn crate::compute::Backend>,
    pub svd: crate::compute::SvdOptions,
    /// `Some` while surveying: `lowrank` calls are recorded here instead of computed.
    pub survey: Option<Vec<Request>>,
    /// Ranks from the planner, by matrix key (`None`: the site stays dense).
    pub ranks: HashMap<String, Option<usize>>,
    /// Notes of the site being evaluated (the engine takes them after each site).
    pub notes: Vec<Note>,
    /// Set when the site being evaluated made a surveyed `lowrank` call.
    pub surveyed: bool,
    /// Value ids below this existed when the engine started.
    pub original_values: u32,
    /// Calibration: when set, `lowrank(…, whiten = x)` preserves `x`'s activations.
    pub whiten: Option<WhitenOptions>,
    /// The tap each planned matrix is whitened by (`None`: plain), by matrix key: one
    /// factorization per matrix, whichever site reads it.
    pub taps: HashMap<String, Option<String>>,
    /// Quantized token tables computed while planning (see [`PqCache`]).
    pub pq_cache: Arc<PqCache>,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            map: HashMap::new(),
            hits: 0,
            misses: 0,
            backend: Arc::new(crate::compute::Cpu),
            svd: crate::compute::SvdOptions::default(),
            survey: None,
            ranks: HashMap::new(),
            notes: Vec::new(),
            surveyed: false,
            original_values: u32::MAX,
            whiten: None,
            taps: HashMap::new(),
            pq_cache: Arc::new(PqCache::default()),
        }
    }
}

impl Memo {
    /// The result stored under `key` (see [`lowrank_key`]; the compact form of a `lowrank`
    /// result is under `compact:` + its key).
    pub fn get(&self, key: &str) -> Option<&Val> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Store the hot form of a token table (see [`hot_key`]) for `lowrank_hot`.
    pub fn insert_hot(&mut self, matrix_key: &str, form: Val, note: Note) {
        self.map.insert(hot_key(matrix_key), (form, Some(note)));
    }

    /// Store the quantized form of a token table (see [`pq_key`]) for `pq`.
    pub fn insert_pq(&mut self, matrix_key: &str, form: Val, note: Note) {
        self.map.insert(pq_key(matrix_key), (form, Some(note)));
    }

    /// Store a precomputed result (batched factorization) under the key `lowrank` would use.
    pub fn insert_lowrank(
        &mut self,
        matrix_key: &str,
        rank: usize,
        tap: Option<&str>,
        factors: Val,
        note: Note,
    ) {
        self.map
            .insert(lowrank_key(matrix_key, rank, tap), (factors, Some(note)));
    }
}

/// The memo key of the quantized form `pq` reads (the engine computes it while planning).
pub fn pq_key(matrix_key: &str) -> String {
    format!("pq:{matrix_key}")
}

/// The memo key of the hot form `lowrank_hot` reads (the engine computes it while planning).
pub fn hot_key(matrix_key: &str) -> String {
    format!("hot({matrix_key})")
}

/// The memo key of `lowrank(matrix, rank)`; whitened by `tap`'s activations when given.
pub fn lowrank_key(matrix_key: &str, rank: usize, tap: Option<&str>) -> String {
    match tap {
        Some(t) => format!("lowrank({matrix_key},{rank},whiten={t})"),
        None => format!("lowrank({matrix_key},{rank})"),
    }
}

/// Factors `w` (`K × N`, f32 `data`) at `rank` so that the site's outputs on the calibration
/// data are preserved (see [`crate::compute::whiten`]): `stats` = the input's Gram, or a
/// table's token counts. Returns the factors and the note (whose `rel_error` is the output
/// error).
#[allow(clippy::too_many_arguments)]
pub fn whitened_factors(
    backend: &dyn crate::compute::Backend,
    svd: &crate::compute::SvdOptions,
    whiten: &WhitenOptions,
    w: &Tensor,
    data: &[f32],
    name: &str,
    tap: &str,
    stats: SiteStats<'_>,
    rank: usize,
) -> Result<(Val, Note), String> {
    use crate::compute::whiten::output_error;
    let (k, n) = (w.dims[0] as usize, w.dims[1] as usize);
    let fail = |e: &dyn std::fmt::Display| format!("{name} (whitened by '{tap}'): {e}");
    let (m, back) = whiten.target(stats, data, (k, n)).map_err(|e| fail(&e))?;
    let mref = crate::compute::MatrixRef::new(k, n, &m).map_err(|e| fail(&e))?;
    let f = backend
        .lowrank(&[mref], rank, svd)
        .map_err(|e| fail(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| fail(&"no result"))?;
    let (ta, b) = f.balanced();
    let r = f.rank();
    let a = back.apply(ta.data(), r);
    let rel_error = match stats {
        SiteStats::Full(g) => output_error(&g.data, None, data, &a, b.data(), (k, n, r)),
        SiteStats::Counts(c) => counts_error(
            &whiten.row_weights(c, k).map_err(|e| fail(&e))?,
            data,
            &a,
            b.data(),
            (k, n, r),
        ),
    };
    let mut at = Tensor::from_f32(vec![k as i64, r as i64], &a);
    let mut bt = Tensor::from_f32(vec![r as i64, n as i64], b.data());
    let base = stored_base(name);
    at.name = format!("{base}.lowrank_a");
    bt.name = format!("{base}.lowrank_b");
    let note = Note {
        whitened: Some(tap.to_string()),
        method: Some(
            match stats {
                SiteStats::Full(_) => "whitened",
                SiteStats::Counts(_) => "token counts",
            }
            .into(),
        ),
        ..Note::factored("lowrank", name, (k, n), r, rel_error, (r * (k + n)) as u64)
    };
    Ok((
        Val::Tuple(vec![Val::Tensor(Arc::new(at)), Val::Tensor(Arc::new(bt))]),
        note,
    ))
}

/// The quantized form of the token table `w` (`V × D`, f32 `data`) with its `exact` worst
/// rows corrected, as the 6-tuple `pq` returns — codes `[V, M]` uint8, block offsets `[M]`
/// int64 (`s · centroids`), codebook `[M · centroids, width]` f32, the row width `[D]` int64,
/// the correction map `[V]` int32 and the corrections `[exact + 1, D]` f32 (the last row
/// zero), with `w[t] = concat_s codebook[offsets[s] + codes[t, s]] + corr[map[t]]` exact for
/// the corrected rows — and its note (`rel_error` weighted by `weights`, those k-means
/// minimised; `tap` names the counts when they came from calibration data).
pub fn pq_form(
    w: &Tensor,
    data: &[f32],
    name: &str,
    tap: Option<&str>,
    weights: &[f64],
    q: &crate::compute::pq::Quantized,
    exact: usize,
) -> (Val, Note) {
    let (v, d) = (w.dims[0] as usize, w.dims[1] as usize);
    let m = d / q.width.max(1);
    let exact = exact.min(v);
    let den: f64 = data
        .chunks_exact(d.max(1))
        .zip(weights)
        .map(|(row, &wt)| wt * row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum();
    let left = (q.error - q.cut[exact]).max(0.0);
    let rel_error = if den > 0.0 { (left / den).sqrt() } else { 0.0 };
    let base = stored_base(name);
    let mut codes = Tensor::from_raw(
        DType::U8,
        vec![v as i64, m as i64],
        bytes::Bytes::from(q.codes.clone()),
    );
    let offsets: Vec<i64> = (0..m).map(|s| (s * q.centroids) as i64).collect();
    let mut off = Tensor::from_i64(vec![m as i64], &offsets);
    let mut book = Tensor::from_f32(vec![(m * q.centroids) as i64, q.width as i64], &q.codebook);
    let mut dim = Tensor::from_i64(vec![1], &[d as i64]);
    // Corrections: E[t] − Ê[t] for the worst rows, a zero row for the others.
    let mut slot = vec![exact as i32; v];
    let mut corr = vec![0.0f32; (exact + 1) * d];
    for (j, &t) in q.worst[..exact].iter().enumerate() {
        let t = t as usize;
        slot[t] = j as i32;
        for (c, (&x, y)) in corr[j * d..(j + 1) * d]
            .iter_mut()
            .zip(data[t * d..(t + 1) * d].iter().zip(q.row(t)))
        {
            *c = x - y;
        }
    }
    let mut map = Tensor::from_raw(
        DType::I32,
        vec![v as i64],
        bytes::Bytes::from(
            slot.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    let mut rows = Tensor::from_f32(vec![exact as i64 + 1, d as i64], &corr);
    codes.name = format!("{base}.pq_codes");
    off.name = format!("{base}.pq_offsets");
    book.name = format!("{base}.pq_codebook");
    dim.name = format!("{base}.pq_dim");
    map.name = format!("{base}.pq_exact_index");
    rows.name = format!("{base}.pq_exact_rows");
    let note = Note {
        rank: None,
        whitened: tap.map(str::to_string),
        method: tap.map(|_| "token counts".into()),
        pq_width: Some(q.width),
        centroids: Some(q.centroids),
        hot_rows: Some(exact),
        ..Note::factored(
            "pq",
            name,
            (v, d),
            0,
            rel_error,
            crate::compute::pq::pq_params(v, d, q.width, exact),
        )
    };
    (
        Val::Tuple(
            [codes, off, book, dim, map, rows]
                .into_iter()
                .map(|t| Val::Tensor(Arc::new(t)))
                .collect(),
        ),
        note,
    )
}

/// The hot form of the token table `w` (`V × D`, f32 `data`) for `choice` (see
/// [`crate::compute::hot`]): the chosen rows exactly, the others factorized at `choice.rank`
/// with rows weighted as [`WhitenOptions::row_weights`] weights them, as the 5-tuple
/// `lowrank_hot` returns, and the note (its `rel_error` is the count-weighted error over all
/// rows, the hot ones contributing none).
#[allow(clippy::too_many_arguments)]
pub fn hot_factors(
    backend: &dyn crate::compute::Backend,
    svd: &crate::compute::SvdOptions,
    whiten: &WhitenOptions,
    w: &Tensor,
    data: &[f32],
    name: &str,
    tap: &str,
    counts: &[f64],
    choice: &crate::compute::hot::HotChoice,
) -> Result<(Val, Note), String> {
    let (v, d) = (w.dims[0] as usize, w.dims[1] as usize);
    let fail = |e: &dyn std::fmt::Display| format!("{name} (hot rows, counts of '{tap}'): {e}");
    let weights = whiten.row_weights(counts, v).map_err(|e| fail(&e))?;
    let k = choice.rows.len();
    let mut hot_slot = vec![k; v];
    for (s, &t) in choice.rows.iter().enumerate() {
        if t >= v {
            return Err(fail(&format!("row {t} is outside the table")));
        }
        hot_slot[t] = s;
    }
    let cold: Vec<usize> = (0..v).filter(|&t| hot_slot[t] == k).collect();
    let nc = cold.len();
    let r = choice.rank.min(nc).min(d);
    if r == 0 {
        return Err(fail(&"no cold rows to factorize"));
    }
    let cold_weights: Vec<f64> = cold.iter().map(|&t| weights[t]).collect();
    let cold_data: Vec<f32> = cold
        .iter()
        .flat_map(|&t| data[t * d..(t + 1) * d].iter().copied())
        .collect();
    let (target, back) = weighted_rows(&cold_data, d, &cold_weights);
    let mref = crate::compute::MatrixRef::new(nc, d, &target).map_err(|e| fail(&e))?;
    let f = backend
        .lowrank(&[mref], r, svd)
        .map_err(|e| fail(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| fail(&"no result"))?;
    let (ta, b) = f.balanced();
    let r = f.rank();
    // T: the cold rows' left factor, unwhitened, and a zero row for the hot tokens.
    let mut t_rows = back.apply(ta.data(), r);
    t_rows.resize((nc + 1) * r, 0.0);
    let mut h_rows: Vec<f32> = choice
        .rows
        .iter()
        .flat_map(|&t| data[t * d..(t + 1) * d].iter().copied())
        .collect();
    h_rows.resize((k + 1) * d, 0.0);
    let mut cold_slot = vec![nc; v];
    for (c, &t) in cold.iter().enumerate() {
        cold_slot[t] = c;
    }
    let int_map = |m: &[usize]| {
        let b: Vec<u8> = m.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect();
        Tensor::from_raw(DType::I32, vec![v as i64], bytes::Bytes::from(b))
    };
    // Weighted error over every row (hot rows are exact), with the weights the factorization
    // minimised.
    let norm2 = |rows: &mut dyn Iterator<Item = usize>| -> f64 {
        rows.map(|t| {
            weights[t]
                * data[t * d..(t + 1) * d]
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
        })
        .sum()
    };
    let (den_cold, den_all) = (norm2(&mut cold.iter().copied()), norm2(&mut (0..v)));
    let rel_cold = counts_error(
        &cold_weights,
        &cold_data,
        &t_rows[..nc * r],
        b.data(),
        (nc, d, r),
    );
    let rel_error = if den_all > 0.0 {
        rel_cold * (den_cold / den_all).sqrt()
    } else {
        0.0
    };
    let base = stored_base(name);
    let mut hm = int_map(&hot_slot);
    let mut ht = Tensor::from_f32(vec![k as i64 + 1, d as i64], &h_rows);
    let mut cm = int_map(&cold_slot);
    let mut tt = Tensor::from_f32(vec![nc as i64 + 1, r as i64], &t_rows);
    let mut pt = Tensor::from_f32(vec![r as i64, d as i64], b.data());
    hm.name = format!("{base}.hot_index");
    ht.name = format!("{base}.hot_rows");
    cm.name = format!("{base}.cold_index");
    tt.name = format!("{base}.lowrank_a");
    pt.name = format!("{base}.lowrank_b");
    let note = Note {
        whitened: Some(tap.to_string()),
        method: Some("token counts".into()),
        hot_rows: Some(k),
        ..Note::factored(
            "lowrank_hot",
            name,
            (v, d),
            r,
            rel_error,
            crate::compute::hot::hot_params(v, d, k, r),
        )
    };
    Ok((
        Val::Tuple(
            [hm, ht, cm, tt, pt]
                .into_iter()
                .map(|t| Val::Tensor(Arc::new(t)))
                .collect(),
        ),
        note,
    ))
}

/// Factor `w` (K×N, f32, elements `data`) at `rank` into (A = U√S: K×r, B = √S·Vᵀ: r×N) and
/// the note.
pub fn factor_tensors(
    f: &crate::compute::Factors,
    w: &Tensor,
    data: &[f32],
    name: &str,
) -> (Val, Note) {
    let (a, b) = f.balanced();
    let (k, n) = (w.dims[0], w.dims[1]);
    let r = f.rank();
    let norm2 = sum_squares(data);
    let kept: f64 = f.s.iter().map(|&x| (x as f64) * (x as f64)).sum();
    let rel_error = if norm2 > 0.0 {
        ((norm2 - kept).max(0.0) / norm2).sqrt()
    } else {
        0.0
    };
    let mut ta = Tensor::from_f32(vec![k, r as i64], a.data());
    let mut tb = Tensor::from_f32(vec![r as i64, n], b.data());
    let base = stored_base(name);
    ta.name = format!("{base}.lowrank_a");
    tb.name = format!("{base}.lowrank_b");
    let note = Note::factored(
        "lowrank",
        name,
        (k as usize, n as usize),
        r,
        rel_error,
        (r as i64 * (k + n)) as u64,
    );
    (
        Val::Tuple(vec![Val::Tensor(Arc::new(ta)), Val::Tensor(Arc::new(tb))]),
        note,
    )
}

/// `sqrt(Σᵢ cᵢ‖Wᵢ − (A·B)ᵢ‖² / Σᵢ cᵢ‖Wᵢ‖²)`: the relative error of the rows a Gather reads,
/// weighted by `c` (how often the calibration data read them, smoothed:
/// [`WhitenOptions::row_weights`]).
fn counts_error(
    c: &[f64],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    (k, n, r): (usize, usize, usize),
) -> f64 {
    use rayon::prelude::*;
    let (num, den) = (0..k)
        .into_par_iter()
        .map(|i| {
            let ci = c.get(i).copied().unwrap_or(0.0);
            if ci == 0.0 {
                return (0.0, 0.0);
            }
            let (mut e, mut t) = (0.0f64, 0.0f64);
            for j in 0..n {
                let approx: f64 = (0..r)
                    .map(|p| a[i * r + p] as f64 * b[p * n + j] as f64)
                    .sum();
                let x = w[i * n + j] as f64;
                e += (x - approx) * (x - approx);
                t += x * x;
            }
            (ci * e, ci * t)
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        0.0
    }
}

/// A stored-name stem from a constant's description: `h.0.attn.c_attn.weight[:, 32:64]`
/// becomes `h.0.attn.c_attn.weight_32_64` (letters, digits, `.`, `-` and `_` only).
pub fn stored_base(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.trim_matches('\'').chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    let trimmed = out.trim_end_matches('_');
    if trimmed.is_empty() {
        "w".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The description of a slice of `src` (dims `dims`): `src[:, 32:64]`, with the ranges as
/// taken (negative and out-of-range bounds resolved as Slice resolves them; a step ≠ 1 shown
/// as `s:e:step`).
fn slice_name(
    src: &str,
    dims: &[i64],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> String {
    let r = dims.len() as i64;
    let mut parts = vec![":".to_string(); dims.len()];
    for (i, (&s, &e)) in starts.iter().zip(ends).enumerate() {
        let axis = axes.and_then(|a| a.get(i).copied()).unwrap_or(i as i64);
        let axis = if axis < 0 { axis + r } else { axis };
        let Some(&d) = usize::try_from(axis).ok().and_then(|a| dims.get(a)) else {
            continue;
        };
        let step = steps.and_then(|s| s.get(i).copied()).unwrap_or(1);
        let clamp = |x: i64| {
            let x = if x < 0 { x.saturating_add(d) } else { x };
            if step > 0 {
                x.clamp(0, d)
            } else {
                x.clamp(-1, d - 1)
            }
        };
        let (s, e) = (clamp(s), clamp(e));
        parts[axis as usize] = if step == 1 {
            format!("{s}:{e}")
        } else {
            format!("{s}:{e}:{step}")
        };
    }
    format!("{}[{}]", src.trim_matches('\''), parts.join(", "))
}

/// `Σ x²` in `f64`, over fixed chunks in parallel, the partial sums added in chunk order (the
/// same result for any thread count).
fn sum_squares(d: &[f32]) -> f64 {
    use rayon::prelude::*;
    let parts: Vec<f64> = d.par_chunks(1 << 16).map(lanes_sum_squares).collect();
    parts.iter().sum()
}

/// `Σ x²` in `f64` over 8 independent lanes (so that the loop vectorizes; a single running sum
/// cannot be reordered), the lanes added in a fixed order: deterministic.
fn lanes_sum_squares(c: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = c.chunks_exact(8);
    for x in &mut it {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += (v as f64) * (v as f64);
        }
    }
    let tail: f64 = it
        .remainder()
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// Evaluation context for one match.
pub struct Eval<'a> {
    pub g: &'a Graph,
    pub b: Bindings,
    pub patch: Patch,
    pub memo: &'a mut Memo,
    /// Position of the matched constant in stored order (for `stored`), if the root is one.
    pub root_order: Option<usize>,
    /// Position of every initializer in stored order.
    pub order: &'a HashMap<ValueId, usize>,
}

type R<T> = Result<T, String>;

impl Eval<'_> {
    /// Run the clauses after `match` in order. `Err` is a near-miss reason.
    pub fn clauses(&mut self, clauses: &[Clause], src: &dyn Fn(&Expr) -> String) -> R<()> {
        let mut requires = Vec::new();
        for c in clauses {
            match c {
                Clause::Where(e) => {
                    if !self.truth(e)? {
                        return Err(format!(
                            "where {} is false{}",
                            src(e),
                            self.explain_false(e, src)
                        ));
                    }
                }
                Clause::Let { names, value, .. } => {
                    let v = self.expr(value)?;
                    if names.len() == 1 {
                        self.b.set(&names[0].name, v);
                    } else {
                        match v {
                            Val::Tuple(items) | Val::List(items) if items.len() == names.len() => {
                                for (n, item) in names.iter().zip(items) {
                                    self.b.set(&n.name, item);
                                }
                            }
                            other => {
                                return Err(format!(
                                    "let needs {} values, got a {}",
                                    names.len(),
                                    other.kind()
                                ))
                            }
                        }
                    }
                }
                Clause::Emit { targets, value, .. } => {
                    let v = self.expr(value)?;
                    let values: Vec<Val> = if targets.len() == 1 {
                        vec![v]
                    } else {
                        self.items(v, targets.len())?
                    };
                    for (t, v) in targets.iter().zip(values) {
                        match self.b.get(&t.name).cloned() {
                            Some(Val::Value(target)) => self.patch.emits.push((target, v)),
                            Some(Val::List(outs)) => {
                                let vs = self.items(v, outs.len())?;
                                for (o, v) in outs.iter().zip(vs) {
                                    if let Val::Value(target) = o {
                                        self.patch.emits.push((*target, v));
                                    }
                                }
                            }
                            Some(Val::None) => {}
                            _ => return Err(format!("'{}' is not a matched value", t.name)),
                        }
                    }
                }
                Clause::Require(e) => requires.push(e),
            }
        }
        for e in requires {
            if !self.truth(e)? {
                return Err(format!(
                    "require {} is false{}",
                    src(e),
                    self.explain_false(e, src)
                ));
            }
        }
        Ok(())
    }

    fn items(&self, v: Val, n: usize) -> R<Vec<Val>> {
        match v {
            Val::List(items) | Val::Tuple(items) if items.len() == n => Ok(items),
            Val::List(items) | Val::Tuple(items) => {
                Err(format!("{} values for {n} targets", items.len()))
            }
            other => Err(format!("a {} for {n} targets", other.kind())),
        }
    }

    /// For a false comparison, the values of both sides (`: 4096 < 65536`).
    /// Why the condition `e` (known false) is false: for a conjunction, the first false part
    /// (`(K * N >= min_size is false: 176 vs 1024)`); for a comparison, both sides' values.
    fn explain_false(&mut self, e: &Expr, src: &dyn Fn(&Expr) -> String) -> String {
        let mut leaf = e;
        while let ExprKind::Binary(BinaryOp::And, a, b) = &leaf.kind {
            leaf = if self.truth(a) == Ok(false) { a } else { b };
        }
        let values = match &leaf.kind {
            ExprKind::Binary(op, a, b) if !matches!(op, BinaryOp::And | BinaryOp::Or) => {
                match (self.expr(a), self.expr(b)) {
                    (Ok(x), Ok(y)) => Some(format!("{} vs {}", show(self.g, &x), show(self.g, &y))),
                    _ => None,
                }
            }
            _ => None,
        };
        match (std::ptr::eq(leaf, e), values) {
            (true, Some(v)) => format!(" ({v})"),
            (true, None) => String::new(),
            (false, Some(v)) => format!(" ({} is false: {v})", src(leaf)),
            (false, None) => format!(" ({} is false)", src(leaf)),
        }
    }

    fn truth(&mut self, e: &Expr) -> R<bool> {
        match self.expr(e)? {
            Val::Bool(b) => Ok(b),
            other => Err(format!("expected a bool, got a {}", other.kind())),
        }
    }

    /// Evaluate an expression.
    pub fn expr(&mut self, e: &Expr) -> R<Val> {
        Ok(match &e.kind {
            ExprKind::Lit(l) => match l {
                Literal::Int(i) => Val::Int(*i),
                Literal::Float(f) => Val::Float(*f),
                Literal::Str(s) => Val::Str(s.clone()),
                Literal::Bool(b) => Val::Bool(*b),
                Literal::Ints(v) => Val::List(v.iter().map(|&i| Val::Int(i)).collect()),
            },
            ExprKind::Name(n) => self
                .b
                .get(&n.name)
                .cloned()
                .ok_or_else(|| format!("'{}' is not bound", n.name))?,
            ExprKind::List(items) => {
                Val::List(items.iter().map(|x| self.expr(x)).collect::<R<_>>()?)
            }
            ExprKind::Plan => Val::Plan,
            ExprKind::None => Val::None,
            ExprKind::Unary(op, x) => {
                let v = self.expr(x)?;
                match (op, v) {
                    (UnaryOp::Not, Val::Bool(b)) => Val::Bool(!b),
                    (UnaryOp::Neg, Val::Int(i)) => Val::Int(-i),
                    (UnaryOp::Neg, Val::Float(f)) => Val::Float(-f),
                    (_, v) => return Err(format!("cannot apply {op:?} to a {}", v.kind())),
                }
            }
            ExprKind::Binary(op, a, b) => {
                if matches!(op, BinaryOp::And | BinaryOp::Or) {
                    let x = self.truth(a)?;
                    if (*op == BinaryOp::And && !x) || (*op == BinaryOp::Or && x) {
                        return Ok(Val::Bool(x));
                    }
                    return Ok(Val::Bool(self.truth(b)?));
                }
                let x = self.expr(a)?;
                let y = self.expr(b)?;
                binary(*op, &x, &y)?
            }
            ExprKind::Call { func, args } => self.call(&func.name, args)?,
            ExprKind::Op { op, attrs, args } => {
                let (domain, op_type) = match op.name.rsplit_once('.') {
                    Some((d, o)) => (d.to_string(), o.to_string()),
                    None => (String::new(), op.name.clone()),
                };
                let mut attributes = Vec::new();
                for (name, x) in attrs {
                    let v = self.expr(x)?;
                    if matches!(v, Val::None) {
                        continue;
                    }
                    attributes.push(Attribute::new(
                        name.name.clone(),
                        to_attr(&v).ok_or_else(|| {
                            format!("attribute {} cannot hold a {}", name.name, v.kind())
                        })?,
                    ));
                }
                let inputs = args.iter().map(|x| self.expr(x)).collect::<R<Vec<_>>>()?;
                self.patch.nodes.push(PlannedNode {
                    op_type,
                    domain,
                    attributes,
                    inputs,
                    outputs: 1,
                });
                Val::Planned(self.patch.nodes.len() - 1, 0)
            }
        })
    }

    fn args(&mut self, args: &[Arg]) -> R<Vec<(Option<String>, Val)>> {
        args.iter()
            .map(|a| {
                Ok((
                    a.name.as_ref().map(|n| n.name.clone()),
                    self.expr(&a.value)?,
                ))
            })
            .collect()
    }

    fn tensor(&self, v: &Val) -> R<Arc<Tensor>> {
        match v {
            Val::Tensor(t) => Ok(t.clone()),
            Val::Value(id) => const_tensor(self.g, *id)
                .map(|t| Arc::new(t.clone()))
                .ok_or_else(|| format!("'{}' is not a stored constant", self.g.value(*id).name)),
            other => Err(format!("expected a constant, got a {}", other.kind())),
        }
    }

    fn ints(&self, v: &Val) -> R<Option<Vec<i64>>> {
        Ok(match v {
            Val::None => None,
            Val::List(items) => Some(
                items
                    .iter()
                    .map(|x| x.as_int().ok_or("expected ints"))
                    .collect::<Result<_, _>>()?,
            ),
            Val::Int(i) => Some(vec![*i]),
            Val::Attr(a) if matches!(**a, AttrValue::Ints(_) | AttrValue::Int(_)) => match &**a {
                AttrValue::Ints(v) => Some(v.clone()),
                AttrValue::Int(i) => Some(vec![*i]),
                _ => None,
            },
            other => Some(
                self.tensor(other)?
                    .to_i64_vec()
                    .ok_or("expected an integer constant")?,
            ),
        })
    }

    fn key(&self, v: &Val) -> String {
        match v {
            // Values of the model as loaded are named by id (stable between the survey and the
            // run); constants created by the pipeline by their content, since the survey and
            // the run create them under different ids.
            Val::Value(id) if id.0 < self.memo.original_values => format!("v{}", id.0),
            Val::Value(id) => match const_tensor(self.g, *id) {
                Some(t) => format!("d{:016x}", t.digest()),
                None => format!("v{}", id.0),
            },
            Val::Tensor(t) => format!("d{:016x}", t.digest()),
            Val::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|x| self.key(x))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => format!("{other:?}"),
        }
    }

    fn memo(
        &mut self,
        kernel: &str,
        args: &[(Option<String>, Val)],
        f: impl FnOnce(&Self) -> R<Val>,
    ) -> R<Val> {
        let key = format!(
            "{kernel}({})",
            args.iter()
                .map(|(n, v)| format!(
                    "{}{}",
                    n.as_deref().map(|n| format!("{n}=")).unwrap_or_default(),
                    self.key(v)
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        if let Some((v, _)) = self.memo.map.get(&key) {
            self.memo.hits += 1;
            return Ok(v.clone());
        }
        self.memo.misses += 1;
        let v = f(self)?;
        self.memo.map.insert(key, (v.clone(), None));
        Ok(v)
    }

    fn value_of(&self, v: &Val) -> R<ValueId> {
        match v {
            Val::Value(id) => Ok(*id),
            other => Err(format!("expected a graph value, got a {}", other.kind())),
        }
    }

    fn dims_of(&self, v: &Val) -> R<Vec<i64>> {
        match v {
            Val::Tensor(t) => Ok(t.dims.clone()),
            Val::Value(id) => {
                if let Some(t) = const_tensor(self.g, *id) {
                    return Ok(t.dims.clone());
                }
                let val = self.g.value(*id);
                val.ty()
                    .and_then(|t| t.known_dims())
                    .ok_or_else(|| format!("the shape of '{}' is not fully known", val.name))
            }
            other => Err(format!("expected a value, got a {}", other.kind())),
        }
    }

    fn call(&mut self, func: &str, args: &[Arg]) -> R<Val> {
        // `stored(transpose(X))` looks for an earlier constant that is X transposed without
        // materialising the transpose: candidates are compared element by element.
        if func == "stored" {
            return self.stored(args);
        }
        let a = self.args(args)?;
        let pos = |i: usize, name: &str| -> Option<&Val> {
            a.iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, v)| v)
                .or_else(|| a.get(i).filter(|(n, _)| n.is_none()).map(|(_, v)| v))
        };
        let need = |i: usize, name: &str| {
            pos(i, name)
                .cloned()
                .ok_or_else(|| format!("{func}: missing argument {name}"))
        };
        match func {
            "numel" => Ok(Val::Int(self.dims_of(&need(0, "x")?)?.iter().product())),
            "rank" => Ok(Val::Int(self.dims_of(&need(0, "x")?)?.len() as i64)),
            "dim" => {
                let d = self.dims_of(&need(0, "x")?)?;
                let i = need(1, "axis")?
                    .as_int()
                    .ok_or("dim: axis must be an int")?;
                let k = if i < 0 { i + d.len() as i64 } else { i };
                d.get(k as usize)
                    .map(|&x| Val::Int(x))
                    .ok_or_else(|| format!("dim: axis {i} out of range"))
            }
            "uses" => {
                let v = self.value_of(&need(0, "x")?)?;
                let outputs = self.g.outputs.iter().filter(|&&o| o == v).count();
                Ok(Val::Int((self.g.value(v).uses().len() + outputs) as i64))
            }
            "is_output" => Ok(Val::Bool(
                self.g.outputs.contains(&self.value_of(&need(0, "x")?)?),
            )),
            "len" => match need(0, "x")? {
                Val::List(v) | Val::Tuple(v) => Ok(Val::Int(v.len() as i64)),
                other => Err(format!("len of a {}", other.kind())),
            },
            "name" => match need(0, "x")? {
                Val::Value(v) => Ok(Val::Str(self.g.value(v).name.clone())),
                _ => Ok(Val::Str(String::new())),
            },
            "starts_with" | "ends_with" | "contains" => {
                match (need(0, "s")?, need(1, "pattern")?) {
                    (Val::Str(s), Val::Str(p)) => Ok(Val::Bool(match func {
                        "starts_with" => s.starts_with(&p),
                        "ends_with" => s.ends_with(&p),
                        _ => s.contains(&p),
                    })),
                    _ => Err(format!("{func} takes two strings")),
                }
            }
            "transpose" => {
                let x = need(0, "x")?;
                let perm = pos(1, "perm").cloned().unwrap_or(Val::None);
                self.memo("transpose", &a, |me| {
                    let t = me.tensor(&x)?;
                    let p = me.ints(&perm)?;
                    Ok(Val::Tensor(Arc::new(kernels::transpose(&t, p.as_deref())?)))
                })
            }
            "slice" => {
                let x = need(0, "x")?;
                let (s, e) = (need(1, "starts")?, need(2, "ends")?);
                let ax = pos(3, "axes").cloned().unwrap_or(Val::None);
                let st = pos(4, "steps").cloned().unwrap_or(Val::None);
                self.memo("slice", &a, |me| {
                    let t = me.tensor(&x)?;
                    let s = me.ints(&s)?.ok_or("slice: starts required")?;
                    let e = me.ints(&e)?.ok_or("slice: ends required")?;
                    let ax = me.ints(&ax)?;
                    let st = me.ints(&st)?;
                    let mut out = kernels::slice(&t, &s, &e, ax.as_deref(), st.as_deref())?;
                    out.name = slice_name(
                        &me.describe(&x),
                        &t.dims,
                        &s,
                        &e,
                        ax.as_deref(),
                        st.as_deref(),
                    );
                    Ok(Val::Tensor(Arc::new(out)))
                })
            }
            "concat" => {
                let xs = match need(0, "xs")? {
                    Val::List(v) => v,
                    other => return Err(format!("concat takes a list, got a {}", other.kind())),
                };
                let axis = need(1, "axis")?
                    .as_int()
                    .ok_or("concat: axis must be an int")?;
                self.memo("concat", &a, |me| {
                    let ts = xs.iter().map(|x| me.tensor(x)).collect::<R<Vec<_>>>()?;
                    let refs: Vec<&Tensor> = ts.iter().map(|t| t.as_ref()).collect();
                    Ok(Val::Tensor(Arc::new(kernels::concat(&refs, axis)?)))
                })
            }
            "split" => {
                let x = need(0, "x")?;
                let axis = pos(1, "axis").and_then(Val::as_int).unwrap_or(0);
                let sizes = pos(2, "sizes").cloned().unwrap_or(Val::None);
                let n = pos(3, "n").and_then(Val::as_int).unwrap_or(1).max(1) as usize;
                self.memo("split", &a, |me| {
                    let t = me.tensor(&x)?;
                    let s = me.ints(&sizes)?;
                    let parts = kernels::split(&t, axis, s.as_deref(), n)?;
                    Ok(Val::List(
                        parts
                            .into_iter()
                            .map(|p| Val::Tensor(Arc::new(p)))
                            .collect(),
                    ))
                })
            }
            "energy" => {
                let p = need(0, "p")?
                    .as_float()
                    .ok_or("energy: p must be a number")?;
                if !(0.0..=1.0).contains(&p) || p == 0.0 {
                    return Err(format!("energy({p}): p must be in (0, 1]"));
                }
                Ok(Val::Energy(p))
            }
            "lowrank" | "lowrank_compact" | "lowrank_hot" | "pq" => {
                let x = need(0, "w")?;
                let spec = match need(1, "rank")? {
                    Val::Plan => RankSpec::Plan,
                    Val::Energy(p) => RankSpec::Energy(p),
                    v => match v.as_int() {
                        Some(r) if r >= 1 => RankSpec::Fixed(r as usize),
                        _ => {
                            return Err(format!(
                                "lowrank: rank must be a positive int, plan or energy(p), got {}",
                                show(self.g, &v)
                            ))
                        }
                    },
                };
                let tap = match pos(2, "whiten") {
                    None | Some(Val::None) => None,
                    Some(v) => {
                        let id = self.value_of(v)?;
                        Some(self.g.value(id).name.clone())
                    }
                };
                if func == "lowrank_compact" {
                    self.lowrank_compact(&x, spec, tap)
                } else if func == "lowrank_hot" {
                    self.lowrank_hot(&x, spec, tap)
                } else if func == "pq" {
                    self.pq(&x, spec, tap)
                } else {
                    self.lowrank(&x, spec, tap, false).map(|(v, _)| v)
                }
            }
            "op" => {
                let v = self.value_of(&need(0, "x")?)?;
                Ok(Val::Str(
                    self.g
                        .producer(v)
                        .map(|(n, _)| self.g.node(n).op_type.clone())
                        .unwrap_or_default(),
                ))
            }
            "input" => {
                let v = self.value_of(&need(0, "x")?)?;
                let i = need(1, "i")?.as_int().ok_or("input: i must be an int")?;
                let (n, _) = self.g.producer(v).ok_or_else(|| {
                    format!("'{}' is not an operation's output", self.g.value(v).name)
                })?;
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.g.node(n).input(i))
                    .map(Val::Value)
                    .ok_or_else(|| {
                        format!(
                            "the operation defining '{}' has no input {i}",
                            self.g.value(v).name
                        )
                    })
            }
            "take" => {
                let x = need(0, "x")?;
                let idx = need(1, "indices")?;
                let axis = need(2, "axis")?
                    .as_int()
                    .ok_or("take: axis must be an int")?;
                let name = match &x {
                    Val::Value(v) => Some(format!("{}.pruned", self.g.value(*v).name)),
                    _ => None,
                };
                self.memo("take", &a, |me| {
                    let t = me.tensor(&x)?;
                    let i = me.ints(&idx)?.ok_or("take: indices required")?;
                    let mut out = kernels::take(&t, &i, axis)?;
                    if let Some(n) = name {
                        out.name = n;
                    }
                    Ok(Val::Tensor(Arc::new(out)))
                })
            }
            "mask" => {
                let x = need(0, "w")?;
                let s = need(1, "sparsity")?
                    .as_float()
                    .ok_or("mask: sparsity must be a number")?;
                let pattern = match pos(2, "pattern") {
                    None | Some(Val::None) => "unstructured".to_string(),
                    Some(Val::Str(p)) => p.clone(),
                    Some(other) => {
                        return Err(format!(
                            "mask: pattern must be a string, got a {}",
                            other.kind()
                        ))
                    }
                };
                let key = format!("mask({},{s},{pattern})", self.key(&x));
                self.memo_noted(key, |me| {
                    let t = me.tensor(&x)?;
                    let (m, note) = super::prune::mask(
                        me.memo.backend.as_ref(),
                        &t,
                        s,
                        &pattern,
                        &me.name_of(&x),
                    )?;
                    Ok((Val::Tensor(Arc::new(m)), note))
                })
            }
            "neurons" => {
                let (up, down) = (need(0, "up")?, need(1, "down")?);
                let s = need(2, "sparsity")?
                    .as_float()
                    .ok_or("neurons: sparsity must be a number")?;
                let gate = pos(3, "gate").cloned().unwrap_or(Val::None);
                let bias = pos(4, "bias").cloned().unwrap_or(Val::None);
                let key = format!(
                    "neurons({},{},{s},{},{})",
                    self.key(&up),
                    self.key(&down),
                    self.key(&gate),
                    self.key(&bias)
                );
                self.memo_noted(key, |me| {
                    let opt = |v: &Val| match v {
                        Val::None => Ok(None),
                        v => me.tensor(v).map(Some),
                    };
                    let (u, d) = (me.tensor(&up)?, me.tensor(&down)?);
                    let (g, b) = (opt(&gate)?, opt(&bias)?);
                    let block = super::prune::Block {
                        up: &u,
                        down: &d,
                        gate: g.as_deref(),
                        bias: b.as_deref(),
                    };
                    let (t, note) = super::prune::neurons(&block, s, &me.name_of(&down))?;
                    Ok((Val::Tensor(Arc::new(t)), note))
                })
            }
            other => Err(format!("'{other}' is not available in this version of hcc")),
        }
    }

    /// `lowrank` in the compact form: `(A', Z, cols)` (see [`crate::compute::whiten::compact`]);
    /// the note counts what it stores.
    fn lowrank_compact(&mut self, x: &Val, spec: RankSpec, tap: Option<String>) -> R<Val> {
        let (ab, key) = self.lowrank(x, spec, tap, true)?;
        let (a, b) = match &ab {
            Val::Tuple(v) if v.len() == 2 => match (&v[0], &v[1]) {
                (Val::Tensor(a), Val::Tensor(b)) => (a.clone(), b.clone()),
                _ => return Err("lowrank_compact: factors are not constants".into()),
            },
            _ => return Err("lowrank_compact: no factors".into()),
        };
        let (k, r, n) = (a.dims[0], a.dims[1], b.dims[1]);
        if self.memo.survey.is_none() {
            if let Some(note) = self.memo.notes.last_mut() {
                note.kernel = "lowrank_compact".into();
                note.params_after = (r * (k + n - r) + n) as u64;
            }
        }
        let ckey = format!("compact:{key}");
        if let Some((v, _)) = self.memo.map.get(&ckey) {
            return Ok(v.clone());
        }
        let (a2, z, cols) = if self.memo.survey.is_some() {
            // Placeholders of the right shapes.
            (
                vec![0.0f32; (k * r) as usize],
                vec![0.0f32; (r * (n - r)) as usize],
                (0..n as usize).collect(),
            )
        } else {
            let ad = a.as_f32().ok_or("lowrank_compact: not f32")?;
            let bd = b.as_f32().ok_or("lowrank_compact: not f32")?;
            crate::compute::whiten::compact(&ad, &bd, (k as usize, r as usize, n as usize))
                .map_err(|e| format!("lowrank_compact of {}: {e}", self.describe(x)))?
        };
        let base = a.name.trim_end_matches(".lowrank_a").to_string();
        let mut ta = Tensor::from_f32(vec![k, r], &a2);
        let mut tz = Tensor::from_f32(vec![r, n - r], &z);
        // int32 indices (Gather takes them): 4 bytes per column.
        let idx: Vec<u8> = cols
            .iter()
            .flat_map(|&c| (c as i32).to_le_bytes())
            .collect();
        let mut tc = Tensor::from_raw(DType::I32, vec![n], bytes::Bytes::from(idx));
        ta.name = format!("{base}.lowrank_a");
        tz.name = format!("{base}.lowrank_z");
        tc.name = format!("{base}.lowrank_cols");
        let v = Val::Tuple(vec![
            Val::Tensor(Arc::new(ta)),
            Val::Tensor(Arc::new(tz)),
            Val::Tensor(Arc::new(tc)),
        ]);
        self.memo.map.insert(ckey, (v.clone(), None));
        Ok(v)
    }

    /// `lowrank` of a token table in the hot form `(hot, H, cold, T, P)` (see
    /// [`crate::compute::hot`]) that the engine chose while planning. Fails (the rule does not
    /// fire) where the plan keeps the plain form: without token counts from `--calib`, or where
    /// hot rows would not approximate the table better within its budget.
    fn lowrank_hot(&mut self, x: &Val, spec: RankSpec, tap: Option<String>) -> R<Val> {
        if self.memo.survey.is_some() {
            let (ab, _) = self.lowrank(x, spec, tap, false)?;
            if let Some(Request { hot, .. }) = self.memo.survey.as_mut().and_then(|r| r.last_mut())
            {
                *hot = true;
            }
            // Placeholders of the right kinds (8 hot rows).
            let (t, b) = match &ab {
                Val::Tuple(v) => match (v.first(), v.get(1)) {
                    (Some(Val::Tensor(a)), Some(Val::Tensor(b))) => (a.clone(), b.clone()),
                    _ => return Err("lowrank_hot: no placeholder factors".into()),
                },
                _ => return Err("lowrank_hot: no placeholder factors".into()),
            };
            let (v, r, d) = (t.dims[0], t.dims[1], b.dims[1]);
            let k = 8.min(v);
            let map = || {
                Tensor::from_raw(
                    DType::I32,
                    vec![v],
                    bytes::Bytes::from(vec![0u8; 4 * v as usize]),
                )
            };
            let h = Tensor::from_f32(vec![k + 1, d], &vec![0.0; ((k + 1) * d) as usize]);
            let c = Tensor::from_f32(vec![v - k + 1, r], &vec![0.0; ((v - k + 1) * r) as usize]);
            return Ok(Val::Tuple(vec![
                Val::Tensor(Arc::new(map())),
                Val::Tensor(Arc::new(h)),
                Val::Tensor(Arc::new(map())),
                Val::Tensor(Arc::new(c)),
                Val::Tensor(b),
            ]));
        }
        let mkey = self.key(x);
        let key = hot_key(&mkey);
        if !self.memo.map.contains_key(&key) {
            return Err(format!(
                "the plan keeps {} in the plain form (hot rows need token counts from --calib, \
                 and are used only where they approximate the table better)",
                self.describe(x)
            ));
        }
        self.memo_noted(key, |_| {
            Err("unreachable: the hot form is in the memo".into())
        })
    }

    /// The quantized form `(codes, offsets, codebook, dim, map, corrections)` of a token table
    /// (see [`pq_form`]) that the engine chose while planning. Fails (the rule does not fire)
    /// where the plan keeps another form: where the hot or plain form approximates the table
    /// better within its budget.
    fn pq(&mut self, x: &Val, spec: RankSpec, tap: Option<String>) -> R<Val> {
        if self.memo.survey.is_some() {
            let (ab, _) = self.lowrank(x, spec, tap, false)?;
            if let Some(r) = self.memo.survey.as_mut().and_then(|r| r.last_mut()) {
                (r.hot, r.pq) = (true, true);
            }
            // Placeholders of the right kinds: one column block as wide as the table.
            let (v, d) = match &ab {
                Val::Tuple(f) => match (f.first(), f.get(1)) {
                    (Some(Val::Tensor(a)), Some(Val::Tensor(b))) => (a.dims[0], b.dims[1]),
                    _ => return Err("pq: no placeholder factors".into()),
                },
                _ => return Err("pq: no placeholder factors".into()),
            };
            let k = (crate::compute::pq::CENTROIDS as i64).min(v);
            let codes = Tensor::from_raw(
                DType::U8,
                vec![v, 1],
                bytes::Bytes::from(vec![0u8; v as usize]),
            );
            let book = Tensor::from_f32(vec![k, d], &vec![0.0; (k * d) as usize]);
            let map = Tensor::from_raw(
                DType::I32,
                vec![v],
                bytes::Bytes::from(vec![0u8; 4 * v as usize]),
            );
            return Ok(Val::Tuple(
                [
                    codes,
                    Tensor::from_i64(vec![1], &[0]),
                    book,
                    Tensor::from_i64(vec![1], &[d]),
                    map,
                    Tensor::from_f32(vec![1, d], &vec![0.0; d as usize]),
                ]
                .into_iter()
                .map(|t| Val::Tensor(Arc::new(t)))
                .collect(),
            ));
        }
        let key = pq_key(&self.key(x));
        if !self.memo.map.contains_key(&key) {
            return Err(format!(
                "the plan keeps {} in another form (quantization is used only where it \
                 approximates the table best within its budget)",
                self.describe(x)
            ));
        }
        self.memo_noted(key, |_| {
            Err("unreachable: the quantized form is in the memo".into())
        })
    }

    /// The factors `(A, B)` and their memo key.
    fn lowrank(
        &mut self,
        x: &Val,
        spec: RankSpec,
        tap: Option<String>,
        compact: bool,
    ) -> R<(Val, String)> {
        let t = self.tensor(x)?;
        if t.dtype != DType::F32 || t.dims.len() != 2 {
            return Err(format!(
                "lowrank needs a 2-D float constant, {} is {}{:?}",
                show(self.g, x),
                t.dtype,
                t.dims
            ));
        }
        let mkey = self.key(x);
        let name = self.describe(x);
        if let Some(reqs) = &mut self.memo.survey {
            // Record the call and go on with placeholder factors (the survey runs on a copy of
            // the model, so later stages see the structure the real run will give them).
            let (k, n) = (t.dims[0], t.dims[1]);
            reqs.push(Request {
                key: mkey,
                name,
                matrix: t,
                spec,
                tap,
                compact,
                hot: false,
                pq: false,
            });
            self.memo.surveyed = true;
            let r = k.min(n).min(crate::plan::ALIGN as i64);
            let a = Tensor::from_f32(vec![k, r], &vec![0.0; (k * r) as usize]);
            let b = Tensor::from_f32(vec![r, n], &vec![0.0; (r * n) as usize]);
            return Ok((
                Val::Tuple(vec![Val::Tensor(Arc::new(a)), Val::Tensor(Arc::new(b))]),
                format!("survey:{k}x{n}"),
            ));
        }
        let r = match spec {
            RankSpec::Fixed(r) => r,
            RankSpec::Plan | RankSpec::Energy(_) => match self.memo.ranks.get(&mkey) {
                Some(Some(r)) => *r,
                Some(None) => return Err(format!("the plan keeps {name} dense (factorizing would not save enough)")),
                None => return Err(format!("no planned rank for {name}: `rank = plan` needs a budget (--ratio, --max-bytes or a budget line)")),
            },
        };
        let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
        if r > k.min(n) {
            return Err(format!("rank {r} exceeds min({k}, {n})"));
        }
        // Whitened only where calibration covers the tap (else the plain factorization).
        let whiten = self.memo.whiten.clone();
        let tap = match self.memo.taps.get(&mkey) {
            Some(planned) => planned.clone(),
            None => tap,
        };
        let stats = whiten.as_ref().and_then(|w| w.site(tap.as_deref(), k));
        let key_tap = stats.and(tap.as_deref());
        let key = lowrank_key(&mkey, r, key_tap);
        self.memo_noted(key.clone(), |me| {
            let data = t.as_f32().ok_or("lowrank: not f32")?;
            if let (Some(stats), Some(tap), Some(wo)) = (stats, key_tap, whiten.as_ref()) {
                return whitened_factors(
                    me.memo.backend.as_ref(),
                    &me.memo.svd,
                    wo,
                    &t,
                    &data,
                    &name,
                    tap,
                    stats,
                    r,
                );
            }
            let w = crate::compute::MatrixRef::new(k, n, &data).map_err(|e| e.to_string())?;
            let f = me
                .memo
                .backend
                .lowrank(&[w], r, &me.memo.svd)
                .map_err(|e| e.to_string())?;
            let f = f.into_iter().next().ok_or("lowrank: no result")?;
            Ok(factor_tensors(&f, &t, &data, &name))
        })
        .map(|v| (v, key))
    }

    /// The name of a graph value, or a description of a computed constant.
    /// What a constant is, for notes and stored names: a graph value's name, the name a kernel
    /// gave its result (e.g. `W[:, 32:64]` for a slice of `W`), else its type.
    fn describe(&self, v: &Val) -> String {
        match v {
            Val::Value(id) => self.g.value(*id).name.clone(),
            Val::Tensor(t) if !t.name.is_empty() => t.name.clone(),
            other => show(self.g, other),
        }
    }

    fn name_of(&self, v: &Val) -> String {
        match v {
            Val::Value(id) => self.g.value(*id).name.clone(),
            other => show(self.g, other),
        }
    }

    /// Memoise a kernel that records a note: a hit records the note again, marked `shared`
    /// from the second site on (a tied constant is transformed and stored once).
    fn memo_noted(&mut self, key: String, f: impl FnOnce(&Self) -> R<(Val, Note)>) -> R<Val> {
        if let Some((v, note)) = self.memo.map.get(&key) {
            self.memo.hits += 1;
            if let Some(mut note) = note.clone() {
                note.shared = self.seen(&key);
                self.memo.notes.push(note);
            }
            let v = v.clone();
            self.mark_seen(&key);
            return Ok(v);
        }
        self.memo.misses += 1;
        let (v, note) = f(self)?;
        self.memo
            .map
            .insert(key.clone(), (v.clone(), Some(note.clone())));
        self.memo.notes.push(note);
        self.mark_seen(&key);
        Ok(v)
    }

    fn seen(&self, key: &str) -> bool {
        self.memo.map.contains_key(&format!("seen:{key}"))
    }

    fn mark_seen(&mut self, key: &str) {
        self.memo
            .map
            .insert(format!("seen:{key}"), (Val::None, None));
    }

    fn stored(&mut self, args: &[Arg]) -> R<Val> {
        let arg = args.first().ok_or("stored: missing argument")?;
        let root_order = self.root_order.unwrap_or(usize::MAX);
        let earlier = |g: &Graph, dtype: DType, dims: &[i64]| -> Vec<ValueId> {
            let mut c: Vec<(usize, ValueId)> = g
                .initializers()
                .iter()
                .filter_map(|&v| {
                    let o = *self.order.get(&v)?;
                    match &g.value(v).def {
                        ValueDef::Initializer(t)
                            if o < root_order
                                && t.dtype == dtype
                                && t.dims == dims
                                && !g.inputs.contains(&v) =>
                        {
                            Some((o, v))
                        }
                        _ => None,
                    }
                })
                .collect();
            c.sort();
            c.into_iter().map(|(_, v)| v).collect()
        };
        // Fast path: stored(transpose(X)) for 2-D X.
        if let ExprKind::Call { func, args: inner } = &arg.value.kind {
            if func.name == "transpose" && inner.len() == 1 {
                let x = self.expr(&inner[0].value)?;
                let t = self.tensor(&x)?;
                if t.dims.len() == 2 {
                    let want = [t.dims[1], t.dims[0]];
                    for c in earlier(self.g, t.dtype, &want) {
                        if let ValueDef::Initializer(ct) = &self.g.value(c).def {
                            if crate::report::inspect::is_transpose(ct, &t) {
                                return Ok(Val::Value(c));
                            }
                        }
                    }
                    return Err(format!(
                        "no constant stored before it equals transpose({})",
                        show(self.g, &x)
                    ));
                }
            }
        }
        let x = self.expr(&arg.value)?;
        let t = self.tensor(&x)?;
        for c in earlier(self.g, t.dtype, &t.dims) {
            if Some(c) == self.value_of(&x).ok() {
                continue;
            }
            if let ValueDef::Initializer(ct) = &self.g.value(c).def {
                if ct.data == t.data {
                    return Ok(Val::Value(c));
                }
            }
        }
        Err(format!(
            "no constant stored before it equals {}",
            show(self.g, &x)
        ))
    }
}

/// Binary operators on ints, floats, strings, bools.
fn binary(op: BinaryOp, x: &Val, y: &Val) -> R<Val> {
    use BinaryOp::*;
    if let (Some(a), Some(b), true) = (
        x.as_int(),
        y.as_int(),
        !matches!(x, Val::Float(_)) && !matches!(y, Val::Float(_)),
    ) {
        return Ok(match op {
            Add => Val::Int(a.checked_add(b).ok_or("integer overflow")?),
            Sub => Val::Int(a.checked_sub(b).ok_or("integer overflow")?),
            Mul => Val::Int(a.checked_mul(b).ok_or("integer overflow")?),
            Div => Val::Int(a.checked_div(b).ok_or("division by zero")?),
            Rem => Val::Int(a.checked_rem(b).ok_or("division by zero")?),
            cmp => Val::Bool(compare(cmp, &a, &b)?),
        });
    }
    if let (Some(a), Some(b)) = (x.as_float(), y.as_float()) {
        return Ok(match op {
            Add => Val::Float(a + b),
            Sub => Val::Float(a - b),
            Mul => Val::Float(a * b),
            Div => Val::Float(a / b),
            Rem => Val::Float(a % b),
            cmp => Val::Bool(compare(cmp, &a, &b)?),
        });
    }
    match (op, x, y) {
        (Eq, Val::Str(a), Val::Str(b)) => Ok(Val::Bool(a == b)),
        (Ne, Val::Str(a), Val::Str(b)) => Ok(Val::Bool(a != b)),
        (Eq, Val::Bool(a), Val::Bool(b)) => Ok(Val::Bool(a == b)),
        (Ne, Val::Bool(a), Val::Bool(b)) => Ok(Val::Bool(a != b)),
        (Eq, Val::Value(a), Val::Value(b)) => Ok(Val::Bool(a == b)),
        (Ne, Val::Value(a), Val::Value(b)) => Ok(Val::Bool(a != b)),
        (Eq, Val::None, other) | (Eq, other, Val::None) => {
            Ok(Val::Bool(matches!(other, Val::None)))
        }
        (Ne, Val::None, other) | (Ne, other, Val::None) => {
            Ok(Val::Bool(!matches!(other, Val::None)))
        }
        _ => Err(format!(
            "cannot apply {op:?} to a {} and a {}",
            x.kind(),
            y.kind()
        )),
    }
}

/// A comparison operator applied to two numbers of one kind.
fn compare<T: PartialOrd>(op: BinaryOp, a: &T, b: &T) -> R<bool> {
    use BinaryOp::*;
    Ok(match op {
        Eq => a == b,
        Ne => a != b,
        Lt => a < b,
        Le => a <= b,
        Gt => a > b,
        Ge => a >= b,
        other => return Err(format!("{other:?} is not a comparison")),
    })
}

/// An attribute from a value (for emitted operations).
fn to_attr(v: &Val) -> Option<AttrValue> {
    Some(match v {
        Val::Int(i) => AttrValue::Int(*i),
        Val::Float(f) => AttrValue::Float(*f as f32),
        Val::Bool(b) => AttrValue::Int(*b as i64),
        Val::Str(s) => AttrValue::String(bytes::Bytes::from(s.clone().into_bytes())),
        Val::Attr(a) => (**a).clone(),
        Val::List(items) => {
            if let Some(ints) = items.iter().map(Val::as_int).collect::<Option<Vec<_>>>() {
                AttrValue::Ints(ints)
            } else {
                AttrValue::Floats(
                    items
                        .iter()
                        .map(|x| x.as_float().map(|f| f as f32))
                        .collect::<Option<Vec<_>>>()?,
                )
            }
        }
        Val::Tensor(t) => AttrValue::Tensor((**t).clone()),
        _ => return None,
    })
}

/// A value, shown for reports: names for graph values, type and shape for new constants.
pub fn show(g: &Graph, v: &Val) -> String {
    match v {
        Val::Int(i) => i.to_string(),
        Val::Float(f) => f.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Str(s) => format!("{s:?}"),
        Val::None => "none".into(),
        Val::Value(id) => format!("'{}'", g.value(*id).name),
        Val::Tensor(t) => format!("{}{:?}", t.dtype, t.dims),
        Val::Planned(i, _) => format!("operation #{i}"),
        Val::List(items) | Val::Tuple(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|x| show(g, x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Val::Attr(a) => format!("{a:?}"),
        Val::Plan => "plan".into(),
        Val::Energy(p) => format!("energy({p})"),
    }
}
