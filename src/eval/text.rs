//! Quality on real text: perplexity for causal language models, sentence-embedding cosine for
//! encoders, with a HuggingFace `tokenizer.json`.
//!
//! [`text_eval`] tells the two kinds apart from the original's signature:
//! - a **causal LM** has a `logits` output (or a rank-3 output whose last dim is the vocabulary)
//!   and reads only token ids, plus optionally an attention mask (filled with ones) and position
//!   ids (`0..n`). The text is tokenized without special tokens (no BOS), cut into
//!   non-overlapping chunks of `seq_len` tokens, and the first `max_chunks` chunks run once each.
//!   The loss is the mean over all `chunks · (seq_len − 1)` predictions (token `t + 1` from the
//!   logits at `t`) of `−log softmax`, computed in f64; perplexity = `exp(loss)`.
//! - an **encoder** has a `last_hidden_state` output (or a rank-3 output that is not over the
//!   vocabulary). The non-empty lines of the text (at most `16 · max_chunks`) are tokenized with
//!   the tokenizer's special tokens (`[CLS]`/`[SEP]`), each truncated to `seq_len` tokens and
//!   padded (mask 0) to the longest; the last hidden state is mean-pooled over the real tokens,
//!   and the original's and the compressed model's embeddings compared by cosine.
//!
//! Each model is loaded and optimized by tract once, for the concrete shape `[1, len]`, and run
//! with the same [`Runner`] as [`super::fidelity`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::inputs::{self, Fill, InputData, InputPlan, InputTensor};
use super::runner::{RunError, Runner};
use super::EvalError;
use crate::ir::{DType, Dim, Graph};

/// What to evaluate on.
#[derive(Clone, Debug)]
pub struct TextOptions {
    /// The text file.
    pub text: PathBuf,
    /// The HuggingFace `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Tokens per chunk (causal LMs) or the most tokens per sentence (encoders).
    pub seq_len: usize,
    /// Number of chunks (causal LMs); encoders read up to `16 · max_chunks` lines.
    pub max_chunks: usize,
    /// Causal LMs: write the evaluated token ids here as a NumPy `.npy` file, int64
    /// `[chunks, seq_len]` (for an external judge).
    pub dump_ids: Option<PathBuf>,
    /// Causal LMs: greedily generate this many tokens with each model from the same prompt
    /// (0: none).
    pub generate: usize,
    /// The prompt for `generate` (default: the first 16 tokens of the text).
    pub prompt: Option<String>,
    /// Causal LMs: chunks of `seq_len` tokens skipped at the start of the text before the
    /// evaluated ones (a compile's strategy scoring skips what calibration read).
    pub skip_chunks: usize,
    /// Encoders: non-empty lines skipped at the start of the text.
    pub skip_lines: usize,
    /// Where the original model's side of a perplexity or similarity run is kept, so that
    /// several compressed models scored against one original on the same text and settings
    /// (`--strategy auto`) run the original once.
    pub original_runs: Option<std::sync::Arc<OriginalRuns>>,
}

/// The original model's results of earlier [`text_eval`] calls, keyed by the original, the
/// text, the tokenizer and every setting that decides what runs.
#[derive(Default)]
pub struct OriginalRuns(std::sync::Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>);

impl std::fmt::Debug for OriginalRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "OriginalRuns({n} kept)")
    }
}

impl OriginalRuns {
    fn get<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        let m = self.0.lock().ok()?;
        m.get(key)?.downcast_ref::<T>().cloned()
    }

    fn put<T: Send + Sync + 'static>(&self, key: String, value: T) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, Arc::new(value));
        }
    }
}

/// The [`OriginalRuns`] key of a run of `what` ("perplexity", "similarity") with `opts`.
fn run_key(what: &str, original: &Path, opts: &TextOptions) -> String {
    format!(
        "{what}|{}|{}|{}|{}|{}|{}|{}",
        original.display(),
        opts.text.display(),
        opts.tokenizer.display(),
        opts.seq_len,
        opts.max_chunks,
        opts.skip_chunks,
        opts.skip_lines
    )
}

impl TextOptions {
    /// The defaults (512 tokens, 8 chunks) for `text` and `tokenizer`.
    pub fn new(text: impl Into<PathBuf>, tokenizer: impl Into<PathBuf>) -> TextOptions {
        TextOptions {
            text: text.into(),
            tokenizer: tokenizer.into(),
            seq_len: 512,
            max_chunks: 8,
            dump_ids: None,
            generate: 0,
            prompt: None,
            skip_chunks: 0,
            skip_lines: 0,
            original_runs: None,
        }
    }
}

/// Which kind of model was evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TextKind {
    /// A causal language model: perplexity.
    CausalLm,
    /// An encoder: sentence-embedding cosine.
    Encoder,
}

/// The result of [`text_eval`]. The perplexity fields are set for causal LMs, the cosine fields
/// for encoders.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TextEval {
    /// Which metric was measured.
    pub kind: TextKind,
    /// The original model.
    pub original: PathBuf,
    /// The compressed model.
    pub compressed: PathBuf,
    /// The text file.
    pub text: PathBuf,
    /// The tokenizer.
    pub tokenizer: PathBuf,
    /// Tokens per chunk (causal LMs) or the sentence length limit (encoders).
    pub seq_len: usize,
    /// Tokens fed to each model (all chunks, or all sentences without padding).
    pub tokens: usize,
    /// Tokens in the whole text (causal LMs: without special tokens).
    pub text_tokens: usize,
    /// Chunks evaluated (causal LMs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
    /// Chunks (causal LMs) or non-empty lines (encoders) skipped at the start of the text.
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped: usize,
    /// Perplexity of the original.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_original: Option<f64>,
    /// Perplexity of the compressed model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_compressed: Option<f64>,
    /// `perplexity_compressed / perplexity_original`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Mean loss (nats per token) of the original.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_original: Option<f64>,
    /// Mean loss (nats per token) of the compressed model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_compressed: Option<f64>,
    /// Sentences compared (encoders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentences: Option<usize>,
    /// Mean cosine of the sentence embeddings (encoders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_mean: Option<f64>,
    /// Smallest cosine of the sentence embeddings (encoders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_min: Option<f64>,
    /// Greedy generation from the same prompt by both models (causal LMs, when asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<Generation>,
    /// Seconds spent on the original (load, optimize, all runs).
    pub original_s: f64,
    /// Seconds spent on the compressed model.
    pub compressed_s: f64,
}

/// Greedy continuations of one prompt by both models.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// The prompt, as decoded from its tokens.
    pub prompt: String,
    /// The original's continuation (decoded).
    pub original: String,
    /// The compressed model's continuation (decoded).
    pub compressed: String,
    /// Tokens generated by each.
    pub tokens: usize,
    /// How many leading generated tokens are identical.
    pub agreeing_prefix: usize,
    /// The prompt's token ids.
    pub prompt_ids: Vec<i64>,
    /// The original's generated token ids.
    pub original_ids: Vec<i64>,
    /// The compressed model's generated token ids.
    pub compressed_ids: Vec<i64>,
}

/// Evaluates `original` and `compressed` on the text of `opts` (see the module docs).
pub fn text_eval(
    original: &Path,
    compressed: &Path,
    opts: &TextOptions,
) -> Result<TextEval, EvalError> {
    if opts.seq_len < 2 {
        return Err(EvalError::Options(
            "the sequence length must be at least 2".into(),
        ));
    }
    if opts.max_chunks == 0 {
        return Err(EvalError::Options(
            "the chunk count must be at least 1".into(),
        ));
    }
    let text = std::fs::read_to_string(&opts.text).map_err(|e| EvalError::Text {
        path: opts.text.clone(),
        detail: format!("cannot read the text: {e}"),
    })?;
    let tokenizer = load_tokenizer(&opts.tokenizer)?;

    let model = crate::onnx::load(original)?;
    let g = &model.graph;
    // Plan for the signature; the sequence length is fixed per kind below.
    let plan = inputs::plan(g, 1, opts.seq_len, None).map_err(|e| EvalError::Inputs {
        path: original.to_path_buf(),
        detail: e.to_string(),
    })?;
    let kind = classify(original, g, &plan)?;
    let compressed_names = super::output_names(&crate::onnx::load(compressed)?.graph);
    let out_name = kind.output.clone();
    let out_b = compressed_names
        .iter()
        .position(|n| *n == out_name)
        .ok_or_else(|| EvalError::Mismatch {
            path: compressed.to_path_buf(),
            detail: format!("has no output '{out_name}' (the original's)"),
        })?;

    let base = TextEval {
        kind: kind.kind,
        original: original.to_path_buf(),
        compressed: compressed.to_path_buf(),
        text: opts.text.clone(),
        tokenizer: opts.tokenizer.clone(),
        seq_len: opts.seq_len,
        tokens: 0,
        text_tokens: 0,
        chunks: None,
        skipped: 0,
        perplexity_original: None,
        perplexity_compressed: None,
        ratio: None,
        loss_original: None,
        loss_compressed: None,
        sentences: None,
        cosine_mean: None,
        cosine_min: None,
        generation: None,
        original_s: 0.0,
        compressed_s: 0.0,
    };
    match kind.kind {
        TextKind::CausalLm => {
            let mut r = perplexity(
                base,
                &text,
                &tokenizer,
                &plan,
                (kind.output_index, out_b),
                opts,
            )?;
            if opts.generate > 0 {
                r.generation = Some(generate(
                    (original, compressed, g),
                    &text,
                    &tokenizer,
                    (kind.output_index, out_b),
                    opts,
                )?);
            }
            Ok(r)
        }
        TextKind::Encoder => {
            if opts.dump_ids.is_some() {
                return Err(EvalError::Options(
                    "--dump-ids applies to causal language models only".into(),
                ));
            }
            similarity(
                base,
                &text,
                &tokenizer,
                (original, &model.graph),
                (kind.output_index, out_b),
                opts,
            )
        }
    }
}

pub(super) fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, EvalError> {
    let err = |detail: String| EvalError::Tokenizer {
        path: path.to_path_buf(),
        detail,
    };
    if !path.is_file() {
        return Err(err(if path.exists() {
            "is not a file".into()
        } else {
            "no such file".into()
        }));
    }
    let mut t = tokenizers::Tokenizer::from_file(path).map_err(|e| {
        err(format!(
            "cannot read it as a HuggingFace tokenizer.json: {e}"
        ))
    })?;
    // Padding and truncation are ours to do (BERT's tokenizer.json pads every text to 128).
    t.with_padding(None);
    t.with_truncation(None)
        .map_err(|e| err(format!("cannot turn off truncation: {e}")))?;
    Ok(t)
}

pub(super) fn encode(
    t: &tokenizers::Tokenizer,
    path: &Path,
    text: &str,
    special: bool,
) -> Result<Vec<u32>, EvalError> {
    t.encode(text, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| EvalError::Tokenizer {
            path: path.to_path_buf(),
            detail: format!("cannot encode the text: {e}"),
        })
}

pub(super) struct Kind {
    pub(super) kind: TextKind,
    /// The evaluated output: name and index among the original's outputs.
    pub(super) output: String,
    output_index: usize,
}

/// Tells a causal LM from an encoder by the original's inputs and outputs.
pub(super) fn classify(path: &Path, g: &Graph, plan: &InputPlan) -> Result<Kind, EvalError> {
    let neither = |detail: String| EvalError::ModelKind {
        path: path.to_path_buf(),
        detail,
    };
    if !plan.specs.iter().any(|s| s.fill == Fill::TokenIds) {
        return Err(neither("it has no token-id input".into()));
    }
    let outputs: Vec<(String, Option<Vec<Dim>>, Option<DType>)> = g
        .outputs
        .iter()
        .map(|&v| {
            let value = g.value(v);
            let ty = value.ty();
            (
                value.name.clone(),
                ty.and_then(|t| t.shape().map(|s| s.to_vec())),
                ty.and_then(|t| t.elem()),
            )
        })
        .collect();
    let last_known = |dims: &Option<Vec<Dim>>| match dims.as_deref() {
        Some([.., Dim::Known(d)]) => Some(*d),
        _ => None,
    };
    let rank3 = |dims: &Option<Vec<Dim>>| dims.as_ref().is_none_or(|d| d.len() == 3);
    let vocab = plan.vocab.map(|v| v as i64);
    let lm_output = outputs
        .iter()
        .position(|(n, d, _)| n == "logits" && rank3(d))
        .or_else(|| {
            outputs.iter().position(|(_, d, e)| {
                vocab.is_some()
                    && last_known(d) == vocab
                    && d.as_ref().is_some_and(|d| d.len() == 3)
                    && e.is_none_or(|e| e.is_float())
            })
        });
    if let Some(i) = lm_output {
        let extra: Vec<&str> = plan
            .specs
            .iter()
            .filter(|s| !matches!(s.fill, Fill::TokenIds | Fill::Ones | Fill::Positions))
            .map(|s| s.name.as_str())
            .collect();
        if !extra.is_empty() {
            return Err(neither(format!(
                "output '{}' looks like language-model logits, but input{} {} cannot be filled \
                 for a causal LM (only token ids, an attention mask and position ids can)",
                outputs[i].0,
                if extra.len() == 1 { "" } else { "s" },
                extra.join(", ")
            )));
        }
        return Ok(Kind {
            kind: TextKind::CausalLm,
            output: outputs[i].0.clone(),
            output_index: i,
        });
    }
    let enc_output = outputs
        .iter()
        .position(|(n, d, _)| n == "last_hidden_state" && rank3(d))
        .or_else(|| {
            outputs.iter().position(|(_, d, e)| {
                d.as_ref().is_some_and(|d| d.len() == 3) && e.is_some_and(|e| e.is_float())
            })
        });
    if let Some(i) = enc_output {
        if let Some(s) = plan.specs.iter().find(|s| s.fill == Fill::Normal) {
            return Err(neither(format!(
                "it looks like an encoder, but it has a float input '{}'",
                s.name
            )));
        }
        return Ok(Kind {
            kind: TextKind::Encoder,
            output: outputs[i].0.clone(),
            output_index: i,
        });
    }
    Err(neither(format!(
        "it is neither a causal language model (an output 'logits' [batch, seq, vocab]) nor an \
         encoder (an output 'last_hidden_state' [batch, seq, dim]); its outputs: {}",
        outputs
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

pub(super) fn tract_err(path: &Path) -> impl Fn(RunError) -> EvalError + '_ {
    move |e| EvalError::Tract {
        path: path.to_path_buf(),
        stage: e.stage,
        detail: e.detail,
    }
}

/// The inputs for one sequence: `ids` (and `mask`) put in the token-id (and mask) inputs, the
/// other inputs as planned (positions `0..n`, zeros).
pub(super) fn feed(plan: &InputPlan, ids: &[i64], mask: Option<&[i64]>) -> Vec<InputTensor> {
    let mut tensors = plan.generate(0);
    for t in &mut tensors {
        match t.spec.fill {
            Fill::TokenIds => t.data = InputData::Int(ids.to_vec()),
            Fill::Ones if !t.spec.dtype.is_float() => {
                if let Some(m) = mask {
                    t.data = InputData::Int(m.to_vec());
                }
            }
            Fill::Ones => {
                if let Some(m) = mask {
                    t.data = InputData::Float(m.iter().map(|&x| x as f64).collect());
                }
            }
            _ => {}
        }
    }
    tensors
}

/// A per-model result and the seconds it took (load, optimize, runs).
type Timed<T> = (T, f64);

/// The same run for both models: `per_model(runner, path, output index)`.
fn both<T: Clone + Send + Sync + 'static>(
    original: &Path,
    compressed: &Path,
    plan: &InputPlan,
    outs: (usize, usize),
    memo: Option<(&OriginalRuns, String)>,
    mut per_model: impl FnMut(&Runner, &Path, usize) -> Result<T, EvalError>,
) -> Result<(Timed<T>, Timed<T>), EvalError> {
    let mut one = |path: &Path, out: usize| {
        let start = Instant::now();
        let (runner, _) = Runner::load(path, &plan.specs).map_err(tract_err(path))?;
        let r = per_model(&runner, path, out)?;
        Ok::<_, EvalError>((r, start.elapsed().as_secs_f64()))
    };
    let a = match &memo {
        Some((runs, key)) => match runs.get::<Timed<T>>(key) {
            Some(kept) => kept,
            None => {
                let a = one(original, outs.0)?;
                runs.put(key.clone(), a.clone());
                a
            }
        },
        None => one(original, outs.0)?,
    };
    let b = one(compressed, outs.1)?;
    Ok((a, b))
}

fn perplexity(
    mut r: TextEval,
    text: &str,
    tokenizer: &tokenizers::Tokenizer,
    plan: &InputPlan,
    outs: (usize, usize),
    opts: &TextOptions,
) -> Result<TextEval, EvalError> {
    let ids = encode(tokenizer, &opts.tokenizer, text, false)?;
    let n = opts.seq_len;
    r.skipped = opts.skip_chunks;
    if ids.len() < n {
        return Err(EvalError::Text {
            path: opts.text.clone(),
            detail: format!(
                "the text has {} tokens, fewer than one chunk of {n} (--seq-len)",
                ids.len()
            ),
        });
    }
    if let (Some(vocab), Some(&max)) = (plan.vocab, ids.iter().max()) {
        if max as usize >= vocab {
            return Err(EvalError::Tokenizer {
                path: opts.tokenizer.clone(),
                detail: format!(
                    "gives token id {max}, outside the model's vocabulary of {vocab} \
                     (a tokenizer for another model?)"
                ),
            });
        }
    }
    let chunks: Vec<Vec<i64>> = ids
        .chunks_exact(n)
        .skip(opts.skip_chunks)
        .take(opts.max_chunks)
        .map(|c| c.iter().map(|&t| t as i64).collect())
        .collect();
    if chunks.is_empty() {
        return Err(EvalError::Text {
            path: opts.text.clone(),
            detail: format!(
                "the text has {} tokens: no chunk of {n} is left after skipping {}",
                ids.len(),
                opts.skip_chunks
            ),
        });
    }
    if let Some(path) = &opts.dump_ids {
        let flat: Vec<i64> = chunks.concat();
        let t = InputTensor {
            spec: inputs::InputSpec {
                name: "input_ids".into(),
                dtype: DType::I64,
                shape: vec![chunks.len(), n],
                fill: Fill::TokenIds,
            },
            data: InputData::Int(flat),
        };
        let bytes = t.to_npy().ok_or_else(|| EvalError::Text {
            path: path.clone(),
            detail: "cannot encode the token ids as .npy".into(),
        })?;
        std::fs::write(path, bytes).map_err(|e| EvalError::Text {
            path: path.clone(),
            detail: format!("cannot write the token ids: {e}"),
        })?;
    }

    let key = run_key("perplexity", &r.original, opts);
    let ((loss_a, sa), (loss_b, sb)) = both(
        &r.original.clone(),
        &r.compressed.clone(),
        plan,
        outs,
        opts.original_runs.as_deref().map(|m| (m, key)),
        |runner, path, out| {
            let mut total = 0.0f64;
            for chunk in &chunks {
                let (outputs, _) = runner
                    .run(&feed(plan, chunk, None))
                    .map_err(tract_err(path))?;
                let logits = &outputs[out];
                let vocab = vocab_of(logits, n, path)?;
                for t in 0..n - 1 {
                    let row = &logits.data[t * vocab..(t + 1) * vocab];
                    let target = chunk[t + 1] as usize;
                    if target >= vocab {
                        return Err(EvalError::Mismatch {
                            path: path.to_path_buf(),
                            detail: format!(
                                "token id {target} is outside the logits' vocabulary of {vocab}"
                            ),
                        });
                    }
                    total += super::softmax::log_sum_exp(row) - row[target];
                }
            }
            Ok(total / (chunks.len() * (n - 1)) as f64)
        },
    )?;
    r.tokens = chunks.len() * n;
    r.text_tokens = ids.len();
    r.chunks = Some(chunks.len());
    r.loss_original = Some(loss_a);
    r.loss_compressed = Some(loss_b);
    r.perplexity_original = Some(loss_a.exp());
    r.perplexity_compressed = Some(loss_b.exp());
    r.ratio = Some((loss_b - loss_a).exp());
    r.original_s = sa;
    r.compressed_s = sb;
    Ok(r)
}

/// Greedy generation of `opts.generate` tokens by both models from the same prompt. A causal
/// LM's logits at position `t` depend only on tokens `≤ t`, so each model is optimized once for
/// the final length and every step runs the whole window with the not-yet-generated tail
/// filled with the last token, reading the logits at the last real position.
fn generate(
    (original, compressed, g): (&Path, &Path, &Graph),
    text: &str,
    tokenizer: &tokenizers::Tokenizer,
    outs: (usize, usize),
    opts: &TextOptions,
) -> Result<Generation, EvalError> {
    let prompt_ids: Vec<i64> = match &opts.prompt {
        Some(p) => encode(tokenizer, &opts.tokenizer, p, false)?,
        None => encode(tokenizer, &opts.tokenizer, text, false)?
            .into_iter()
            .take(16)
            .collect(),
    }
    .into_iter()
    .map(i64::from)
    .collect();
    if prompt_ids.is_empty() {
        return Err(EvalError::Options(
            "the generation prompt has no tokens".into(),
        ));
    }
    let n = prompt_ids.len() + opts.generate;
    let plan = inputs::plan(g, 1, n, None).map_err(|e| EvalError::Inputs {
        path: original.to_path_buf(),
        detail: e.to_string(),
    })?;
    let ((a, _), (b, _)) = both(
        original,
        compressed,
        &plan,
        outs,
        None,
        |runner, path, out| {
            let mut ids = prompt_ids.clone();
            while ids.len() < n {
                let last = ids.len() - 1;
                let mut window = ids.clone();
                window.resize(n, ids[last]);
                let (outputs, _) = runner
                    .run(&feed(&plan, &window, None))
                    .map_err(tract_err(path))?;
                let logits = &outputs[out];
                let vocab = vocab_of(logits, n, path)?;
                let row = &logits.data[last * vocab..(last + 1) * vocab];
                // The first maximum (ties to the lower id).
                let next = row
                    .iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |best, (i, &x)| {
                        if x > best.1 {
                            (i, x)
                        } else {
                            best
                        }
                    })
                    .0;
                ids.push(next as i64);
            }
            Ok(ids[prompt_ids.len()..].to_vec())
        },
    )?;
    let decode = |ids: &[i64]| -> Result<String, EvalError> {
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        tokenizer
            .decode(&ids, false)
            .map_err(|e| EvalError::Tokenizer {
                path: opts.tokenizer.clone(),
                detail: format!("cannot decode generated tokens: {e}"),
            })
    };
    Ok(Generation {
        prompt: decode(&prompt_ids)?,
        original: decode(&a)?,
        compressed: decode(&b)?,
        tokens: opts.generate,
        agreeing_prefix: a.iter().zip(&b).take_while(|(x, y)| x == y).count(),
        prompt_ids,
        original_ids: a,
        compressed_ids: b,
    })
}

/// The vocabulary size of logits shaped `[1, n, vocab]`, else a mismatch error.
fn vocab_of(logits: &super::runner::Output, n: usize, path: &Path) -> Result<usize, EvalError> {
    match logits.shape.as_slice() {
        [1, s, v] if *s == n && *v > 0 => Ok(*v),
        shape => Err(EvalError::Mismatch {
            path: path.to_path_buf(),
            detail: format!("the logits have shape {shape:?}, expected [1, {n}, vocab]"),
        }),
    }
}

fn similarity(
    mut r: TextEval,
    text: &str,
    tokenizer: &tokenizers::Tokenizer,
    (original, g): (&Path, &Graph),
    outs: (usize, usize),
    opts: &TextOptions,
) -> Result<TextEval, EvalError> {
    let limit = 16 * opts.max_chunks;
    r.skipped = opts.skip_lines;
    let mut sentences: Vec<Vec<i64>> = Vec::new();
    let mut text_tokens = 0;
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip(opts.skip_lines);
    for line in lines {
        if sentences.len() == limit {
            break;
        }
        let mut ids = encode(tokenizer, &opts.tokenizer, line, true)?;
        text_tokens += ids.len();
        if let (true, Some(&last)) = (ids.len() > opts.seq_len, ids.last()) {
            // Keep the closing special token ([SEP]) when there is one.
            ids.truncate(opts.seq_len);
            let special = tokenizer
                .get_added_vocabulary()
                .simple_id_to_token(last)
                .is_some();
            if let (true, Some(end)) = (special, ids.last_mut()) {
                *end = last;
            }
        }
        sentences.push(ids.into_iter().map(|t| t as i64).collect());
    }
    if sentences.is_empty() {
        return Err(EvalError::Text {
            path: opts.text.clone(),
            detail: if opts.skip_lines > 0 {
                format!(
                    "the text has no non-empty line after the first {}",
                    opts.skip_lines
                )
            } else {
                "the text has no non-empty line".into()
            },
        });
    }
    let len = sentences.iter().map(Vec::len).max().unwrap_or(1);
    // The longest sentence sets the sequence length; the others are padded (mask 0).
    let plan = inputs::plan(g, 1, len, None).map_err(|e| EvalError::Inputs {
        path: original.to_path_buf(),
        detail: e.to_string(),
    })?;
    if let (Some(vocab), Some(&max)) = (plan.vocab, sentences.iter().flatten().max()) {
        if max as usize >= vocab {
            return Err(EvalError::Tokenizer {
                path: opts.tokenizer.clone(),
                detail: format!(
                    "gives token id {max}, outside the model's vocabulary of {vocab} \
                     (a tokenizer for another model?)"
                ),
            });
        }
    }
    let padded: Vec<(Vec<i64>, Vec<i64>)> = sentences
        .iter()
        .map(|s| {
            let mut ids = s.clone();
            let mut mask = vec![1; s.len()];
            ids.resize(len, 0);
            mask.resize(len, 0);
            (ids, mask)
        })
        .collect();

    let key = run_key("similarity", &r.original, opts);
    let ((emb_a, sa), (emb_b, sb)) = both(
        &r.original.clone(),
        &r.compressed.clone(),
        &plan,
        outs,
        opts.original_runs.as_deref().map(|m| (m, key)),
        |runner, path, out| {
            let mut embeddings = Vec::with_capacity(padded.len());
            for (ids, mask) in &padded {
                let (outputs, _) = runner
                    .run(&feed(&plan, ids, Some(mask)))
                    .map_err(tract_err(path))?;
                let h = &outputs[out];
                let dim = match h.shape.as_slice() {
                    [1, s, d] if *s == len && *d > 0 => *d,
                    shape => {
                        return Err(EvalError::Mismatch {
                            path: path.to_path_buf(),
                            detail: format!(
                                "the hidden state has shape {shape:?}, expected [1, {len}, dim]"
                            ),
                        })
                    }
                };
                let mut pooled = vec![0.0f64; dim];
                let mut count = 0.0;
                for (t, &m) in mask.iter().enumerate() {
                    if m != 0 {
                        count += 1.0;
                        for (p, &x) in pooled.iter_mut().zip(&h.data[t * dim..(t + 1) * dim]) {
                            *p += x;
                        }
                    }
                }
                pooled.iter_mut().for_each(|p| *p /= count);
                embeddings.push(pooled);
            }
            Ok(embeddings)
        },
    )?;
    let cosines: Vec<f64> = emb_a
        .iter()
        .zip(&emb_b)
        .map(|(u, v)| cosine(u, v))
        .collect();
    r.tokens = sentences.iter().map(Vec::len).sum();
    r.text_tokens = text_tokens;
    r.sentences = Some(sentences.len());
    r.cosine_mean = Some(cosines.iter().sum::<f64>() / cosines.len() as f64);
    r.cosine_min = Some(cosines.iter().copied().fold(f64::INFINITY, f64::min));
    r.original_s = sa;
    r.compressed_s = sb;
    Ok(r)
}

fn cosine(u: &[f64], v: &[f64]) -> f64 {
    if u == v {
        return 1.0;
    }
    let (mut uv, mut uu, mut vv) = (0.0, 0.0, 0.0);
    for (&x, &y) in u.iter().zip(v) {
        uv += x * y;
        uu += x * x;
        vv += y * y;
    }
    if uu == 0.0 || vv == 0.0 {
        0.0
    } else {
        uv / (uu.sqrt() * vv.sqrt())
    }
}

/// A short text table of `r`.
pub fn render_text(r: &TextEval) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "text evaluation of {} against {}",
        r.compressed.display(),
        r.original.display()
    );
    match r.kind {
        TextKind::CausalLm => {
            let _ = writeln!(
                s,
                "text: {} ({} tokens with {}); {} chunk{} x {} tokens{}, no special tokens",
                r.text.display(),
                r.text_tokens,
                r.tokenizer.display(),
                r.chunks.unwrap_or(0),
                if r.chunks == Some(1) { "" } else { "s" },
                r.seq_len,
                skipped(r.skipped, "chunk")
            );
            let pa = r.perplexity_original.unwrap_or(f64::NAN);
            let pb = r.perplexity_compressed.unwrap_or(f64::NAN);
            let la = r.loss_original.unwrap_or(f64::NAN);
            let lb = r.loss_compressed.unwrap_or(f64::NAN);
            let _ = writeln!(s, "model       perplexity  loss (nats/token)  time");
            let _ = writeln!(
                s,
                "original    {:>10}  {la:>17.6}  {:>5.1} s",
                big(pa),
                r.original_s
            );
            let _ = writeln!(
                s,
                "compressed  {:>10}  {lb:>17.6}  {:>5.1} s",
                big(pb),
                r.compressed_s
            );
            let _ = writeln!(
                s,
                "ratio (compressed / original): {}",
                big(r.ratio.unwrap_or(f64::NAN))
            );
            if let Some(g) = &r.generation {
                let _ = writeln!(
                    s,
                    "greedy generation of {} tokens (the first {} agree)\nprompt:     {:?}\noriginal:   {:?}\ncompressed: {:?}",
                    g.tokens, g.agreeing_prefix, g.prompt, g.original, g.compressed
                );
            }
        }
        TextKind::Encoder => {
            let _ = writeln!(
                s,
                "text: {} ({} sentences{}, {} tokens with {}, at most {} per sentence)",
                r.text.display(),
                r.sentences.unwrap_or(0),
                skipped(r.skipped, "line"),
                r.tokens,
                r.tokenizer.display(),
                r.seq_len
            );
            let _ = writeln!(
                s,
                "sentence-embedding cosine (mean-pooled): mean {:.6}, min {:.6}",
                r.cosine_mean.unwrap_or(f64::NAN),
                r.cosine_min.unwrap_or(f64::NAN)
            );
            let _ = writeln!(
                s,
                "time: original {:.1} s, compressed {:.1} s",
                r.original_s, r.compressed_s
            );
        }
    }
    s
}

/// ", after the first N chunks" (or lines), or nothing.
fn skipped(n: usize, what: &str) -> String {
    match n {
        0 => String::new(),
        1 => format!(", after the first {what}"),
        n => format!(", after the first {n} {what}s"),
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `x` with 4 decimals, or in scientific notation when it is large (a destroyed model's
/// perplexity).
fn big(x: f64) -> String {
    if x.abs() < 1e6 {
        format!("{x:.4}")
    } else {
        format!("{x:.4e}")
    }
}
