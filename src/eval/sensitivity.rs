//! Sensitivity: how much the model's *output* moves per unit of a site's own output error,
//! measured on calibration data, so that the planner can compare the errors of sites whose
//! activations differ by orders of magnitude (a whitened spectrum's `σ²` is the site's output
//! error `‖X·(W − W_r)‖²`, which grows with depth while the model's output does not care more).
//!
//! For every whitened factorization `W ≈ A·B` of a probe plan (usually the uniform plan at the
//! same budget), the original model runs with that one site replaced: its output error
//! `δ = X·(A·B − W)` on the original's activations `X` is added to the site's output, every
//! other site exact. Each site's *exchange rate* is
//!
//! ```text
//! c = D / ‖δ‖²        D = mean KL(p_original ‖ p_perturbed) per position   (causal LMs)
//!                     D = mean 1 − cos(e, e') of the mean-pooled sentence
//!                         embeddings, per sequence                         (encoders)
//! ```
//!
//! on the same tokens. To first order `D` is a quadratic form in `δ`, so `c·σᵢ²` estimates what
//! dropping singular triplet `i` of the whitened site costs the model's output; the planner's
//! `sensitivity` strategy keeps the triplets with the most of it per stored parameter.
//!
//! One model is loaded for all the runs: the original with an `Add(y, Δ)` after every measured
//! site's MatMul, `Δ` a new graph input; a run feeds zeros to every `Δ` but one (the zeros are
//! one shared tensor per shape). Another load of the original exposes the sites' inputs `X`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::calib::{sequences, CalibOptions};
use super::inputs::{self, Fill, InputSpec, InputTensor};
use super::runner::{ExtraInputs, Runner};
use super::text::{classify, feed, tract_err};
use super::{EvalError, TextKind};
use crate::ir::{DType, Dim, Model, Node, Port, ValueDef, ValueType};
use crate::rewrite::engine::Factorization;
use crate::rewrite::{Progress, ProgressSink};

/// How sensitivities are measured.
#[derive(Clone, Debug)]
pub struct SensitivityOptions {
    /// The calibration data; its first `max_chunks` windows (causal LMs; encoders: up to
    /// `max_chunks · seq_len` tokens of lines) are used.
    pub calib: CalibOptions,
}

/// One site's measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SiteSensitivity {
    /// The factorized constant.
    pub name: String,
    /// The probe rank.
    pub rank: usize,
    /// Places its error enters the model (2 for a table that is also the LM head).
    pub readers: usize,
    /// `‖δ‖²`: the site's output error at the probe rank, summed over the measured tokens (for a
    /// table, at its Gather only: the units of its count-weighted spectrum).
    pub energy: f64,
    /// What that error did to the model's output (see the module docs).
    pub divergence: f64,
    /// `divergence / energy`: the exchange rate the planner uses.
    pub per_energy: f64,
}

/// The outcome of [`measure`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct SensitivityReport {
    /// `kl` (causal LMs: mean KL divergence per position, nats) or `1 - cosine` (encoders:
    /// of the mean-pooled sentence embeddings, mean per sequence).
    pub metric: &'static str,
    pub sequences: usize,
    /// Tokens measured (padding excluded).
    pub tokens: u64,
    pub seconds: f64,
    /// In the order of the sites given.
    pub sites: Vec<SiteSensitivity>,
    /// Sites not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl SensitivityReport {
    /// Exchange rates by constant name, for the planner.
    pub fn weights(&self) -> HashMap<String, f64> {
        self.sites
            .iter()
            .map(|s| (s.name.clone(), s.per_energy))
            .collect()
    }
}

fn mismatch(path: &Path, detail: impl Into<String>) -> EvalError {
    EvalError::Mismatch {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// `a (m × k) · b (k × n)`, row-major, on this thread.
fn matmul(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(&mut out, m, n),
        Accum::Replace,
        MatRef::from_row_major_slice(a, m, k),
        MatRef::from_row_major_slice(b, k, n),
        1.0f32,
        Par::Seq,
    );
    out
}

/// Log-softmax of every row of `x` (`rows × v`), in place.
fn log_softmax(x: &mut [f32], v: usize) {
    for row in x.chunks_exact_mut(v) {
        let lse = super::softmax::log_sum_exp(row);
        row.iter_mut().for_each(|z| *z = (*z as f64 - lse) as f32);
    }
}

/// The mean of the kept rows of `x` (`rows × v`): a mean-pooled sentence embedding.
fn pooled(x: &[f32], v: usize, keep: &dyn Fn(usize) -> bool) -> Vec<f64> {
    let mut acc = vec![0.0f64; v];
    let mut count = 0usize;
    for (r, row) in x.chunks_exact(v).enumerate() {
        if keep(r) {
            count += 1;
            acc.iter_mut().zip(row).for_each(|(a, &b)| *a += b as f64);
        }
    }
    acc.iter_mut().for_each(|a| *a /= count.max(1) as f64);
    acc
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

/// `Σ` over the kept rows of `KL(p ‖ q)`, `p` given as log-probabilities, `q` as logits.
fn kl_sum(logp: &[f32], logits: &[f32], v: usize, keep: &dyn Fn(usize) -> bool) -> f64 {
    let mut total = 0.0f64;
    for (r, (lp, q)) in logp.chunks_exact(v).zip(logits.chunks_exact(v)).enumerate() {
        if !keep(r) {
            continue;
        }
        let lse = super::softmax::log_sum_exp(q);
        total += super::softmax::kl_row(lp, q, lse).max(0.0);
    }
    total
}

/// How a site's constant `W` reaches one output `y` that is linear in it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Read {
    /// `y = x·W` (`MatMul`, `W` the right operand).
    Right,
    /// `y = x·Wᵀ` (`MatMul` of a `Transpose` of `W`: a tied LM head).
    RightT,
    /// `y = W[ids]` (`Gather` on axis 0: a token table).
    Rows,
}

/// One place a site's error enters the model: the value `y` it perturbs, how, and the value
/// the perturbation depends on (`x`, or the ids).
struct Reader {
    y: crate::ir::ValueId,
    read: Read,
    input: String,
}

/// Where `W` (a constant named `name`) is read, or why it cannot be measured.
fn readers(g: &crate::ir::Graph, name: &str) -> Result<Vec<Reader>, String> {
    let v = g
        .value_by_name(name)
        .filter(|&v| matches!(g.value(v).def, ValueDef::Initializer(_)))
        .ok_or("not a stored constant of the original")?;
    let mut out = Vec::new();
    let name_of = |n: crate::ir::NodeId, i: usize| -> Option<String> {
        g.node(n).input(i).map(|x| g.value(x).name.clone())
    };
    for &(n, port) in g.value(v).uses() {
        let node = g.node(n);
        let y = node.output(0).ok_or("a reader without an output")?;
        let std = node.domain.is_empty() || node.domain == "ai.onnx";
        match (node.op_type.as_str(), port) {
            ("MatMul", Port::Input(1)) if std => out.push(Reader {
                y,
                read: Read::Right,
                input: name_of(n, 0).ok_or("MatMul without a left operand")?,
            }),
            ("Gather", Port::Input(0)) if std && node.attr_i("axis").unwrap_or(0) == 0 => {
                out.push(Reader {
                    y,
                    read: Read::Rows,
                    input: name_of(n, 1).ok_or("Gather without indices")?,
                })
            }
            ("Transpose", Port::Input(0))
                if std && node.attr_ints("perm").is_none_or(|p| p == [1, 0]) =>
            {
                for &(m, p2) in g.value(y).uses() {
                    let mm = g.node(m);
                    if mm.op_type != "MatMul" || p2 != Port::Input(1) {
                        return Err(format!(
                            "its transpose is read by {} (only MatMul is measured)",
                            mm.op_type
                        ));
                    }
                    out.push(Reader {
                        y: mm.output(0).ok_or("a reader without an output")?,
                        read: Read::RightT,
                        input: name_of(m, 0).ok_or("MatMul without a left operand")?,
                    });
                }
            }
            (op, _) => {
                return Err(format!(
                    "read by {op} (only MatMul, Gather and a transposed MatMul are measured)"
                ))
            }
        }
    }
    if out.is_empty() {
        return Err("not read by any node".into());
    }
    Ok(out)
}

/// Measures the exchange rate of every site of `sites` (factorizations of `original`, loaded
/// from `original_path`) on the first calibration sequences (see the module docs). A site's
/// error enters wherever its constant is read (a tied table: its Gather and its LM head);
/// constants read by other ops are skipped, with the reason.
pub fn measure(
    original_path: &Path,
    original: &Model,
    sites: &[Factorization],
    opts: &SensitivityOptions,
    progress: Option<&ProgressSink>,
) -> Result<SensitivityReport, EvalError> {
    let start = Instant::now();
    let path = original_path;
    let seqs = sequences(path, &opts.calib)?;
    let g = &original.graph;
    let plan = inputs::plan(g, 1, seqs.len, None).map_err(|e| EvalError::Inputs {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let kind = classify(path, g, &plan)?;
    let metric = match kind.kind {
        TextKind::CausalLm => "kl",
        TextKind::Encoder => "1 - cosine",
    };
    let masks: Vec<Option<&[i64]>> = (0..seqs.ids.len())
        .map(|i| seqs.masks.as_ref().map(|m| m[i].as_slice()))
        .collect();
    let feeds: Vec<Vec<InputTensor>> = seqs
        .ids
        .iter()
        .zip(&masks)
        .map(|(ids, m)| feed(&plan, ids, *m))
        .collect();

    // The sites this can measure, with the places their errors enter.
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut measured: Vec<(usize, Vec<Reader>)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in sites.iter().enumerate() {
        if !seen.insert(s.name.clone()) {
            continue;
        }
        match readers(g, &s.name) {
            Ok(r) => measured.push((i, r)),
            Err(why) => skipped.push((s.name.clone(), why)),
        }
    }
    if measured.is_empty() {
        return Ok(SensitivityReport {
            metric,
            sequences: seqs.ids.len(),
            tokens: 0,
            seconds: start.elapsed().as_secs_f64(),
            sites: Vec::new(),
            skipped,
        });
    }
    if let Some(p) = progress {
        p(Progress::Begin {
            phase: "sensitivity",
            total: measured.len(),
        });
    }

    // What the perturbations depend on (the readers' left operands, the ids), per sequence,
    // from the original.
    let mut taps: Vec<String> = Vec::new();
    for (_, rs) in &measured {
        for r in rs {
            if !taps.contains(&r.input) {
                taps.push(r.input.clone());
            }
        }
    }
    let (tapped, _) =
        Runner::load_tapped(path, &plan.specs, Some(&taps)).map_err(tract_err(path))?;
    let xs: Vec<Vec<(Vec<usize>, Vec<f32>)>> = feeds
        .iter()
        .map(|f| tapped.run_f32(f).map_err(tract_err(path)))
        .collect::<Result<_, _>>()?;
    drop(tapped);
    let tap_ix: HashMap<&str, usize> = taps
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();

    // The original with an `Add(y, Δ)` after every reader; `first[i]` is the index of site i's
    // first Δ (its readers' are consecutive).
    let mut m = original.clone();
    let mut shapes: Vec<Vec<usize>> = Vec::new();
    let mut specs = plan.specs.clone();
    let mut first: Vec<usize> = Vec::with_capacity(measured.len());
    for (i, rs) in &measured {
        let s = &sites[*i];
        first.push(shapes.len());
        for r in rs {
            let j = shapes.len();
            let x = &xs[0][tap_ix[r.input.as_str()]].0;
            let n = match r.read {
                Read::Right => s.matrix.dims[1],
                Read::RightT => s.matrix.dims[0],
                Read::Rows => s.matrix.dims[1],
            } as usize;
            let mut shape = x.clone();
            match (r.read, shape.last_mut()) {
                (Read::Rows, _) => shape.push(n),
                (_, Some(d)) => *d = n,
                (_, None) => return Err(mismatch(path, format!("'{}' is a scalar", r.input))),
            }
            let g = &mut m.graph;
            let name = g.fresh_name(&format!("hcc_sensitivity_delta_{j}"));
            let ty = ValueType::tensor(
                DType::F32,
                shape.iter().map(|&d| Dim::Known(d as i64)).collect(),
            );
            let d = g
                .add_input(name.clone(), Some(ty))
                .map_err(|e| mismatch(path, e.to_string()))?;
            let z = g.fresh_name(&format!("{}_perturbed", g.value(r.y).name));
            let (add, outs) = g
                .add_node(
                    Node::new("Add", format!("hcc_sensitivity_add_{j}")),
                    vec![Some(r.y), Some(d)],
                    vec![Some(z)],
                )
                .map_err(|e| mismatch(path, e.to_string()))?;
            let z = outs[0].ok_or_else(|| mismatch(path, "no output"))?;
            g.replace_uses(r.y, z);
            g.set_input(add, 0, Some(r.y));
            specs.push(InputSpec {
                name,
                dtype: DType::F32,
                shape: shape.clone(),
                fill: Fill::Normal,
            });
            shapes.push(shape);
        }
    }
    // A site read in several places (a tied table) perturbs the input of its later readers
    // (the LM head reads hidden states that the table's rows made): those inputs are outputs
    // too, and the site runs twice, the second time with their errors on the perturbed inputs.
    let mut again: Vec<String> = Vec::new();
    for (_, rs) in &measured {
        if rs.len() > 1 {
            for r in rs.iter().filter(|r| r.read != Read::Rows) {
                if !again.contains(&r.input) {
                    again.push(r.input.clone());
                }
            }
        }
    }
    {
        let g = &mut m.graph;
        let mut outs = Vec::new();
        for name in std::iter::once(&kind.output).chain(&again) {
            outs.push(
                g.value_by_name(name)
                    .ok_or_else(|| mismatch(path, format!("no value '{name}'")))?,
            );
        }
        g.outputs = outs;
        g.remove_dead();
    }
    let again_ix: HashMap<&str, usize> = again
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i + 1))
        .collect();
    let bytes = crate::onnx::export::to_bytes(&m).map_err(|e| mismatch(path, e.to_string()))?;
    drop(m);
    let (runner, _) = Runner::load_bytes(&bytes, &specs, None).map_err(tract_err(path))?;
    drop(bytes);
    let extra = ExtraInputs::zeros(&shapes).map_err(tract_err(path))?;
    let keep =
        |seq: usize, row: usize| masks[seq].is_none_or(|m| m.get(row).is_none_or(|&k| k != 0));

    // The reference outputs (every Δ zero): log-probabilities for an LM.
    let mut reference: Vec<(Vec<usize>, Vec<f32>)> = feeds
        .iter()
        .map(|f| {
            let outs = runner
                .run_f32_extra(f, &extra, &[])
                .map_err(tract_err(path))?;
            outs.into_iter()
                .next()
                .ok_or_else(|| mismatch(path, "the model has no output"))
        })
        .collect::<Result<_, _>>()?;
    let width = |shape: &[usize]| *shape.last().unwrap_or(&1);
    let mut tokens = 0u64;
    for (si, (shape, data)) in reference.iter_mut().enumerate() {
        let v = width(shape).max(1);
        tokens += (0..data.len() / v).filter(|&r| keep(si, r)).count() as u64;
        if kind.kind == TextKind::CausalLm {
            log_softmax(data, v);
        }
    }
    let denom = match kind.kind {
        TextKind::CausalLm => tokens.max(1) as f64,
        TextKind::Encoder => feeds.len().max(1) as f64,
    };

    let results: Vec<Result<SiteSensitivity, EvalError>> = measured
        .par_iter()
        .zip(&first)
        .map(|((i, rs), &j0)| {
            let s = &sites[*i];
            let fail = |d: String| mismatch(path, format!("{}: {d}", s.name));
            let (k, n) = (s.matrix.dims[0] as usize, s.matrix.dims[1] as usize);
            let w = s.matrix.as_f32().ok_or_else(|| fail("not f32".into()))?;
            let a = s.factors.0.as_f32().ok_or_else(|| fail("not f32".into()))?;
            let b = s.factors.1.as_f32().ok_or_else(|| fail("not f32".into()))?;
            let r = s.factors.0.dims.get(1).copied().unwrap_or(0) as usize;
            if a.len() != k * r || b.len() != r * n || w.len() != k * n {
                return Err(fail("factors do not match the matrix".into()));
            }
            // What the factors change: A·B − W, and its transpose for a tied head.
            let mut dw = matmul(&a, &b, (k, r, n));
            dw.iter_mut().zip(w.iter()).for_each(|(d, &x)| *d -= x);
            let dwt: Option<Vec<f32>> = rs.iter().any(|x| x.read == Read::RightT).then(|| {
                let mut t = vec![0.0f32; k * n];
                for row in 0..k {
                    for col in 0..n {
                        t[col * k + row] = dw[row * n + col];
                    }
                }
                t
            });
            let (mut energy, mut divergence) = (0.0f64, 0.0f64);
            // The energy is measured in the units of the site's whitened spectrum: a table's
            // spectrum weighs its rows by how often they are read, so only its Gather counts
            // (a tied LM head's error is a consequence of the same change, and its divergence
            // is included, but its logits' error is not what the spectrum measures).
            let has_rows = rs.iter().any(|x| x.read == Read::Rows);
            for (si, f) in feeds.iter().enumerate() {
                // Inputs of the readers as the perturbed model computes them (second pass).
                let mut moved: Option<Vec<(Vec<usize>, Vec<f32>)>> = None;
                let passes = if rs.len() > 1 { 2 } else { 1 };
                for pass in 0..passes {
                    let last = pass + 1 == passes;
                    let mut deltas: Vec<Vec<f32>> = Vec::with_capacity(rs.len());
                    for rd in rs {
                        let x = match (&moved, again_ix.get(rd.input.as_str())) {
                            (Some(o), Some(&ix)) => &o[ix].1,
                            _ => &xs[si][tap_ix[rd.input.as_str()]].1,
                        };
                        let delta = match rd.read {
                            Read::Right => matmul(x, &dw, (x.len() / k.max(1), k, n)),
                            Read::RightT => matmul(
                                x,
                                dwt.as_deref().unwrap_or_default(),
                                (x.len() / n.max(1), n, k),
                            ),
                            Read::Rows => {
                                let mut d = Vec::with_capacity(x.len() * n);
                                for &id in x {
                                    let row = id as usize;
                                    if id < 0.0 || row >= k {
                                        return Err(fail(format!(
                                            "token id {id} outside the table"
                                        )));
                                    }
                                    d.extend_from_slice(&dw[row * n..(row + 1) * n]);
                                }
                                d
                            }
                        };
                        let cols = match rd.read {
                            Read::RightT => k,
                            _ => n,
                        };
                        if last && (!has_rows || rd.read == Read::Rows) {
                            energy += delta
                                .chunks_exact(cols)
                                .enumerate()
                                .filter(|(row, _)| keep(si, *row))
                                .map(|(_, d)| {
                                    d.iter().map(|&z| (z as f64) * (z as f64)).sum::<f64>()
                                })
                                .sum::<f64>();
                        }
                        deltas.push(delta);
                    }
                    let given: Vec<(usize, &[f32])> = deltas
                        .iter()
                        .enumerate()
                        .map(|(o, d)| (j0 + o, d.as_slice()))
                        .collect();
                    let outs = runner
                        .run_f32_extra(f, &extra, &given)
                        .map_err(tract_err(path))?;
                    if !last {
                        moved = Some(outs);
                        continue;
                    }
                    let out = outs.into_iter().next().map(|o| o.1).unwrap_or_default();
                    let (shape, refd) = &reference[si];
                    if out.len() != refd.len() {
                        return Err(fail("the output changed shape".into()));
                    }
                    let v = width(shape).max(1);
                    divergence += match kind.kind {
                        TextKind::CausalLm => kl_sum(refd, &out, v, &|row| keep(si, row)),
                        TextKind::Encoder => {
                            let a = pooled(&out, v, &|row| keep(si, row));
                            let b = pooled(refd, v, &|row| keep(si, row));
                            1.0 - cosine(&a, &b)
                        }
                    };
                }
            }
            if let Some(p) = progress {
                p(Progress::Advance(1));
            }
            let divergence = divergence / denom;
            Ok(SiteSensitivity {
                name: s.name.clone(),
                rank: r,
                readers: rs.len(),
                energy,
                divergence,
                per_energy: if energy > 0.0 {
                    divergence / energy
                } else {
                    0.0
                },
            })
        })
        .collect();
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        let s = r?;
        tracing::debug!(
            "sensitivity {}: rank {}, ‖δ‖² {:.4e}, {metric} {:.4e}, per unit {:.4e}",
            s.name,
            s.rank,
            s.energy,
            s.divergence,
            s.per_energy
        );
        if s.energy > 0.0 {
            out.push(s);
        } else {
            skipped.push((s.name, "exact at the probe rank: nothing to measure".into()));
        }
    }
    Ok(SensitivityReport {
        metric,
        sequences: seqs.ids.len(),
        tokens,
        seconds: start.elapsed().as_secs_f64(),
        sites: out,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::ir::Tensor;

    #[test]
    fn kl_of_equal_distributions_is_zero_and_known_otherwise() {
        let mut p = vec![0.0f32, 1.0, 2.0, 0.5, 0.5, 0.5];
        let q = vec![1.0f32, 1.0, 1.0, 0.5, 0.5, 0.5];
        let logits = p.clone();
        log_softmax(&mut p, 3);
        assert!(kl_sum(&p, &logits, 3, &|_| true).abs() < 1e-6);
        // Row 0: p = softmax(0, 1, 2), q uniform: KL = Σ p log p + log 3.
        let e: Vec<f64> = [0.0f64, 1.0, 2.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        let want: f64 = e.iter().map(|x| x / z * (x / z).ln()).sum::<f64>() + 3f64.ln();
        let got = kl_sum(&p, &q, 3, &|_| true);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!(kl_sum(&p, &q, 3, &|r| r == 1).abs() < 1e-6);
    }

    fn models() -> PathBuf {
        let dir = std::env::var_os("HCC_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/hcc-models")
            });
        assert!(
            dir.join("smollm2-135m-4layers-f32.onnx").exists(),
            "real models not found in {} — run `bash ../shared/models/fetch.sh` (or set HCC_MODELS)",
            dir.display()
        );
        dir
    }

    /// A factorization keeping the first `r` columns of the constant `name`: `A = W[:, :r]`,
    /// `B = [I | 0]`.
    fn leading_columns(m: &Model, name: &str, r: usize) -> Factorization {
        let v = m.graph.value_by_name(name).unwrap();
        let w = m.graph.constant(v).unwrap().clone();
        let (k, n) = (
            w.dims[0] as usize,
            w.dims.get(1).copied().unwrap_or(1) as usize,
        );
        let wd = w.as_f32().unwrap();
        let a: Vec<f32> = (0..k).flat_map(|i| wd[i * n..i * n + r].to_vec()).collect();
        let b: Vec<f32> = (0..r)
            .flat_map(|i| (0..n).map(move |j| if i == j { 1.0 } else { 0.0 }))
            .collect();
        Factorization {
            name: name.into(),
            matrix: Arc::new(w.clone()),
            rank: r,
            factors: (
                Arc::new(Tensor::from_f32(vec![k as i64, r as i64], &a)),
                Arc::new(Tensor::from_f32(vec![r as i64, n as i64], &b)),
            ),
        }
    }

    /// The injected `Δ`s reproduce what replacing the weight does: the measured KL equals the
    /// KL of the model whose constant is `A·B`, run as a model of its own — for a linear layer
    /// and for the tied token table (its Gather and its LM head perturbed together).
    #[test]
    fn injected_error_measures_what_replacing_the_weight_does() {
        let dir = models();
        let path = dir.join("smollm2-135m-4layers-f32.onnx");
        let m = crate::onnx::load(&path).unwrap();
        let sites = [
            leading_columns(&m, "model.layers.1.mlp.down_proj.weight", 64),
            leading_columns(&m, "model.embed_tokens.weight", 256),
            leading_columns(&m, "model.layers.1.input_layernorm.weight", 1),
        ];
        let mut calib = CalibOptions::new(
            dir.join("text-calib.txt"),
            Some(dir.join("smollm2-tokenizer.json")),
        );
        calib.seq_len = 64;
        calib.max_chunks = 2;
        let opts = SensitivityOptions {
            calib: calib.clone(),
        };
        let rep = measure(&path, &m, &sites[..2], &opts, None).unwrap();
        assert_eq!(rep.metric, "kl");
        assert_eq!((rep.sequences, rep.tokens), (2, 128));
        assert_eq!(rep.sites.len(), 2, "{rep:?}");
        assert!(rep.skipped.is_empty(), "{rep:?}");
        assert_eq!(rep.sites[0].readers, 1);
        assert_eq!(rep.sites[1].readers, 2, "Gather and the LM head");

        let seqs = sequences(&path, &calib).unwrap();
        let plan = inputs::plan(&m.graph, 1, seqs.len, None).unwrap();
        let out = ["logits".to_string()];
        let (orig, _) = Runner::load_tapped(&path, &plan.specs, Some(&out))
            .ok()
            .unwrap();
        for (site, got) in sites.iter().zip(&rep.sites) {
            assert!(got.divergence > 1e-4 && got.energy > 0.0, "{got:?}");
            assert!((got.per_energy - got.divergence / got.energy).abs() <= 1e-12 * got.per_energy);
            // The same KL from the model with A·B stored, run on its own.
            let (k, n) = (site.matrix.dims[0] as usize, site.matrix.dims[1] as usize);
            let a = site.factors.0.as_f32().unwrap();
            let b = site.factors.1.as_f32().unwrap();
            let ab = matmul(&a, &b, (k, site.rank, n));
            let mut changed = m.clone();
            let cv = changed.graph.value_by_name(&site.name).unwrap();
            changed.graph.value_mut(cv).def =
                ValueDef::Initializer(Tensor::from_f32(vec![k as i64, n as i64], &ab));
            let bytes = crate::onnx::export::to_bytes(&changed).unwrap();
            let (alt, _) = Runner::load_bytes(&bytes, &plan.specs, Some(&out))
                .ok()
                .unwrap();
            let mut kl = 0.0;
            for ids in &seqs.ids {
                let f = feed(&plan, ids, None);
                let (shape, mut p) = orig.run_f32(&f).ok().unwrap().remove(0);
                let (_, q) = alt.run_f32(&f).ok().unwrap().remove(0);
                let v = *shape.last().unwrap();
                log_softmax(&mut p, v);
                kl += kl_sum(&p, &q, v, &|_| true);
            }
            kl /= 128.0;
            assert!(
                (kl - got.divergence).abs() <= 1e-3 * kl,
                "{}: injected {} vs replaced {kl}",
                site.name,
                got.divergence
            );
        }
        // The tied table's energy is its Gather's error alone, Σ over the tokens read of
        // ‖(A·B − W)[id]‖² (the units of its count-weighted spectrum), not the LM head's.
        let t = &sites[1];
        let (k, n) = (t.matrix.dims[0] as usize, t.matrix.dims[1] as usize);
        let w = t.matrix.as_f32().unwrap();
        let ab = matmul(
            &t.factors.0.as_f32().unwrap(),
            &t.factors.1.as_f32().unwrap(),
            (k, t.rank, n),
        );
        let rows: f64 = seqs
            .ids
            .iter()
            .flatten()
            .map(|&id| {
                let i = id as usize;
                (0..n)
                    .map(|j| ((ab[i * n + j] - w[i * n + j]) as f64).powi(2))
                    .sum::<f64>()
            })
            .sum();
        let got = rep.sites[1].energy;
        assert!(
            (got - rows).abs() <= 1e-4 * rows,
            "table energy {got} vs Gather rows {rows}"
        );

        // A constant read by something else (a norm's Mul) is skipped, with the reason.
        let rep = measure(&path, &m, &sites[2..], &opts, None).unwrap();
        assert!(rep.sites.is_empty());
        assert!(rep.skipped[0].1.contains("read by Mul"), "{rep:?}");
    }
}
