//! Calibration: statistics of a model's activations on real data, for the rewrites that preserve
//! what the model computes on that data (whitened low-rank factorization).
//!
//! [`collect`] runs the original model in-process (tract) on calibration sequences with the
//! requested values ("taps": the inputs of the sites a rule matched) as its only outputs, and
//! accumulates, per tap, the Gram matrix `XᵀX` of its rows (every leading dim flattened; `K` is
//! the last dim): each batch's product in f32 (faer), summed across batches in f64, so memory
//! is bounded by the Grams, not by the data. While the Grams of one batch are summed (all
//! cores), tract runs the next.
//!
//! Sequences (see [`CalibOptions`]): a text file with a HuggingFace tokenizer, or a `.npy` file
//! of token ids (int32/int64, `[sequences, len]` or one flat stream).
//! - causal LMs and `.npy` streams: windows of `seq_len` tokens every `stride` tokens, no special
//!   tokens, at most `max_chunks` windows;
//! - encoders: the text's non-empty lines with the tokenizer's special tokens, each truncated to
//!   `seq_len`, padded (mask 0, padded rows left out of every Gram) to the longest, until
//!   `max_chunks · seq_len` tokens are read.
//!
//! Token ids read by a `Gather` are counted, not run through a Gram (the Gram of one-hot rows is
//! the diagonal of counts). The model's token-id input is counted over the whole data — every
//! window or line, not only the `max_chunks` that are run — because counting needs no model run
//! and a table has far more rows than a few thousand tokens reach.
//!
//! The Grams of the original are cached on disk (safetensors, lower triangles in f64) under a key
//! made of the model file's contents, the token ids and masks: a second compile of the same model
//! with the same data reads them back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::inputs::{self, InputPlan};
use super::runner::Runner;
use super::text::{classify, encode, feed, load_tokenizer, tract_err};
use super::EvalError;
use super::TextKind;
use crate::rewrite::{Progress, ProgressSink};

/// Where calibration data comes from and how it is cut.
#[derive(Clone, Debug)]
pub struct CalibOptions {
    /// A text file (needs `tokenizer`) or a `.npy` file of token ids.
    pub data: PathBuf,
    /// The HuggingFace `tokenizer.json` for a text file.
    pub tokenizer: Option<PathBuf>,
    /// Tokens per sequence (causal LMs), or the most tokens per line (encoders).
    pub seq_len: usize,
    /// Tokens between the starts of two windows (default: `seq_len`, no overlap).
    pub stride: Option<usize>,
    /// The most windows (causal LMs); encoders read up to `max_chunks · seq_len` tokens.
    pub max_chunks: usize,
    /// Sequences per model run.
    pub batch_size: usize,
    /// Where Grams are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

impl CalibOptions {
    /// The defaults (512 tokens, stride 512, 32 windows = 16,384 tokens, batch 1, no cache).
    pub fn new(data: impl Into<PathBuf>, tokenizer: Option<PathBuf>) -> CalibOptions {
        CalibOptions {
            data: data.into(),
            tokenizer,
            seq_len: 512,
            stride: None,
            max_chunks: 32,
            batch_size: 1,
            cache_dir: None,
        }
    }
}

/// The default cache folder: `$HCC_CACHE`, else `$XDG_CACHE_HOME/hcc`, else `~/.cache/hcc`;
/// calibration statistics go to its `calib/` folder.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("HCC_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("hcc")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/hcc")))?;
    Some(base.join("calib"))
}

/// A symmetric `dim × dim` matrix, row-major, full.
#[derive(Clone, Debug)]
pub struct Gram {
    /// `K`.
    pub dim: usize,
    /// `K · K` elements.
    pub data: Vec<f64>,
}

/// Activation statistics for a set of taps.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    /// The data file.
    pub data: PathBuf,
    /// Sequences run.
    pub sequences: usize,
    /// Tokens that entered the Grams (padding excluded).
    pub tokens: u64,
    /// Tokens counted for the model's token-id input (the whole data; 0 without one).
    pub counted: u64,
    /// Whether the data was read as an encoder's lines (sentences) rather than windows.
    pub encoder: bool,
    /// Seconds spent (load, runs, sums; or reading the cache).
    pub seconds: f64,
    /// Whether the Grams came from the cache.
    pub cached: bool,
    /// `XᵀX` of the original model, per float tap.
    pub grams: BTreeMap<String, Gram>,
    /// Per integer tap (token ids read by a `Gather`): how often each id occurred (padding
    /// excluded), indexed by id.
    pub counts: BTreeMap<String, Vec<f64>>,
}

/// The calibration sequences of a model: token ids (and masks) of equal length.
pub(super) struct Sequences {
    pub(super) len: usize,
    pub(super) ids: Vec<Vec<i64>>,
    /// Per sequence, 1 for real tokens; `None` when every token is real.
    pub(super) masks: Option<Vec<Vec<i64>>>,
    /// Every token of the data as the model would read it (all windows, or all lines), not
    /// only the sequences run: counting them costs no model run, so a token table is weighted
    /// by the whole file. Empty when the model has no token-id input.
    pub(super) all_ids: Vec<i64>,
    /// The graph input that reads token ids (`Fill::TokenIds`), if any.
    pub(super) ids_input: Option<String>,
}

fn data_err(path: &Path, detail: impl Into<String>) -> EvalError {
    EvalError::Text {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Reads a `.npy` file of int32/int64 token ids: `[n]` (one stream) or `[rows, len]`.
fn read_npy_ids(path: &Path) -> Result<(Vec<usize>, Vec<i64>), EvalError> {
    let bytes = std::fs::read(path).map_err(|e| data_err(path, format!("cannot read it: {e}")))?;
    let bad = |d: &str| data_err(path, format!("not a .npy file of token ids: {d}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unknown format version")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let size = if header.contains("'<i8'") {
        8
    } else if header.contains("'<i4'") {
        4
    } else {
        return Err(bad(
            "the element type must be int64 ('<i8') or int32 ('<i4')",
        ));
    };
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran order is not supported"));
    }
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    if shape.is_empty() || shape.len() > 2 {
        return Err(bad("the shape must be [n] or [rows, len]"));
    }
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != n * size {
        return Err(bad(&format!(
            "{} bytes of data for shape {shape:?}, expected {}",
            body.len(),
            n * size
        )));
    }
    let ids = if size == 8 {
        body.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    } else {
        body.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect()
    };
    Ok((shape, ids))
}

/// Windows of `len` tokens every `stride` tokens of `stream`, at most `max` of them.
fn windows(stream: &[i64], len: usize, stride: usize, max: usize) -> Vec<Vec<i64>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start + len <= stream.len() && out.len() < max {
        out.push(stream[start..start + len].to_vec());
        start += stride;
    }
    out
}

pub(super) fn sequences(model: &Path, opts: &CalibOptions) -> Result<Sequences, EvalError> {
    if opts.seq_len < 1 || opts.max_chunks < 1 || opts.batch_size < 1 {
        return Err(EvalError::Options(
            "calibration: --seq-len, --max-chunks and --batch-size must be at least 1".into(),
        ));
    }
    let stride = opts.stride.unwrap_or(opts.seq_len);
    if stride < 1 {
        return Err(EvalError::Options(
            "calibration: --stride must be at least 1".into(),
        ));
    }
    let path = &opts.data;
    let is_npy = path.extension().is_some_and(|e| e == "npy");
    let m = crate::onnx::load(model)?;
    let g = &m.graph;
    let plan = inputs::plan(g, 1, opts.seq_len, None).map_err(|e| EvalError::Inputs {
        path: model.to_path_buf(),
        detail: e.to_string(),
    })?;
    let seqs = if is_npy {
        let (shape, ids) = read_npy_ids(path)?;
        let rows: Vec<Vec<i64>> = match shape.as_slice() {
            [_] => windows(&ids, opts.seq_len, stride, opts.max_chunks),
            [_, len] => ids
                .chunks_exact((*len).max(1))
                .take(opts.max_chunks)
                .map(<[i64]>::to_vec)
                .collect(),
            _ => Vec::new(),
        };
        let len = rows.first().map(Vec::len).unwrap_or(0);
        Sequences {
            len,
            ids: rows,
            masks: None,
            all_ids: ids,
            ids_input: None,
        }
    } else {
        let tok = opts.tokenizer.as_ref().ok_or_else(|| {
            EvalError::Options(format!(
                "calibration text '{}' needs a tokenizer (--tokenizer tokenizer.json)",
                path.display()
            ))
        })?;
        let tokenizer = load_tokenizer(tok)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| data_err(path, format!("cannot read the text: {e}")))?;
        match classify(model, g, &plan)?.kind {
            TextKind::CausalLm => {
                let ids: Vec<i64> = encode(&tokenizer, tok, &text, false)?
                    .into_iter()
                    .map(i64::from)
                    .collect();
                let rows = windows(&ids, opts.seq_len, stride, opts.max_chunks);
                Sequences {
                    len: opts.seq_len,
                    ids: rows,
                    masks: None,
                    all_ids: ids,
                    ids_input: None,
                }
            }
            TextKind::Encoder => {
                let budget = opts.max_chunks * opts.seq_len;
                let mut lines = Vec::new();
                let mut all_ids = Vec::new();
                let mut total = 0;
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let mut ids = encode(&tokenizer, tok, line, true)?;
                    ids.truncate(opts.seq_len);
                    all_ids.extend(ids.iter().map(|&t| i64::from(t)));
                    if total >= budget {
                        continue;
                    }
                    total += ids.len();
                    lines.push(ids.into_iter().map(i64::from).collect::<Vec<_>>());
                }
                let len = lines.iter().map(Vec::len).max().unwrap_or(0);
                let masks = lines
                    .iter()
                    .map(|l| {
                        let mut m = vec![1; l.len()];
                        m.resize(len, 0);
                        m
                    })
                    .collect();
                for l in &mut lines {
                    l.resize(len, 0);
                }
                Sequences {
                    len,
                    ids: lines,
                    masks: Some(masks),
                    all_ids,
                    ids_input: None,
                }
            }
        }
    };
    let mut seqs = seqs;
    seqs.ids_input = plan
        .specs
        .iter()
        .find(|s| s.fill == inputs::Fill::TokenIds)
        .map(|s| s.name.clone());
    if seqs.ids_input.is_none() {
        seqs.all_ids.clear();
    }
    if seqs.ids.is_empty() || seqs.len == 0 {
        return Err(data_err(
            path,
            format!(
                "no calibration sequence: the data is shorter than one window of {} tokens",
                opts.seq_len
            ),
        ));
    }
    let max = seqs.ids.iter().flatten().chain(&seqs.all_ids).max();
    if let (Some(vocab), Some(&max)) = (plan.vocab, max) {
        if max < 0 || max as usize >= vocab {
            return Err(data_err(
                path,
                format!(
                    "token id {max} is outside the model's vocabulary of {vocab} (a tokenizer \
                     or id file for another model?)"
                ),
            ));
        }
    }
    Ok(seqs)
}

/// One batch's tap values: (shape, elements) per tap, and the flat mask of its rows.
type Batch = (Vec<(Vec<usize>, Vec<f32>)>, Option<Vec<i64>>);

/// Runs `models` (one or two) on every batch of `seqs`, tapping `taps`, and hands each batch's
/// values (one entry per model) to `sink` while the next batch runs.
fn stream(
    models: &[&Path],
    taps: &[String],
    seqs: &Sequences,
    batch_size: usize,
    progress: Option<&ProgressSink>,
    mut sink: impl FnMut(Vec<Batch>) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    let graph = crate::onnx::load(models[0])?.graph;
    let plan_for = |b: usize| -> Result<InputPlan, EvalError> {
        inputs::plan(&graph, b, seqs.len, None).map_err(|e| EvalError::Inputs {
            path: models[0].to_path_buf(),
            detail: e.to_string(),
        })
    };
    let n = seqs.ids.len();
    let full = n / batch_size;
    let rest = n % batch_size;
    let mut shapes = vec![(batch_size, full)];
    if rest > 0 {
        shapes.push((rest, 1));
    }
    let plans = shapes
        .iter()
        .map(|&(b, _)| plan_for(b))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = progress {
        p(Progress::Begin {
            phase: "calibration: running the model",
            total: n,
        });
    }
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<Batch>, EvalError>>(1);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut start = 0;
            for ((b, count), plan) in shapes.iter().zip(&plans) {
                let runners = match models
                    .iter()
                    .map(|m| {
                        Runner::load_tapped(m, &plan.specs, Some(taps))
                            .map(|(r, _)| r)
                            .map_err(tract_err(m))
                    })
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for _ in 0..*count {
                    let ids: Vec<i64> = seqs.ids[start..start + b].concat();
                    let mask = seqs.masks.as_ref().map(|m| m[start..start + b].concat());
                    start += b;
                    let feeds = feed(plan, &ids, mask.as_deref());
                    let mut per_model = Vec::with_capacity(runners.len());
                    for (r, m) in runners.iter().zip(models) {
                        match r.run_f32(&feeds) {
                            Ok(v) => per_model.push((v, mask.clone())),
                            Err(e) => {
                                let _ = tx.send(Err(tract_err(m)(e)));
                                return;
                            }
                        }
                    }
                    if tx.send(Ok(per_model)).is_err() {
                        return;
                    }
                }
            }
        });
        for batch in rx {
            sink(batch?)?;
            if let Some(p) = progress {
                p(Progress::Advance(batch_size));
            }
        }
        Ok(())
    })
}

/// The rows of a tap's value (`K` = last dim) that are real tokens, as a row-major `rows × K`
/// f32 block (borrowed when no row is dropped).
pub(super) fn rows<'a>(
    tap: &str,
    (shape, data): &'a (Vec<usize>, Vec<f32>),
    mask: Option<&[i64]>,
    path: &Path,
) -> Result<(usize, std::borrow::Cow<'a, [f32]>), EvalError> {
    let k = *shape.last().unwrap_or(&0);
    if k == 0 || data.len() % k != 0 {
        return Err(EvalError::Mismatch {
            path: path.to_path_buf(),
            detail: format!("value '{tap}' has shape {shape:?}; cannot take its rows"),
        });
    }
    let n = data.len() / k;
    match mask {
        Some(m) if m.contains(&0) => {
            if m.len() != n {
                return Err(EvalError::Mismatch {
                    path: path.to_path_buf(),
                    detail: format!(
                        "value '{tap}' has {n} rows for {} tokens; cannot leave padding out",
                        m.len()
                    ),
                });
            }
            let mut out = Vec::with_capacity(data.len());
            for (r, &keep) in m.iter().enumerate() {
                if keep != 0 {
                    out.extend_from_slice(&data[r * k..(r + 1) * k]);
                }
            }
            Ok((out.len() / k, std::borrow::Cow::Owned(out)))
        }
        _ => Ok((n, std::borrow::Cow::Borrowed(data.as_slice()))),
    }
}

/// `acc += aᵀ·b` for row-major `rows × k` blocks (f32 product, f64 sum); with `lower_only`,
/// only the lower triangle (a Gram, `a == b`).
pub(super) fn add_product(
    acc: &mut [f64],
    a: &[f32],
    b: &[f32],
    rows: usize,
    k: usize,
    lower_only: bool,
) {
    let am = MatRef::from_row_major_slice(a, rows, k);
    let bm = MatRef::from_row_major_slice(b, rows, k);
    let mut p = vec![0.0f32; k * k];
    let dst = MatMut::from_row_major_slice_mut(&mut p, k, k);
    if lower_only {
        use faer::linalg::matmul::triangular::{matmul as tri, BlockStructure};
        tri(
            dst,
            BlockStructure::TriangularLower,
            Accum::Replace,
            am.transpose(),
            BlockStructure::Rectangular,
            bm,
            BlockStructure::Rectangular,
            1.0f32,
            Par::Seq,
        );
    } else {
        faer::linalg::matmul::matmul(dst, Accum::Replace, am.transpose(), bm, 1.0f32, Par::Seq);
    }
    for (a, &x) in acc.iter_mut().zip(&p) {
        *a += x as f64;
    }
}

pub(super) fn mirror_lower(g: &mut [f64], k: usize) {
    for i in 0..k {
        for j in 0..i {
            g[j * k + i] = g[i * k + j];
        }
    }
}

/// Collects `XᵀX` of every tap of `taps` on the original model `model` (see the module docs);
/// from the cache when it holds them.
pub fn collect(
    model: &Path,
    taps: &[String],
    opts: &CalibOptions,
    progress: Option<&ProgressSink>,
) -> Result<Calibration, EvalError> {
    let start = Instant::now();
    let seqs = sequences(model, opts)?;
    let key = cache_key(model, &seqs)?;
    let cache_file = opts
        .cache_dir
        .as_ref()
        .map(|d| d.join(format!("{key:016x}.safetensors")));
    if let Some(file) = &cache_file {
        if let Some((tokens, grams, counts)) = read_cache(file, taps) {
            tracing::info!("calibration statistics from the cache: {}", file.display());
            return Ok(Calibration {
                data: opts.data.clone(),
                sequences: seqs.ids.len(),
                tokens,
                counted: counted(&seqs, taps),
                encoder: seqs.masks.is_some(),
                seconds: start.elapsed().as_secs_f64(),
                cached: true,
                grams,
                counts,
            });
        }
    }
    // Integer taps (token ids) are counted, float taps give Grams.
    let graph = crate::onnx::load(model)?.graph;
    let is_int: Vec<bool> = taps
        .iter()
        .map(|t| {
            graph
                .values()
                .find(|(_, v)| v.name == *t)
                .and_then(|(_, v)| v.ty().and_then(|ty| ty.elem()))
                .is_some_and(|d| !d.is_float())
        })
        .collect();
    drop(graph);
    let mut acc: Vec<Option<Vec<f64>>> = vec![None; taps.len()];
    let mut tokens = 0u64;
    stream(&[model], taps, &seqs, opts.batch_size, progress, |batch| {
        let (values, mask) = &batch[0];
        let counts = acc
            .par_iter_mut()
            .zip(values.par_iter())
            .zip(taps.par_iter().zip(&is_int))
            .map(|((a, v), (tap, &int))| {
                if int {
                    let a = a.get_or_insert_with(Vec::new);
                    for (i, &id) in v.1.iter().enumerate() {
                        if mask.as_ref().is_some_and(|m| m.get(i) == Some(&0)) {
                            continue;
                        }
                        let id = id.max(0.0) as usize;
                        if id >= a.len() {
                            a.resize(id + 1, 0.0);
                        }
                        a[id] += 1.0;
                    }
                    return Ok(None);
                }
                let (n, x) = rows(tap, v, mask.as_deref(), model)?;
                let k = x.len() / n.max(1);
                let a = a.get_or_insert_with(|| vec![0.0; k * k]);
                if a.len() != k * k {
                    return Err(EvalError::Mismatch {
                        path: model.to_path_buf(),
                        detail: format!("value '{tap}' changed width between batches"),
                    });
                }
                add_product(a, &x, &x, n, k, true);
                Ok(Some(n))
            })
            .collect::<Result<Vec<Option<usize>>, _>>()?;
        tokens += counts.iter().flatten().next().copied().unwrap_or(0) as u64;
        Ok(())
    })?;
    let mut grams = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for ((tap, a), &int) in taps.iter().zip(acc).zip(&is_int) {
        let mut data = a.unwrap_or_default();
        if int {
            if seqs.ids_input.as_deref() == Some(tap.as_str()) && !seqs.all_ids.is_empty() {
                // The token-id input itself: the frequencies of every token of the data, not
                // only of those run, scaled to the tokens the Grams saw, so that a table's
                // whitened energies stay in the units of every other site's.
                let run = match &seqs.masks {
                    Some(ms) => ms.iter().flatten().filter(|&&m| m != 0).count(),
                    None => seqs.ids.iter().map(Vec::len).sum(),
                };
                let scale = run as f64 / seqs.all_ids.len() as f64;
                data = count_ids(&seqs.all_ids)
                    .into_iter()
                    .map(|c| c * scale)
                    .collect();
            }
            counts.insert(tap.clone(), data);
            continue;
        }
        let dim = (data.len() as f64).sqrt() as usize;
        mirror_lower(&mut data, dim);
        grams.insert(tap.clone(), Gram { dim, data });
    }
    if let Some(file) = &cache_file {
        if let Err(e) = write_cache(file, tokens, &grams, &counts) {
            tracing::warn!("calibration cache not written ({}): {e}", file.display());
        }
    }
    Ok(Calibration {
        data: opts.data.clone(),
        sequences: seqs.ids.len(),
        tokens,
        counted: counted(&seqs, taps),
        encoder: seqs.masks.is_some(),
        seconds: start.elapsed().as_secs_f64(),
        cached: false,
        grams,
        counts,
    })
}

/// Tokens counted for the token-id input when it is one of `taps` (else 0).
fn counted(seqs: &Sequences, taps: &[String]) -> u64 {
    match &seqs.ids_input {
        Some(name) if taps.contains(name) => seqs.all_ids.len() as u64,
        _ => 0,
    }
}

/// How often each id occurs in `ids` (negative ids are not counted), indexed by id.
fn count_ids(ids: &[i64]) -> Vec<f64> {
    let len = ids.iter().copied().max().map_or(0, |m| m.max(-1) + 1) as usize;
    let mut c = vec![0.0; len];
    for &id in ids {
        if id >= 0 {
            c[id as usize] += 1.0;
        }
    }
    c
}

/// A 64-bit digest of the model file's bytes (8 at a time) and of the sequences.
fn cache_key(model: &Path, seqs: &Sequences) -> Result<u64, EvalError> {
    let file = std::fs::File::open(model).map_err(|e| crate::onnx::ImportError::Io {
        path: model.to_path_buf(),
        source: e,
    })?;
    // SAFETY: read-only map of a file we only read; a concurrent writer could change the digest
    // (a cache miss), not memory safety of this loop over plain bytes.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::onnx::ImportError::Io {
        path: model.to_path_buf(),
        source: e,
    })?;
    const P: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(P).rotate_left(29);
    // Four lanes so the multiply chains overlap.
    let mut lanes = [1u64, 2, 3, 4];
    let chunks = map.chunks_exact(32);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, w) in lanes.iter_mut().zip(c.chunks_exact(8)) {
            *l = mix(
                *l,
                u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
            );
        }
    }
    let mut h = lanes
        .iter()
        .fold(0x6863_632d_6361_6c31u64, |h, &l| mix(h, l));
    for &b in tail {
        h = mix(h, b as u64);
    }
    h = mix(h, map.len() as u64);
    h = mix(h, seqs.len as u64);
    for s in &seqs.ids {
        h = mix(h, s.len() as u64);
        for &t in s {
            h = mix(h, t as u64);
        }
    }
    if let Some(ms) = &seqs.masks {
        for m in ms {
            for &t in m {
                h = mix(h, t as u64);
            }
        }
    }
    // The token counts of the whole data (and which input they are for).
    h = mix(h, seqs.all_ids.len() as u64);
    for &t in &seqs.all_ids {
        h = mix(h, t as u64);
    }
    for b in seqs.ids_input.iter().flat_map(|s| s.bytes()) {
        h = mix(h, b as u64);
    }
    Ok(h)
}

const CACHE_FORMAT: &str = "hcc-calib-2";

/// The cached Grams of `taps`, if the file has all of them.
type Cached = (u64, BTreeMap<String, Gram>, BTreeMap<String, Vec<f64>>);

fn f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn read_cache(file: &Path, taps: &[String]) -> Option<Cached> {
    let bytes = std::fs::read(file).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let info = meta.metadata().as_ref()?;
    if info.get("format").map(String::as_str) != Some(CACHE_FORMAT) {
        return None;
    }
    let tokens: u64 = info.get("tokens")?.parse().ok()?;
    let mut grams = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for tap in taps {
        if let Ok(t) = st.tensor(&format!("counts:{tap}")) {
            if t.dtype() != safetensors::Dtype::F64 {
                return None;
            }
            counts.insert(tap.clone(), f64s(t.data()));
            continue;
        }
        let t = st.tensor(tap).ok()?;
        if t.dtype() != safetensors::Dtype::F64 {
            return None;
        }
        let packed = f64s(t.data());
        // K(K+1)/2 = len.
        let k = (((8 * packed.len() + 1) as f64).sqrt() as usize).saturating_sub(1) / 2;
        if k * (k + 1) / 2 != packed.len() {
            return None;
        }
        let mut data = vec![0.0; k * k];
        let mut it = packed.into_iter();
        for i in 0..k {
            for j in 0..=i {
                data[i * k + j] = it.next()?;
            }
        }
        mirror_lower(&mut data, k);
        grams.insert(tap.clone(), Gram { dim: k, data });
    }
    Some((tokens, grams, counts))
}

fn write_cache(
    file: &Path,
    tokens: u64,
    grams: &BTreeMap<String, Gram>,
    counts: &BTreeMap<String, Vec<f64>>,
) -> std::io::Result<()> {
    let io = |e: safetensors::SafeTensorError| std::io::Error::other(e.to_string());
    let mut packed: Vec<(String, Vec<u8>, usize)> = counts
        .iter()
        .map(|(tap, c)| {
            let bytes = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            (format!("counts:{tap}"), bytes, c.len())
        })
        .collect();
    packed.extend(grams.iter().map(|(tap, g)| {
        let k = g.dim;
        let mut bytes = Vec::with_capacity(k * (k + 1) / 2 * 8);
        for i in 0..k {
            for j in 0..=i {
                bytes.extend_from_slice(&g.data[i * k + j].to_le_bytes());
            }
        }
        (tap.clone(), bytes, k * (k + 1) / 2)
    }));
    let views = packed
        .iter()
        .map(|(tap, bytes, n)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![*n], bytes)
                .map(|v| (tap.clone(), v))
                .map_err(io)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([
        ("format".to_string(), CACHE_FORMAT.to_string()),
        ("tokens".to_string(), tokens.to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(io)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("calib"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_stride_and_limit() {
        let s: Vec<i64> = (0..10).collect();
        assert_eq!(
            windows(&s, 4, 4, 9),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        assert_eq!(
            windows(&s, 4, 3, 2),
            vec![vec![0, 1, 2, 3], vec![3, 4, 5, 6]]
        );
        assert!(windows(&s, 11, 1, 5).is_empty());
    }

    #[test]
    fn npy_ids_are_read_and_bad_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, descr: &str, shape: &str, body: &[u8]| {
            let mut h =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
            h.push_str(&" ".repeat((64 - (11 + h.len()) % 64) % 64));
            h.push('\n');
            let mut out = b"\x93NUMPY\x01\x00".to_vec();
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(body);
            let p = dir.path().join(name);
            std::fs::write(&p, out).unwrap();
            p
        };
        let i32s: Vec<u8> = [5i32, 6, 7, 8, 9, 10]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (shape, ids) = read_npy_ids(&write("a.npy", "<i4", "(2, 3)", &i32s)).unwrap();
        assert_eq!((shape, ids), (vec![2, 3], vec![5, 6, 7, 8, 9, 10]));
        let i64s: Vec<u8> = [1i64, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            read_npy_ids(&write("b.npy", "<i8", "(2,)", &i64s))
                .unwrap()
                .1,
            vec![1, 2]
        );
        for (name, descr, shape, body) in [
            ("f.npy", "<f4", "(2,)", &i64s[..8]),
            ("short.npy", "<i8", "(3,)", &i64s[..]),
            ("rank3.npy", "<i8", "(1, 1, 2)", &i64s[..]),
        ] {
            let e = read_npy_ids(&write(name, descr, shape, body)).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
