//! Fidelity: run the original and the compressed model in-process (tract) on the same seeded
//! inputs and compare their outputs.
//!
//! [`fidelity`] reads the original's graph inputs with [`crate::onnx::load`], plans concrete
//! inputs for them ([`inputs`] says how each is filled), runs both models with tract for
//! [`FidelityOptions::samples`] seeds (`seed`, `seed + 1`, …) and compares every output the two
//! share by name. [`render`] prints the result as a short table; the result serializes to JSON.
//!
//! [`text_eval`] measures quality on real text instead: perplexity for causal language models,
//! sentence-embedding cosine for encoders ([`text`]).
//!
//! tract agrees with onnxruntime on the real models within a few 1e-6 (the integration tests
//! check the metrics against an onnxruntime judge fed the very same inputs).

pub mod calib;
pub mod inputs;
mod runner;
pub mod sensitivity;
pub mod sequential;
mod softmax;
pub mod text;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use inputs::{Fill, InputData, InputPlan, InputSpec, InputTensor};
use runner::{Output, RunError, Runner};
pub use text::{render_text, text_eval, OriginalRuns, TextEval, TextKind, TextOptions};

/// What to feed the models.
#[derive(Clone, Debug)]
pub struct FidelityOptions {
    /// Seed of the first sample; sample `k` uses `seed + k`.
    pub seed: u64,
    /// Batch size used for symbolic batch dims.
    pub batch: usize,
    /// Sequence length used for the other symbolic dims.
    pub seq_len: usize,
    /// Number of input samples; the metrics are averaged over them.
    pub samples: usize,
    /// Vocabulary size to use instead of the one read from the embedding table.
    pub vocab: Option<usize>,
}

impl Default for FidelityOptions {
    fn default() -> Self {
        FidelityOptions {
            seed: 0,
            batch: 1,
            seq_len: 32,
            samples: 2,
            vocab: None,
        }
    }
}

/// Why a fidelity measurement failed; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The options are unusable (a zero batch, sequence length or sample count).
    #[error("invalid fidelity options: {0}")]
    Options(String),
    /// A model could not be read into the IR.
    #[error(transparent)]
    Import(#[from] crate::onnx::ImportError),
    /// The original's inputs cannot be planned (unknown types, no vocabulary).
    #[error("'{path}': cannot build inputs: {detail}")]
    Inputs {
        /// The model.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// tract failed at some stage of loading or running a model.
    #[error("'{path}': tract could not {stage}: {detail}")]
    Tract {
        /// The model.
        path: PathBuf,
        /// What was being done ("load the model", "run the model", …).
        stage: &'static str,
        /// tract's message, with its causes.
        detail: String,
    },
    /// The text file cannot be read, or is too short for one chunk.
    #[error("'{path}': {detail}")]
    Text {
        /// The text file (or the file being written).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The tokenizer file is missing, not a HuggingFace `tokenizer.json`, or does not fit the
    /// model.
    #[error("tokenizer '{path}': {detail}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The model is neither a causal language model nor an encoder, so text evaluation does not
    /// apply.
    #[error("'{path}': cannot evaluate it on text: {detail}")]
    ModelKind {
        /// The model.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The compressed model's outputs do not line up with the original's.
    #[error("'{path}': {detail}")]
    Mismatch {
        /// The compressed model.
        path: PathBuf,
        /// Which output and how.
        detail: String,
    },
}

/// How one output of the compressed model compares with the original's (averaged over the
/// samples, except `max_abs_diff`, the largest over all of them).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OutputFidelity {
    /// The output's name.
    pub name: String,
    /// Its shape for the planned inputs.
    pub shape: Vec<usize>,
    /// ‖a − b‖ / ‖a‖ over the whole tensor (a: original, b: compressed).
    pub rel_error: f64,
    /// max |a − b|.
    pub max_abs_diff: f64,
    /// Mean cosine similarity of the last-dim vectors (per token, for a `[batch, seq, hidden]`
    /// output).
    pub cosine: f64,
    /// For language-model outputs (last dim = vocabulary size): the fraction of positions where
    /// both models' argmax agree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
}

/// Milliseconds spent by each model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timings {
    /// Loading, typing and optimizing the original with tract.
    pub original_load_ms: f64,
    /// Loading, typing and optimizing the compressed model.
    pub compressed_load_ms: f64,
    /// Mean time of one run of the original.
    pub original_run_ms: f64,
    /// Mean time of one run of the compressed model.
    pub compressed_run_ms: f64,
    /// Fastest run of the original.
    pub original_run_min_ms: f64,
    /// Fastest run of the compressed model.
    pub compressed_run_min_ms: f64,
}

/// What was fed to the models.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputsInfo {
    /// Seed of the first sample (sample `k` uses `seed + k`).
    pub seed: u64,
    /// Batch size.
    pub batch: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// Number of samples.
    pub samples: usize,
    /// Vocabulary size, when the model reads token ids.
    pub vocab: Option<usize>,
    /// Each input: name, type, concrete shape and fill.
    pub tensors: Vec<InputSpec>,
}

/// The result of [`fidelity`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fidelity {
    /// The original model.
    pub original: PathBuf,
    /// The compressed model.
    pub compressed: PathBuf,
    /// The inputs.
    pub inputs: InputsInfo,
    /// One entry per output both models have, in the original's order.
    pub outputs: Vec<OutputFidelity>,
    /// The original's outputs the compressed model lacks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_outputs: Vec<String>,
    /// Time per model.
    pub timings: Timings,
}

/// Plans the inputs of the model at `original` (shapes, fills, vocabulary) for `opts`.
pub fn plan_inputs(original: &Path, opts: &FidelityOptions) -> Result<InputPlan, EvalError> {
    Ok(load_original(original, opts)?.0)
}

/// The input plan and the output names of the original.
fn load_original(
    original: &Path,
    opts: &FidelityOptions,
) -> Result<(InputPlan, Vec<String>), EvalError> {
    check_options(opts)?;
    let model = crate::onnx::load(original)?;
    let g = &model.graph;
    let plan =
        inputs::plan(g, opts.batch, opts.seq_len, opts.vocab).map_err(|e| EvalError::Inputs {
            path: original.to_path_buf(),
            detail: e.to_string(),
        })?;
    Ok((plan, output_names(g)))
}

fn check_options(opts: &FidelityOptions) -> Result<(), EvalError> {
    for (what, v) in [
        ("batch", opts.batch),
        ("sequence length", opts.seq_len),
        ("sample count", opts.samples),
    ] {
        if v == 0 {
            return Err(EvalError::Options(format!("the {what} must be at least 1")));
        }
    }
    Ok(())
}

/// The output names of `g`, in graph order.
fn output_names(g: &crate::ir::Graph) -> Vec<String> {
    g.outputs.iter().map(|&v| g.value(v).name.clone()).collect()
}

/// Runs `original` and `compressed` with tract on the same seeded inputs (built from the
/// original's graph inputs, see [`inputs`]) and compares every output they share by name.
///
/// The models run one after the other (the original on every sample first), so peak memory is
/// about one model plus the original's outputs.
pub fn fidelity(
    original: &Path,
    compressed: &Path,
    opts: &FidelityOptions,
) -> Result<Fidelity, EvalError> {
    let (plan, names_a) = load_original(original, opts)?;
    let names_b = output_names(&crate::onnx::load(compressed)?.graph);
    let samples: Vec<Vec<InputTensor>> = (0..opts.samples)
        .map(|k| plan.generate(opts.seed.wrapping_add(k as u64)))
        .collect();

    let tract_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: RunError| EvalError::Tract {
            path: path.clone(),
            stage: e.stage,
            detail: e.detail,
        }
    };

    // The original, on every sample.
    let (runner, original_load_ms) =
        Runner::load(original, &plan.specs).map_err(tract_err(original))?;
    let mut reference = Vec::with_capacity(samples.len());
    let mut times_a = Vec::with_capacity(samples.len());
    for inputs in &samples {
        let (outs, ms) = runner.run(inputs).map_err(tract_err(original))?;
        reference.push(outs);
        times_a.push(ms);
    }
    drop(runner);

    // The compressed model, compared as it goes.
    let (runner, compressed_load_ms) =
        Runner::load(compressed, &plan.specs).map_err(tract_err(compressed))?;
    let pairs: Vec<(usize, usize)> = names_a
        .iter()
        .enumerate()
        .filter_map(|(i, n)| names_b.iter().position(|m| m == n).map(|j| (i, j)))
        .collect();
    let missing_outputs: Vec<String> = names_a
        .iter()
        .filter(|n| !names_b.contains(n))
        .cloned()
        .collect();
    let mut acc: Vec<Acc> = pairs.iter().map(|_| Acc::default()).collect();
    let mut times_b = Vec::with_capacity(samples.len());
    for (inputs, outs_a) in samples.iter().zip(&reference) {
        let (outs_b, ms) = runner.run(inputs).map_err(tract_err(compressed))?;
        times_b.push(ms);
        for (&(i, j), acc) in pairs.iter().zip(&mut acc) {
            let (a, b) = (&outs_a[i], &outs_b[j]);
            if a.shape != b.shape {
                return Err(EvalError::Mismatch {
                    path: compressed.to_path_buf(),
                    detail: format!(
                        "output '{}' has shape {:?}, the original's has {:?}",
                        names_a[i], b.shape, a.shape
                    ),
                });
            }
            acc.add(&compare(a, b, plan.vocab));
        }
    }

    let outputs = pairs
        .iter()
        .zip(acc)
        .map(|(&(i, _), acc)| acc.finish(names_a[i].clone(), reference[0][i].shape.clone()))
        .collect();
    Ok(Fidelity {
        original: original.to_path_buf(),
        compressed: compressed.to_path_buf(),
        inputs: InputsInfo {
            seed: opts.seed,
            batch: opts.batch,
            seq_len: opts.seq_len,
            samples: opts.samples,
            vocab: plan.vocab,
            tensors: plan.specs,
        },
        outputs,
        missing_outputs,
        timings: Timings {
            original_load_ms,
            compressed_load_ms,
            original_run_ms: mean(&times_a),
            compressed_run_ms: mean(&times_b),
            original_run_min_ms: times_a.iter().copied().fold(f64::INFINITY, f64::min),
            compressed_run_min_ms: times_b.iter().copied().fold(f64::INFINITY, f64::min),
        },
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The metrics of one output on one sample.
struct Metrics {
    rel_error: f64,
    max_abs_diff: f64,
    cosine: f64,
    top1: Option<f64>,
}

#[derive(Default)]
struct Acc {
    n: usize,
    rel_error: f64,
    max_abs_diff: f64,
    cosine: f64,
    top1: Option<f64>,
}

impl Acc {
    fn add(&mut self, m: &Metrics) {
        self.n += 1;
        self.rel_error += m.rel_error;
        self.max_abs_diff = self.max_abs_diff.max(m.max_abs_diff);
        self.cosine += m.cosine;
        if let Some(t) = m.top1 {
            *self.top1.get_or_insert(0.0) += t;
        }
    }

    fn finish(self, name: String, shape: Vec<usize>) -> OutputFidelity {
        let n = self.n.max(1) as f64;
        OutputFidelity {
            name,
            shape,
            rel_error: self.rel_error / n,
            max_abs_diff: self.max_abs_diff,
            cosine: self.cosine / n,
            top1_agreement: self.top1.map(|t| t / n),
        }
    }
}

/// |a − b| with NaN on both sides counting as equal and NaN on one side as infinitely far.
fn abs_diff(a: f64, b: f64) -> f64 {
    if a.is_nan() && b.is_nan() || a == b {
        0.0
    } else {
        let d = (a - b).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            d
        }
    }
}

fn compare(a: &Output, b: &Output, vocab: Option<usize>) -> Metrics {
    let (mut diff2, mut norm2, mut max_abs_diff) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let d = abs_diff(x, y);
        diff2 += d * d;
        norm2 += x * x;
        max_abs_diff = max_abs_diff.max(d);
    }
    let rel_error = if diff2 == 0.0 {
        0.0
    } else {
        diff2.sqrt() / norm2.sqrt() // infinite when the original is all zeros
    };

    let last = a.shape.last().copied().unwrap_or(1).max(1);
    let (mut cos_sum, mut vectors, mut agree) = (0.0f64, 0usize, 0usize);
    for (u, v) in a.data.chunks(last).zip(b.data.chunks(last)) {
        vectors += 1;
        let (mut uv, mut uu, mut vv) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in u.iter().zip(v) {
            uv += x * y;
            uu += x * x;
            vv += y * y;
        }
        cos_sum += if u == v {
            1.0
        } else if uu == 0.0 || vv == 0.0 {
            0.0
        } else {
            uv / (uu.sqrt() * vv.sqrt())
        };
        if argmax(u) == argmax(v) {
            agree += 1;
        }
    }
    let vectors_f = vectors.max(1) as f64;
    let is_lm = vocab.is_some_and(|v| v == last && a.shape.len() >= 2);
    Metrics {
        rel_error,
        max_abs_diff,
        cosine: if vectors == 0 {
            1.0
        } else {
            cos_sum / vectors_f
        },
        top1: is_lm.then(|| agree as f64 / vectors_f),
    }
}

/// Index of the first maximum (NaN never wins).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// A short text table of `f`: inputs, one row per output, time per run.
pub fn render(f: &Fidelity) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fidelity of {} against {}",
        f.compressed.display(),
        f.original.display()
    );
    let fills: Vec<String> = f
        .inputs
        .tensors
        .iter()
        .map(|t| {
            let fill = match t.fill {
                Fill::TokenIds => "token ids",
                Fill::Ones => "ones",
                Fill::Zeros => "zeros",
                Fill::Positions => "positions",
                Fill::Normal => "normal",
                Fill::True => "true",
            };
            format!("{} {:?} {fill}", t.name, t.shape)
        })
        .collect();
    let _ = writeln!(
        s,
        "inputs: seed {}, {} sample{} of batch {} x seq {}{}; {}",
        f.inputs.seed,
        f.inputs.samples,
        if f.inputs.samples == 1 { "" } else { "s" },
        f.inputs.batch,
        f.inputs.seq_len,
        f.inputs
            .vocab
            .map(|v| format!(", vocab {v}"))
            .unwrap_or_default(),
        fills.join(", ")
    );
    let rows: Vec<[String; 6]> = f
        .outputs
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                format!("{:?}", o.shape),
                format!("{:.3e}", o.rel_error),
                format!("{:.3e}", o.max_abs_diff),
                format!("{:.6}", o.cosine),
                o.top1_agreement
                    .map(|t| format!("{t:.4}"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "output",
        "shape",
        "rel_error",
        "max_abs_diff",
        "cosine",
        "top1",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[&str]| {
        let mut l = String::new();
        for (k, (c, w)) in cells.iter().zip(widths).enumerate() {
            if k == 0 {
                let _ = write!(l, "{c:<w$}");
            } else {
                let _ = write!(l, "  {c:>w$}");
            }
        }
        l.push('\n');
        l
    };
    s.push_str(&line(&header));
    for r in &rows {
        s.push_str(&line(&r.each_ref().map(String::as_str)));
    }
    if !f.missing_outputs.is_empty() {
        let _ = writeln!(
            s,
            "missing in the compressed model: {}",
            f.missing_outputs.join(", ")
        );
    }
    let t = &f.timings;
    let _ = writeln!(
        s,
        "time per run (tract, mean of {}): original {:.1} ms, compressed {:.1} ms ({:.2}x); \
         load + optimize {:.0} ms / {:.0} ms",
        f.inputs.samples,
        t.original_run_ms,
        t.compressed_run_ms,
        t.original_run_ms / t.compressed_run_ms.max(1e-9),
        t.original_load_ms,
        t.compressed_load_ms
    );
    s
}
