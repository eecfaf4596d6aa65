//! Sequential refit: every whitened factorization is fitted again, in the model's order, to the
//! activations of the *compressed* model, so that each layer corrects what the layers before it
//! lost (layer-wise distillation in closed form).
//!
//! For a site `y = x·W` factorized at rank `r`, let `X` be the original model's activations at
//! `x` on the calibration data and `X̂` the compressed model's, with every earlier site already
//! refitted. The refit is the best rank-`r` `W'` for `‖T − X̂·W'‖_F`, with the target
//! `T = (s·X + (1 − s)·X̂)·W`: strength `s = 1` reproduces the original layer's outputs, `s = 0`
//! only whitens by the compressed model's own inputs. With `X̂ᵀX̂ = RᵀR` (damped Cholesky) the
//! answer is `W' = R⁻¹·[R⁻ᵀ·(s·X̂ᵀX + (1 − s)·X̂ᵀX̂)·W]_r`, from two `K × K` statistics of
//! the data (see [`crate::compute::whiten`]). Ranks and storage forms do not change: only the
//! numbers in the factor constants do.
//!
//! Running the compressed model once per site would cost a whole model run per site. Instead
//! the graph is cut into *blocks* at values through which everything later depends on the
//! earlier sites (a residual stream: in a Llama or BERT layer, once before the attention and
//! once before the MLP); both models' activations at a block's cut are kept for every
//! calibration sequence, and only the block's part of the graph runs, once for the original and
//! once per group of sites that read the same value ("stage": q/k/v, o, gate/up, down).
//! Cuts are found on the graph, not from names: a value `v` is a cut for stage `j` when, with
//! `v` made a graph input, no site of an earlier stage is still needed to compute the values
//! stages `j…` read.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::calib::{add_product, mirror_lower, rows, sequences, CalibOptions, Sequences};
use super::inputs::{self, Fill, InputData, InputPlan, InputSpec, InputTensor};
use super::runner::Runner;
use super::text::{feed, tract_err};
use super::EvalError;
use crate::compute::whiten::{compact, output_error, Whitening};
use crate::ir::{DType, Graph, Model, NodeId, Tensor, ValueDef, ValueId};
use crate::rewrite::engine::WhitenedFactorization;
use crate::rewrite::{Progress, ProgressSink};

/// How the refit runs.
#[derive(Clone, Debug)]
pub struct RefitOptions {
    /// The calibration data (the same sequences as the statistics; `max_chunks` bounds them).
    pub calib: CalibOptions,
    /// Gram damping `λ` (relative to the mean diagonal), as for whitening.
    pub damp: f64,
    /// `s` in the target `(s·X + (1 − s)·X̂)·W` (see the module docs), in `[0, 1]`.
    pub strength: f64,
    /// The original's statistics from [`super::calib::collect`] on the same sequences: its
    /// `XᵀX` per tap is reused instead of summed again.
    pub known: Option<std::sync::Arc<super::calib::Calibration>>,
    /// The options of the refit's factorizations (the compile's `--svd`).
    pub svd: crate::compute::SvdOptions,
}

/// What the refit did to one factorization.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SiteRefit {
    /// The factorized constant.
    pub name: String,
    /// The value whose activations it reads.
    pub tap: String,
    pub rank: usize,
    /// `‖X·W − X̂·A·B‖ / ‖X·W‖` with the factors before the refit: the site's output error on
    /// the compressed model's own inputs against the original layer on the original inputs.
    pub before: f64,
    /// The same with the refitted factors.
    pub after: f64,
    /// `‖X·(W − A'·B')‖ / ‖X·W‖`: the refitted factors on the original model's inputs.
    pub on_original_inputs: f64,
}

/// The outcome of [`refit`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct RefitReport {
    pub strength: f64,
    /// Parts of the graph run one after the other.
    pub blocks: usize,
    /// Groups of sites that read the same value.
    pub stages: usize,
    pub sequences: usize,
    /// Tokens per statistic (padding excluded).
    pub tokens: u64,
    pub seconds: f64,
    /// One entry per refitted factorization, in model order.
    pub sites: Vec<SiteRefit>,
    /// Factorizations left as they were, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Factorizations left as they were: (name, why).
type Skipped = Vec<(String, String)>;

/// A model part's outputs per sequence: `(shape, elements)` each.
type Runs = Vec<Vec<(Vec<usize>, Vec<f32>)>>;

/// Sites that read one value.
struct Stage {
    tap: String,
    sites: Vec<usize>,
}

/// Stages run from one cut (`None`: from the graph inputs).
struct Block {
    cut: Option<String>,
    stages: Vec<Stage>,
}

fn mismatch(path: &Path, detail: impl Into<String>) -> EvalError {
    EvalError::Mismatch {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Groups the factorizations into stages (by tap, in topological order) and the stages into
/// blocks (see the module docs). Factorizations whose constant or tap the original graph does not
/// have are returned as skipped.
fn plan_blocks(
    g: &Graph,
    sites: &[WhitenedFactorization],
) -> Result<(Vec<Block>, Skipped), String> {
    let topo = g.topo_order().map_err(|e| e.to_string())?;
    let pos: HashMap<NodeId, usize> = topo.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let value_pos = |v: ValueId| -> Option<usize> { g.producer(v).map(|(n, _)| pos[&n]) };
    let mut skipped = Vec::new();
    // Per stage: tap value, its position, sites, and the nodes reading the sites' constants.
    let mut by_tap: HashMap<ValueId, (Vec<usize>, Vec<NodeId>)> = HashMap::new();
    for (i, s) in sites.iter().enumerate() {
        let w = g
            .value_by_name(&s.name)
            .filter(|&v| matches!(g.value(v).def, ValueDef::Initializer(_)));
        let tap = g.value_by_name(&s.tap);
        let (Some(w), Some(tap)) = (w, tap) else {
            skipped.push((
                s.name.clone(),
                "not a stored constant read by a value of the original graph".into(),
            ));
            continue;
        };
        let e = by_tap.entry(tap).or_default();
        e.0.push(i);
        e.1.extend(g.value(w).uses().iter().map(|&(n, _)| n));
    }
    let mut stages: Vec<(ValueId, Vec<usize>, Vec<NodeId>)> =
        by_tap.into_iter().map(|(t, (s, n))| (t, s, n)).collect();
    stages.sort_by_key(|(t, _, _)| (value_pos(*t), g.value(*t).name.clone()));

    // Nodes needed to compute `targets` when `cut` is a graph input.
    let needed = |targets: &[ValueId], cut: ValueId| -> HashSet<NodeId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<ValueId> = targets.to_vec();
        while let Some(v) = stack.pop() {
            if v == cut {
                continue;
            }
            if let Some((n, _)) = g.producer(v) {
                if seen.insert(n) {
                    let node = g.node(n);
                    stack.extend(node.inputs().iter().flatten().copied());
                    stack.extend(node.captures().iter().copied());
                }
            }
        }
        seen
    };
    let mut blocks: Vec<Block> = Vec::new();
    let mut earlier: HashSet<NodeId> = HashSet::new();
    for (j, (tap, members, readers)) in stages.iter().enumerate() {
        let mut cut = None;
        if j > 0 {
            let last = earlier.iter().map(|n| pos[n]).max().unwrap_or(0);
            let later: Vec<ValueId> = stages[j..].iter().map(|(t, _, _)| *t).collect();
            // Candidates: the tap and its ancestors computed after every earlier site, latest
            // first.
            let mut cands = Vec::new();
            let mut seen = HashSet::new();
            let mut stack = vec![*tap];
            while let Some(v) = stack.pop() {
                let Some(p) = value_pos(v) else { continue };
                if p <= last || !seen.insert(v) {
                    continue;
                }
                cands.push((p, v));
                if let Some((n, _)) = g.producer(v) {
                    stack.extend(g.node(n).inputs().iter().flatten().copied());
                }
            }
            cands.sort_by(|a, b| b.cmp(a));
            cut = cands
                .into_iter()
                .map(|(_, v)| v)
                .find(|&v| needed(&later, v).is_disjoint(&earlier));
        }
        let stage = Stage {
            tap: g.value(*tap).name.clone(),
            sites: members.clone(),
        };
        match (cut, blocks.last_mut()) {
            (None, Some(b)) => b.stages.push(stage),
            (cut, _) => blocks.push(Block {
                cut: cut.map(|v| g.value(v).name.clone()),
                stages: vec![stage],
            }),
        }
        earlier.extend(readers.iter().copied());
    }
    Ok((blocks, skipped))
}

/// The part of `m` that computes `outputs` from `cut` (made a graph input) and the graph
/// inputs, encoded.
fn cut_model(m: &Model, cut: Option<&str>, outputs: &[String]) -> Result<Vec<u8>, String> {
    crate::onnx::export::to_bytes(&cut_graph(m, cut, outputs)?).map_err(|e| e.to_string())
}

/// See [`cut_model`].
fn cut_graph(m: &Model, cut: Option<&str>, outputs: &[String]) -> Result<Model, String> {
    let mut sub = m.clone();
    let g = &mut sub.graph;
    if let Some(c) = cut {
        let v = g
            .value_by_name(c)
            .ok_or_else(|| format!("the compressed model has no value '{c}'"))?;
        g.make_input(v);
    }
    g.outputs = outputs
        .iter()
        .map(|o| {
            g.value_by_name(o)
                .ok_or_else(|| format!("the compressed model has no value '{o}'"))
        })
        .collect::<Result<_, _>>()?;
    g.remove_dead();
    Ok(sub)
}

/// Activations at a cut, per sequence: `(shape, elements)`.
type States = Vec<(Vec<usize>, Vec<f32>)>;

/// Runs the part of `m` from `cut` to `outputs` on every sequence (in parallel), fed `states` at
/// the cut. Returns the outputs per sequence.
#[allow(clippy::too_many_arguments)]
fn run_part(
    path: &Path,
    m: &Model,
    plan: &InputPlan,
    feeds: &[Vec<InputTensor>],
    cut: Option<&str>,
    states: Option<&States>,
    outputs: &[String],
) -> Result<Runs, EvalError> {
    let bytes = cut_model(m, cut, outputs).map_err(|d| mismatch(path, d))?;
    let mut specs = plan.specs.clone();
    if let (Some(c), Some(s)) = (cut, states.and_then(|s| s.first())) {
        specs.push(InputSpec {
            name: c.to_string(),
            dtype: DType::F32,
            shape: s.0.clone(),
            fill: Fill::Normal,
        });
    }
    let (runner, _) = Runner::load_bytes(&bytes, &specs, None).map_err(tract_err(path))?;
    feeds
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let mut f = f.clone();
            if let (Some(c), Some(s)) = (cut, states) {
                let (shape, data) = &s[i];
                f.push(InputTensor {
                    spec: InputSpec {
                        name: c.to_string(),
                        dtype: DType::F32,
                        shape: shape.clone(),
                        fill: Fill::Normal,
                    },
                    data: InputData::Float(data.iter().map(|&x| x as f64).collect()),
                });
            }
            runner.run_f32(&f).map_err(tract_err(path))
        })
        .collect()
}

/// `Σ aᵀ·b` over sequences (f32 products, f64 sums), `k × k`; a Gram when `b` is `None`. The
/// sequences are summed in fixed groups, in order, so the result does not depend on how the
/// threads were scheduled (the compiled file is byte-identical from run to run).
fn sum_products(a: &[(usize, Vec<f32>)], b: Option<&[(usize, Vec<f32>)]>, k: usize) -> Vec<f64> {
    const GROUP: usize = 4;
    let gram = b.is_none();
    let parts: Vec<Vec<f64>> = (0..a.len().div_ceil(GROUP))
        .into_par_iter()
        .map(|gi| {
            let mut acc = vec![0.0f64; k * k];
            for i in gi * GROUP..((gi + 1) * GROUP).min(a.len()) {
                let (n, x) = &a[i];
                let y = b.map(|b| &b[i].1).unwrap_or(x);
                add_product(&mut acc, x, y, *n, k, gram);
            }
            acc
        })
        .collect();
    let mut acc = vec![0.0f64; k * k];
    for p in parts {
        acc.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
    }
    if gram {
        mirror_lower(&mut acc, k);
    }
    acc
}

/// Refits `site` on the statistics: `g` = `XᵀX`, `ghat` = `X̂ᵀX̂`, `cross` = `X̂ᵀX`. Returns the
/// new factors `(A, B)` and the report entry.
#[allow(clippy::too_many_arguments)]
fn refit_site(
    backend: &dyn crate::compute::Backend,
    svd: &crate::compute::SvdOptions,
    site: &WhitenedFactorization,
    (g, ghat, cross): (&[f64], &[f64], &[f64]),
    damp: f64,
    strength: f64,
) -> Result<(Vec<f32>, Vec<f32>, SiteRefit), String> {
    let w = site.matrix.as_f32().ok_or("not f32")?;
    let (k, n) = (site.matrix.dims[0] as usize, site.matrix.dims[1] as usize);
    let r = site.rank;
    let a0 = site.factors.0.as_f32().ok_or("not f32")?;
    let b0 = site.factors.1.as_f32().ok_or("not f32")?;
    let before = output_error(g, Some((ghat, cross)), &w, &a0, &b0, (k, n, r));
    let wh = Whitening::new(ghat, k, damp).map_err(|e| e.to_string())?;
    let mix: Vec<f64> = cross
        .iter()
        .zip(ghat)
        .map(|(c, h)| strength * c + (1.0 - strength) * h)
        .collect();
    let t = wh.refit_target(&mix, &w, n);
    let m = crate::compute::MatrixRef::new(k, n, &t).map_err(|e| e.to_string())?;
    let f = backend
        .lowrank(&[m], r, svd)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no factors")?;
    if f.rank() != r {
        return Err(format!("rank {} instead of {r}", f.rank()));
    }
    let (ta, b) = f.balanced();
    let a = wh.unwhiten(ta.data(), r);
    let b = b.data().to_vec();
    let after = output_error(g, Some((ghat, cross)), &w, &a, &b, (k, n, r));
    let on_original_inputs = output_error(g, None, &w, &a, &b, (k, n, r));
    Ok((
        a,
        b,
        SiteRefit {
            name: site.name.clone(),
            tap: site.tap.clone(),
            rank: r,
            before,
            after,
            on_original_inputs,
        },
    ))
}

/// Writes refitted factors into the constants that store `site`.
fn store(m: &mut Model, site: &WhitenedFactorization, a: &[f32], b: &[f32]) -> Result<(), String> {
    let (k, n) = (site.matrix.dims[0], site.matrix.dims[1]);
    let r = site.rank as i64;
    let tensors = if site.compact {
        let (a2, z, cols) = compact(a, b, (k as usize, r as usize, n as usize))?;
        let idx: Vec<u8> = cols
            .iter()
            .flat_map(|&c| (c as i32).to_le_bytes())
            .collect();
        vec![
            Tensor::from_f32(vec![k, r], &a2),
            Tensor::from_f32(vec![r, n - r], &z),
            Tensor::from_raw(DType::I32, vec![n], bytes::Bytes::from(idx)),
        ]
    } else {
        vec![
            Tensor::from_f32(vec![k, r], a),
            Tensor::from_f32(vec![r, n], b),
        ]
    };
    for (&v, t) in site.stored.iter().zip(tensors) {
        let value = m.graph.value_mut(v);
        match &value.def {
            ValueDef::Initializer(old) if old.dims == t.dims && old.dtype == t.dtype => {
                value.def = ValueDef::Initializer(t);
            }
            _ => {
                return Err(format!(
                    "constant '{}' is not the stored factor",
                    value.name
                ))
            }
        }
    }
    Ok(())
}

/// Refits `sites` of `compressed` (compiled from the model at `original_path`, loaded as
/// `original`) in model order, block by block (see the module docs). `compressed` is changed in
/// place: only the numbers of the sites' stored constants.
#[allow(clippy::too_many_arguments)]
pub fn refit(
    original_path: &Path,
    original: &Model,
    compressed: &mut Model,
    sites: &[WhitenedFactorization],
    backend: &dyn crate::compute::Backend,
    opts: &RefitOptions,
    progress: Option<&ProgressSink>,
) -> Result<RefitReport, EvalError> {
    let start = Instant::now();
    let path = original_path;
    if !(0.0..=1.0).contains(&opts.strength) {
        return Err(EvalError::Options(format!(
            "refit strength must be in [0, 1], got {}",
            opts.strength
        )));
    }
    let seqs: Sequences = sequences(path, &opts.calib)?;
    let plan = inputs::plan(&original.graph, 1, seqs.len, None).map_err(|e| EvalError::Inputs {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let feeds: Vec<Vec<InputTensor>> = seqs
        .ids
        .iter()
        .enumerate()
        .map(|(i, ids)| feed(&plan, ids, seqs.masks.as_ref().map(|m| m[i].as_slice())))
        .collect();
    let masks: Vec<Option<&[i64]>> = (0..seqs.ids.len())
        .map(|i| seqs.masks.as_ref().map(|m| m[i].as_slice()))
        .collect();
    let (blocks, mut skipped) =
        plan_blocks(&original.graph, sites).map_err(|d| mismatch(path, d))?;
    let stages: usize = blocks.iter().map(|b| b.stages.len()).sum();
    if let Some(p) = progress {
        p(Progress::Begin {
            phase: "sequential refit",
            total: stages,
        });
    }
    let svd = opts.svd.clone();
    let mut report = RefitReport {
        strength: opts.strength,
        blocks: blocks.len(),
        stages,
        sequences: seqs.ids.len(),
        tokens: 0,
        seconds: 0.0,
        sites: Vec::new(),
        skipped: Vec::new(),
    };
    // Activations at the current block's cut: the original's and the compressed model's.
    let mut h: Option<(States, States)> = None;
    for (bi, block) in blocks.iter().enumerate() {
        let cut = block.cut.as_deref();
        let next = blocks.get(bi + 1).and_then(|b| b.cut.clone());
        let mut outs: Vec<String> = block.stages.iter().map(|s| s.tap.clone()).collect();
        outs.extend(next.clone());
        let orig = run_part(
            path,
            original,
            &plan,
            &feeds,
            cut,
            h.as_ref().map(|s| &s.0),
            &outs,
        )?;
        // The compressed model's part of this block, from its own activations at the cut.
        let hat_states = h.as_ref().map(|s| &s.1);
        let run_hat = |m: &Model, output: &str| {
            run_part(
                path,
                m,
                &plan,
                &feeds,
                cut,
                hat_states,
                &[output.to_string()],
            )
        };
        let tb = Instant::now();
        for (si, stage) in block.stages.iter().enumerate() {
            // X: the original's rows at the tap; X̂: the compressed model's.
            let take = |runs: &Runs, ix: usize| {
                runs.iter()
                    .zip(&masks)
                    .map(|(o, m)| {
                        rows(&stage.tap, &o[ix], *m, path).map(|(n, x)| (n, x.into_owned()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let x = take(&orig, si)?;
            let hat_runs = run_hat(compressed, &stage.tap)?;
            let xh = take(&hat_runs, 0)?;
            drop(hat_runs);
            let k = x.first().map(|(n, v)| v.len() / (*n).max(1)).unwrap_or(0);
            report.tokens = x.iter().map(|(n, _)| *n as u64).sum();
            let g = match opts.known.as_ref().and_then(|c| c.grams.get(&stage.tap)) {
                Some(g) if g.dim == k => g.data.clone(),
                _ => sum_products(&x, None, k),
            };
            let ghat = sum_products(&xh, None, k);
            let cross = sum_products(&xh, Some(&x), k);
            let done: Vec<_> = stage
                .sites
                .par_iter()
                .map(|&i| {
                    let s = &sites[i];
                    refit_site(
                        backend,
                        &svd,
                        s,
                        (&g, &ghat, &cross),
                        opts.damp,
                        opts.strength,
                    )
                    .map_err(|e| format!("{} (refit by '{}'): {e}", s.name, s.tap))
                })
                .collect();
            for (&i, d) in stage.sites.iter().zip(done) {
                let stored =
                    d.and_then(|(a, b, entry)| store(compressed, &sites[i], &a, &b).map(|_| entry));
                match stored {
                    Ok(entry) => {
                        tracing::debug!(
                            "refit {}: output error {:.4} -> {:.4} (on the original's inputs {:.4})",
                            entry.name,
                            entry.before,
                            entry.after,
                            entry.on_original_inputs
                        );
                        report.sites.push(entry);
                    }
                    Err(e) => skipped.push((sites[i].name.clone(), e)),
                }
            }
            if let Some(p) = progress {
                p(Progress::Advance(1));
            }
        }
        tracing::debug!(
            "refit block {bi} ({} stages): {:.2} s",
            block.stages.len(),
            tb.elapsed().as_secs_f64()
        );
        // The next cut's activations, from both models.
        h = match &next {
            Some(c) => {
                let hat = run_hat(compressed, c)?;
                let ix = outs.len() - 1;
                let o: States = orig.into_iter().map(|mut v| v.swap_remove(ix)).collect();
                let hh: States = hat.into_iter().map(|mut v| v.swap_remove(0)).collect();
                Some((o, hh))
            }
            None => None,
        };
    }
    report.skipped = skipped;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn site(name: &str, tap: &str) -> WhitenedFactorization {
        let t = Arc::new(Tensor::from_f32(vec![4, 4], &[0.0; 16]));
        WhitenedFactorization {
            name: name.into(),
            matrix: t.clone(),
            tap: tap.into(),
            rank: 1,
            factors: (t.clone(), t),
            compact: false,
            stored: Vec::new(),
        }
    }

    /// Two residual layers: W1 reads the input; W2 and W3 read `n1`; W4 reads `n2`, which
    /// needs the residual `h1` and the outputs of W2 and W3.
    const TWO_LAYERS: &str = r#"<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] X) => (float[N,4] Y) <float[4,4] W1 = {-2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2}, float[4,4] W2 = {-2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2}, float[4,4] W3 = {-2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2}, float[4,4] W4 = {-2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2, -1, 0, 1, 2, -2}> {
   a = MatMul (X, W1)
   h1 = Add (X, a)
   n1 = Relu (h1)
   b = MatMul (n1, W2)
   c = MatMul (n1, W3)
   h2 = Add (h1, b)
   h3 = Add (h2, c)
   n2 = Relu (h3)
   d = MatMul (n2, W4)
   Y = Add (h3, d)
}
"#;

    #[test]
    fn blocks_are_cut_where_earlier_sites_are_no_longer_needed() {
        let m = crate::onnx::from_text(TWO_LAYERS, "two_layers").unwrap();
        let sites = [
            site("W4", "n2"),
            site("W2", "n1"),
            site("W1", "X"),
            site("W3", "n1"),
            site("missing", "n1"),
        ];
        let (blocks, skipped) = plan_blocks(&m.graph, &sites).unwrap();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, "missing");
        type Shape<'a> = Vec<(Option<&'a str>, Vec<(&'a str, Vec<usize>)>)>;
        let shape: Shape = blocks
            .iter()
            .map(|b| {
                (
                    b.cut.as_deref(),
                    b.stages
                        .iter()
                        .map(|s| (s.tap.as_str(), s.sites.clone()))
                        .collect(),
                )
            })
            .collect();
        // W1 reads the graph input. n1 is not a cut: the later tap n2 needs h1 too (the
        // residual), so the cut is h1. The last stage needs nothing but its own tap.
        assert_eq!(
            shape,
            vec![
                (None, vec![("X", vec![2])]),
                (Some("h1"), vec![("n1", vec![1, 3])]),
                (Some("n2"), vec![("n2", vec![0])]),
            ]
        );
    }

    #[test]
    fn a_cut_model_runs_from_the_cut() {
        let m = crate::onnx::from_text(TWO_LAYERS, "two_layers").unwrap();
        let sub = cut_graph(&m, Some("h3"), &["n2".to_string()]).unwrap();
        assert!(cut_model(&m, Some("h3"), &["n2".to_string()]).is_ok());
        let g = &sub.graph;
        let names = |vs: &[ValueId]| -> Vec<String> {
            vs.iter().map(|&v| g.value(v).name.clone()).collect()
        };
        assert_eq!(names(&g.inputs), ["X", "h3"]);
        assert_eq!(names(&g.outputs), ["n2"]);
        let ops: Vec<String> = g
            .node_ids()
            .into_iter()
            .map(|n| g.node(n).op_type.clone())
            .collect();
        assert_eq!(ops, ["Relu"]);
        assert!(cut_model(&m, Some("nope"), &["n2".to_string()]).is_err());
    }
}
