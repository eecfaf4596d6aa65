//! The compile report: sizes before and after (as stored in the file), per rule and per site,
//! the error each rewrite introduced, the planner's decisions, and fidelity when measured.

use std::fmt::Write as _;

use serde::Serialize;

use super::inspect::{human_bytes, human_count};
use crate::rewrite::engine::{PlanReport, RewriteReport};

/// Everything `hcc compile --report` writes. JSON field names are part of the interface.
#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub model: String,
    pub output: String,
    pub pipeline: String,
    /// The numeric backend that computed the factors and masks, and why it was chosen
    /// (empty when not recorded).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// The SVD method of every `lowrank` (`--svd`): "auto" (exact or Gram at high ranks) or
    /// "randomized" (empty when not recorded).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub svd: String,
    /// Stored parameters (initializers, counted as written) before and after.
    pub params_before: u64,
    pub params_after: u64,
    /// Stored tensor bytes before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Sizes of the files themselves (model file plus external data).
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// params_before / params_after.
    pub ratio: f64,
    pub rules: Vec<RuleSummary>,
    pub sites: Vec<SiteReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanReport>,
    pub stages: RewriteReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<serde_json::Value>,
    /// `--strategy auto` with calibration text: each strategy tried and its score.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strategy_trials: Vec<StrategyTrial>,
    /// The calibration data, when given (`--calib`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
    /// Quality on held-out text, when measured (`--eval-text`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_eval: Option<serde_json::Value>,
    /// The sequential refit, when run (`--sequential`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refit: Option<crate::eval::sequential::RefitReport>,
    /// The sensitivity measurement, when the `sensitivity` strategy was planned: each site's
    /// probe rank, output error, what it did to the model's output, and the ratio the planner
    /// weighed its spectrum by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<crate::eval::sensitivity::SensitivityReport>,
}

/// One strategy `--strategy auto` compiled and scored on the calibration text.
#[derive(Clone, Debug, Serialize)]
pub struct StrategyTrial {
    /// The planner strategy.
    pub strategy: String,
    /// What was measured: "perplexity ratio" (compressed / original) or
    /// "sentence-embedding cosine".
    pub metric: String,
    /// Its value.
    pub value: f64,
    /// Whether this plan was kept.
    pub chosen: bool,
    /// Whether it was scored on windows (or lines) of the calibration text that the
    /// statistics did not see (else on the first ones, where the text had nothing more).
    pub held_out: bool,
}

/// What calibration used.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationReport {
    /// The data file.
    pub data: String,
    /// Sequences run through the original model.
    pub sequences: usize,
    /// Tokens whose activations entered the statistics (padding excluded).
    pub tokens: u64,
    /// Values whose statistics were collected (inputs of whitened sites).
    pub activations: usize,
    /// Gram damping λ (relative to the mean diagonal).
    pub damp: f64,
    /// Token-count damping (relative to the mean count) of token tables.
    pub token_damp: f64,
    /// Tokens counted for token tables (the whole calibration data).
    pub counted_tokens: u64,
    /// Seconds spent collecting (or reading the cache).
    pub seconds: f64,
    /// Whether the statistics came from the cache.
    pub cached: bool,
}

/// Totals for one rule.
#[derive(Clone, Debug, Serialize)]
pub struct RuleSummary {
    pub rule: String,
    pub fired: usize,
    pub near_misses: usize,
    /// Stored parameters saved by this rule's stages (negative if they grew).
    pub params_saved: i64,
    pub bytes_saved: i64,
}

/// One transformed constant at one site.
#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    pub rule: String,
    pub node: String,
    pub constant: String,
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// A token table in the hot form (`lowrank_hot`): rows stored exactly, `rank` being the
    /// rank of the other rows; or a quantized table (`pq`): rows corrected exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_rows: Option<usize>,
    /// A product-quantized token table (`pq`): columns per piece, each piece one byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pq_width: Option<usize>,
    /// With `pq_width`: codewords per column block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub centroids: Option<usize>,
    /// ‖W − Ŵ‖_F / ‖W‖_F; for a whitened site (`whitened` set), the relative output error on
    /// the calibration data instead, ‖X·W − X·Ŵ‖_F / ‖X·W‖_F.
    pub rel_error: f64,
    /// The value whose calibration activations the factorization preserves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whitened: Option<String>,
    /// Set when the sequential refit refitted the site: its output error before the refit, and
    /// `rel_error` is then ‖X·W − X̂·Ŵ‖_F / ‖X·W‖_F with `X̂` the compressed model's own inputs
    /// (every earlier site refitted), i.e. how far this layer's outputs in the compressed model
    /// are from the original's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refit_from: Option<f64>,
    pub params_before: u64,
    pub params_after: u64,
    /// The factors are shared with an earlier site (a tied weight): stored once.
    pub shared: bool,
    /// For masks: "sparse" (stored as a sparse initializer) or "dense" (zeros stored, no saving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Bytes the storage saves against the dense constant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_saved: Option<u64>,
}

impl CompileReport {
    /// Assemble the report from the engine's stages.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: String,
        output: String,
        stages: RewriteReport,
        plan: Option<PlanReport>,
        (params_before, bytes_before): (u64, u64),
        (params_after, bytes_after): (u64, u64),
        file_bytes_before: u64,
        file_bytes_after: u64,
    ) -> CompileReport {
        let mut rules: Vec<RuleSummary> = Vec::new();
        let mut sites = Vec::new();
        for s in &stages.stages {
            let i = match rules.iter().position(|r| r.rule == s.rule) {
                Some(i) => i,
                None => {
                    rules.push(RuleSummary {
                        rule: s.rule.clone(),
                        fired: 0,
                        near_misses: 0,
                        params_saved: 0,
                        bytes_saved: 0,
                    });
                    rules.len() - 1
                }
            };
            let r = &mut rules[i];
            r.fired += s.fired.len();
            r.near_misses += s.near_misses.len();
            r.params_saved += s.params_before as i64 - s.params_after as i64;
            r.bytes_saved += s.bytes_before as i64 - s.bytes_after as i64;
            for f in &s.fired {
                for n in &f.notes {
                    sites.push(SiteReport {
                        rule: s.rule.clone(),
                        node: f.at.clone(),
                        constant: n.constant.clone(),
                        shape: n.shape.clone(),
                        rank: n.rank,
                        sparsity: n.sparsity,
                        hot_rows: n.hot_rows,
                        pq_width: n.pq_width,
                        centroids: n.centroids,
                        rel_error: n.rel_error,
                        whitened: n.whitened.clone(),
                        refit_from: None,
                        params_before: n.params_before,
                        params_after: if n.shared { 0 } else { n.params_after },
                        shared: n.shared,
                        storage: n.storage.clone(),
                        bytes_saved: n.bytes_saved,
                    });
                }
            }
        }
        CompileReport {
            model,
            output,
            pipeline: stages.pipeline.clone(),
            backend: String::new(),
            svd: String::new(),
            params_before,
            params_after,
            bytes_before,
            bytes_after,
            file_bytes_before,
            file_bytes_after,
            ratio: params_before as f64 / params_after.max(1) as f64,
            rules,
            sites,
            plan,
            stages,
            fidelity: None,
            calibration: None,
            strategy_trials: Vec::new(),
            text_eval: None,
            refit: None,
            sensitivity: None,
        }
    }

    /// Records the sequential refit: the sites it refitted carry their new output errors.
    pub fn set_refit(&mut self, refit: crate::eval::sequential::RefitReport) {
        for r in &refit.sites {
            for s in self
                .sites
                .iter_mut()
                .filter(|s| s.constant == r.name && !s.shared)
            {
                s.refit_from = Some(r.before);
                s.rel_error = r.after;
            }
        }
        self.refit = Some(refit);
    }

    /// The terminal table.
    pub fn render(&self, max_sites: usize) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{} → {}  (pipeline {})",
            self.model, self.output, self.pipeline
        );
        if !self.backend.is_empty() {
            let _ = writeln!(o, "  backend     {}", self.backend);
        }
        if !self.svd.is_empty() && self.svd != "auto" {
            let _ = writeln!(o, "  svd         {}", self.svd);
        }
        let _ = writeln!(
            o,
            "  parameters  {:>12} → {:>12}   ratio {:.3}",
            human_count(self.params_before),
            human_count(self.params_after),
            self.ratio
        );
        let _ = writeln!(
            o,
            "  stored      {:>12} → {:>12}",
            human_bytes(self.bytes_before),
            human_bytes(self.bytes_after)
        );
        let _ = writeln!(
            o,
            "  file        {:>12} → {:>12}",
            human_bytes(self.file_bytes_before),
            human_bytes(self.file_bytes_after)
        );
        if let Some(c) = &self.calibration {
            let _ = writeln!(
                o,
                "  calibration {} ({} sequences, {} tokens, {} activations, damping {}, {:.1} s{})",
                c.data,
                c.sequences,
                c.tokens,
                c.activations,
                c.damp,
                c.seconds,
                if c.cached { ", cached" } else { "" }
            );
            if c.counted_tokens > 0 {
                let _ = writeln!(
                    o,
                    "              token tables weighted by {} tokens of the whole data (damping {})",
                    c.counted_tokens, c.token_damp
                );
            }
        }
        if let Some(r) = &self.refit {
            let n = r.sites.len().max(1) as f64;
            let mean = |f: fn(&crate::eval::sequential::SiteRefit) -> f64| {
                r.sites.iter().map(f).sum::<f64>() / n
            };
            let _ = writeln!(
                o,
                "  refit       {} sites in sequence ({} blocks, strength {}, {:.1} s): mean output error {:.4} → {:.4}{}",
                r.sites.len(),
                r.blocks,
                r.strength,
                r.seconds,
                mean(|s| s.before),
                mean(|s| s.after),
                if r.skipped.is_empty() {
                    String::new()
                } else {
                    format!(", {} left as they were", r.skipped.len())
                }
            );
        }
        if let Some(r) = &self.sensitivity {
            let _ = writeln!(
                o,
                "  sensitivity {} sites, each alone at its uniform rank, on {} tokens ({}, {:.1} s){}",
                r.sites.len(),
                r.tokens,
                r.metric,
                r.seconds,
                if r.skipped.is_empty() {
                    String::new()
                } else {
                    format!(", {} not measured (uniform rank)", r.skipped.len())
                }
            );
        }
        if !self.strategy_trials.is_empty() {
            let tried: Vec<String> = self
                .strategy_trials
                .iter()
                .map(|t| {
                    format!(
                        "{} {:.4}{}",
                        t.strategy,
                        t.value,
                        if t.chosen { " (kept)" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "  planner     auto, {} on the calibration text ({}): {}",
                self.strategy_trials[0].metric,
                if self.strategy_trials[0].held_out {
                    "held out from the statistics"
                } else {
                    "the windows of the statistics"
                },
                tried.join(", ")
            );
        }
        if let Some(p) = &self.plan {
            if let Some(t) = p.target_params {
                let _ = writeln!(
                    o,
                    "  budget      {} parameters ({} strategy)",
                    human_count(t),
                    p.strategy.name()
                );
            }
        }
        let _ = writeln!(
            o,
            "\n  {:<20} {:>6} {:>8} {:>14} {:>14}",
            "rule", "fired", "misses", "params saved", "bytes saved"
        );
        for r in &self.rules {
            let _ = writeln!(
                o,
                "  {:<20} {:>6} {:>8} {:>14} {:>14}",
                r.rule, r.fired, r.near_misses, r.params_saved, r.bytes_saved
            );
        }
        if !self.sites.is_empty() {
            let _ = writeln!(
                o,
                "\n  {:<22} {:<44} {:<14} {:>5} {:>9} {:>11} {:>11}",
                "rule", "constant", "shape", "rank", "rel err", "params", "after"
            );
            for s in self.sites.iter().take(max_sites) {
                let _ = writeln!(
                    o,
                    "  {:<22} {:<44} {:<14} {:>5} {:>9.4} {:>11} {:>11}{}{}",
                    s.rule,
                    clip(&s.constant, 44),
                    format!("{:?}", s.shape),
                    s.rank.map_or("-".into(), |r| r.to_string()),
                    s.rel_error,
                    s.params_before,
                    s.params_after,
                    match (s.shared, s.whitened.is_some(), s.refit_from.is_some()) {
                        (true, _, _) => "  (shared)",
                        (false, _, true) => "  (refit)",
                        (false, true, false) => "  (output)",
                        _ => "",
                    },
                    match (s.pq_width, s.centroids, s.hot_rows) {
                        (Some(w), Some(c), k) => format!(
                            "  pieces of {w} columns, {c} codewords, {} rows exact",
                            k.unwrap_or(0)
                        ),
                        (_, _, Some(k)) => format!("  {k} rows exact"),
                        _ => String::new(),
                    }
                );
            }
            if self.sites.iter().any(|s| s.whitened.is_some()) {
                let _ = writeln!(
                    o,
                    "  (output): calibrated site; rel err is its output error on the calibration data"
                );
            }
            if self.sites.iter().any(|s| s.refit_from.is_some()) {
                let _ = writeln!(
                    o,
                    "  (refit): refitted in sequence; rel err is its output error in the compressed model against the original's"
                );
            }
            if self.sites.len() > max_sites {
                let _ = writeln!(
                    o,
                    "  ... {} more sites (see --report)",
                    self.sites.len() - max_sites
                );
            }
        }
        if let Some(t) = &self.text_eval {
            let num = |k: &str| t[k].as_f64();
            match (num("perplexity_original"), num("perplexity_compressed")) {
                (Some(a), Some(b)) => {
                    let _ = writeln!(
                        o,
                        "\n  text {}: perplexity {a:.2} → {b:.2} ({:.3}x), {} chunks of {} tokens",
                        t["text"].as_str().unwrap_or("?"),
                        b / a,
                        t["chunks"].as_u64().unwrap_or(0),
                        t["seq_len"].as_u64().unwrap_or(0)
                    );
                    let g = &t["generation"];
                    if let Some(p) = g["prompt"].as_str() {
                        let _ = writeln!(
                            o,
                            "  greedy generation, {} tokens ({} agree):\n    prompt      {:?}\n    original    {:?}\n    compressed  {:?}",
                            g["tokens"].as_u64().unwrap_or(0),
                            g["agreeing_prefix"].as_u64().unwrap_or(0),
                            p,
                            g["original"].as_str().unwrap_or(""),
                            g["compressed"].as_str().unwrap_or("")
                        );
                    }
                }
                _ => {
                    let _ = writeln!(
                        o,
                        "\n  text {}: sentence-embedding cosine mean {:.4}, min {:.4} over {} sentences",
                        t["text"].as_str().unwrap_or("?"),
                        num("cosine_mean").unwrap_or(f64::NAN),
                        num("cosine_min").unwrap_or(f64::NAN),
                        t["sentences"].as_u64().unwrap_or(0)
                    );
                }
            }
        }
        if let Some(f) = &self.fidelity {
            let _ = writeln!(
                o,
                "\n  fidelity (original vs compressed on seeded inputs, tract)"
            );
            for out in f["outputs"].as_array().into_iter().flatten() {
                let num = |k: &str| {
                    out[k]
                        .as_f64()
                        .map_or("-".to_string(), |x| format!("{x:.4}"))
                };
                let _ = writeln!(
                    o,
                    "    {:<28} rel err {:>8}   cosine {:>8}   top-1 agreement {:>8}",
                    clip(out["name"].as_str().unwrap_or("?"), 28),
                    num("rel_error"),
                    num("cosine"),
                    num("top1_agreement")
                );
            }
        }
        o
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(n - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
