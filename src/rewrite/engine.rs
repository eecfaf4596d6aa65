//! The engine: runs a pipeline's stages in order. A stage matches one rule at every candidate
//! site in a deterministic order (nodes in topological order, constants in stored order),
//! evaluates its clauses, applies the resulting patch, then removes dead nodes and constants,
//! re-infers shapes and verifies the graph.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::eval::{Eval, Memo, Patch, RankSpec};
use super::matcher::{match_at, op_matches, Bindings, Root};
use super::value::Val;
use crate::dsl::ast::{Arg, Expr, Pattern, Pipeline, Rule, Step};
use crate::ir::{verify, Graph, Model, Node, Tensor, ValueDef, ValueId};

/// Why a pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A `run` step names a rule the program does not have (the checker prevents this).
    #[error("pipeline step runs unknown rule '{0}'")]
    UnknownRule(String),
    /// A rule argument is wrong.
    #[error("rule '{rule}': {detail}")]
    Argument { rule: String, detail: String },
    /// The budget cannot be met.
    #[error("{0}")]
    Budget(String),
    /// A stage left the graph invalid: a bug in a rule (or in hcc).
    #[error("after rule '{rule}' the graph is invalid: {source}")]
    Invalid {
        rule: String,
        #[source]
        source: verify::VerifyError,
    },
}

/// A size target for `rank = plan`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Target {
    /// Stored parameters: original / compressed ≥ this.
    Ratio(f64),
    /// At most this many stored parameters.
    Params(u64),
    /// At most this many stored bytes.
    Bytes(u64),
}

impl Target {
    /// The parameter budget this target means for a model of `params` parameters in `bytes`
    /// bytes (bytes are converted at the model's average bytes per parameter).
    pub fn params(&self, params: u64, bytes: u64) -> u64 {
        match *self {
            Target::Ratio(r) => (params as f64 / r).floor() as u64,
            Target::Params(p) => p,
            Target::Bytes(b) => {
                let per = bytes as f64 / params.max(1) as f64;
                (b as f64 / per.max(1e-9)).floor() as u64
            }
        }
    }
}

/// What the planner decided.
#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub strategy: crate::plan::Strategy,
    /// The parameter budget, when ranks were planned.
    pub target_params: Option<u64>,
    pub params_before: u64,
    pub sites: Vec<PlannedSite>,
}

/// One planned matrix.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedSite {
    pub name: String,
    pub shape: Vec<i64>,
    /// `None`: stays dense.
    pub rank: Option<usize>,
    /// Singular values, when the planner computed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spectrum: Option<Vec<f32>>,
}

/// One place a rule fired or nearly did.
#[derive(Clone, Debug, Serialize)]
pub struct Site {
    /// The matched node's name (or the constant's name for constant patterns).
    pub at: String,
    /// The matched node's operation (`const` for constants).
    pub op: String,
    /// What was done, or why the match did not hold.
    pub detail: String,
    /// What the kernels did here (rank, error, parameters), for fired sites.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<super::eval::Note>,
}

/// What one stage (one `run`) did.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub rule: String,
    /// The round within a `repeat` block (1-based), if any.
    pub round: Option<u32>,
    pub fired: Vec<Site>,
    pub near_misses: Vec<Site>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub params_before: u64,
    pub params_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Kernel calls answered from the memo (the same constant transformed at several sites).
    pub memo_hits: usize,
}

/// What a whole pipeline did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RewriteReport {
    pub pipeline: String,
    pub stages: Vec<StageReport>,
}

/// Looks up rules by name, and the source text of an expression (for near-miss reasons).
pub trait RuleSource {
    /// The rule called `name`.
    fn rule(&self, name: &str) -> Option<&Rule>;
    /// The source text of `e`.
    fn text(&self, e: &Expr) -> String;
}

/// Stored parameters and bytes of a graph's constants (initializers and `Constant` nodes).
pub fn stored_size(g: &Graph) -> (u64, u64) {
    let mut params = 0u64;
    let mut bytes = 0u64;
    for &v in g.initializers() {
        match &g.value(v).def {
            ValueDef::Initializer(t) => {
                params += t.num_elements() as u64;
                bytes += t.byte_len() as u64;
            }
            ValueDef::SparseInitializer(s) => {
                params += s.values.num_elements() as u64;
                bytes += (s.values.byte_len() + s.indices.byte_len()) as u64;
            }
            _ => {}
        }
    }
    (params, bytes)
}

/// Runs rules on one model.
/// What the engine is doing, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A phase of `total` units (matrices factorized, candidate sites of a rule) begins.
    Begin {
        /// What is being done, e.g. "factorizing 61 matrices" or "rule linear_factorize".
        phase: &'a str,
        /// Units in the phase.
        total: usize,
    },
    /// `n` more units of the current phase are done.
    Advance(usize),
}

/// Advances the progress by one unit when dropped (also on an early return).
struct Done<'p>(Option<&'p ProgressSink>);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            p(Progress::Advance(1));
        }
    }
}

/// A receiver of [`Progress`] events; called from any thread.
pub type ProgressSink = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

pub struct Engine<'a> {
    pub model: &'a mut Model,
    pub rules: &'a dyn RuleSource,
    memo: Memo,
    progress: Option<ProgressSink>,
    /// Constants stored from kernel results, by the result's address; the `Arc` is kept so
    /// that the address cannot be reused by another tensor while the engine lives.
    stored: HashMap<usize, (Arc<Tensor>, ValueId)>,
    /// The last survey: (pipeline name, its `lowrank` calls).
    surveyed: Option<(String, Vec<super::eval::Request>)>,
    /// The last plan's matrices whitened by a full Gram, with their ranks.
    whitened: Vec<(super::eval::Request, usize)>,
    /// Exchange rates for the `sensitivity` strategy, by constant name.
    sensitivity: HashMap<String, f64>,
    /// The last plan's factorized matrices: request, rank, and the tap of its memo key.
    factored: Vec<(super::eval::Request, usize, Option<String>)>,
}

/// A matrix the last plan factorized and the factors it got (see [`Engine::factorizations`]).
#[derive(Clone, Debug)]
pub struct Factorization {
    /// The factorized constant (its name, or a kernel's description of it).
    pub name: String,
    /// `W`, `K × N` f32.
    pub matrix: Arc<Tensor>,
    pub rank: usize,
    /// `A` (`K × r`) and `B` (`r × N`), whatever form the model stores them in.
    pub factors: (Arc<Tensor>, Arc<Tensor>),
}

/// A factorization whitened by its input's Gram, as the last [`Engine::run_pipeline`] stored
/// it: what [`crate::eval::sequential`] refits.
#[derive(Clone, Debug)]
pub struct WhitenedFactorization {
    /// The factorized constant (its name, or a kernel's description of it).
    pub name: String,
    /// `W`, `K × N` f32.
    pub matrix: Arc<Tensor>,
    /// The value whose activations whitened it.
    pub tap: String,
    pub rank: usize,
    /// The factors `A` (`K × r`) and `B` (`r × N`), whatever the stored form.
    pub factors: (Arc<Tensor>, Arc<Tensor>),
    /// Stored in the compact form: `stored` is `[A', Z, cols]`, else `[A, B]`.
    pub compact: bool,
    /// The constants of the model that hold the stored form.
    pub stored: Vec<ValueId>,
}

impl<'a> Engine<'a> {
    /// An engine over `model`.
    pub fn new(model: &'a mut Model, rules: &'a dyn RuleSource) -> Engine<'a> {
        let mut memo = Memo::default();
        memo.original_values = model.graph.value_id_bound();
        Engine {
            model,
            rules,
            memo,
            progress: None,
            stored: HashMap::new(),
            surveyed: None,
            whitened: Vec::new(),
            sensitivity: HashMap::new(),
            factored: Vec::new(),
        }
    }

    /// Report progress to `sink`: each phase of [`Engine::plan_pipeline`] and each rule of
    /// [`Engine::run_pipeline`] begins with its number of units (matrices, candidate sites) and
    /// advances as they are done. The sink may be called from several threads.
    pub fn set_progress(&mut self, sink: ProgressSink) {
        self.progress = Some(sink);
    }

    fn begin(&self, phase: &str, total: usize) {
        if let Some(p) = &self.progress {
            p(Progress::Begin { phase, total });
        }
    }

    fn advance(&self, n: usize) {
        if let Some(p) = &self.progress {
            p(Progress::Advance(n));
        }
    }

    /// The options of every `lowrank` and spectrum this engine computes (default:
    /// [`crate::compute::SvdOptions::default`]).
    pub fn set_svd(&mut self, svd: crate::compute::SvdOptions) {
        self.memo.svd = svd;
    }

    /// Use `backend` for numeric kernels (default: the CPU backend).
    pub fn set_backend(&mut self, backend: Arc<dyn crate::compute::Backend>) {
        self.memo.backend = backend;
    }

    /// Exchange rates by constant name (see [`crate::eval::sensitivity`]), for the
    /// `sensitivity` strategy of [`Engine::plan_pipeline`].
    pub fn set_sensitivity(&mut self, weights: std::collections::HashMap<String, f64>) {
        self.sensitivity = weights;
    }

    /// Use calibration statistics: `lowrank(W, rank, whiten = x)` then preserves the outputs
    /// of the sites on the calibration data (see [`crate::compute::whiten`]).
    pub fn set_whitening(&mut self, whiten: super::eval::WhitenOptions) {
        self.memo.whiten = Some(whiten);
    }

    /// The `lowrank` calls `pipeline` will make (run on a copy of the model with placeholder
    /// factors); remembered for [`Engine::plan_pipeline`].
    fn survey(&mut self, pipeline: &Pipeline) -> Result<Vec<super::eval::Request>, RewriteError> {
        if let Some((name, reqs)) = &self.surveyed {
            if *name == pipeline.name.name {
                return Ok(reqs.clone());
            }
        }
        let t0 = std::time::Instant::now();
        let mut copy = self.model.clone();
        let requests = {
            let mut survey = Engine::new(&mut copy, self.rules);
            survey.memo.backend = self.memo.backend.clone();
            survey.memo.original_values = self.memo.original_values;
            survey.memo.survey = Some(Vec::new());
            survey.run_pipeline(pipeline)?;
            survey.memo.survey.take().unwrap_or_default()
        };
        tracing::debug!("plan: survey {:.3} s", t0.elapsed().as_secs_f64());
        self.surveyed = Some((pipeline.name.name.clone(), requests.clone()));
        Ok(requests)
    }

    /// The values whose activations `pipeline`'s `lowrank(…, whiten = x)` calls would use, by
    /// name, in first-use order: what calibration must collect.
    pub fn whiten_taps(&mut self, pipeline: &Pipeline) -> Result<Vec<String>, RewriteError> {
        let mut taps: Vec<String> = Vec::new();
        for r in self.survey(pipeline)? {
            if let Some(t) = r.tap {
                if !taps.contains(&t) {
                    taps.push(t);
                }
            }
        }
        Ok(taps)
    }

    /// Survey `pipeline` (on a copy of the model), choose every `lowrank` rank (`plan` against
    /// `target` with `strategy`, `energy(p)` from the spectrum, fixed ranks as given), and
    /// factorize all sites in same-shape batches ahead of the run. With calibration
    /// ([`Engine::set_whitening`]), sites whose tap has statistics are planned and factorized
    /// on their whitened targets. Call before [`Engine::run_pipeline`].
    pub fn plan_pipeline(
        &mut self,
        pipeline: &Pipeline,
        target: Option<Target>,
        strategy: crate::plan::Strategy,
    ) -> Result<PlanReport, RewriteError> {
        use rayon::prelude::*;
        let t0 = std::time::Instant::now();
        let requests = self.survey(pipeline)?;
        // One site per distinct matrix (a tied table read in two places is one site). It is
        // whitened by the first tap of its sites whose statistics fit its rows (a tied table:
        // the token counts of its Gather; its LM head's input has the width of its columns).
        let whiten = self.memo.whiten.clone();
        let fits = |tap: &Option<String>, r: &super::eval::Request| {
            whiten
                .as_ref()
                .and_then(|w| w.site(tap.as_deref(), r.matrix.dims[0] as usize))
                .is_some()
        };
        let mut unique: Vec<super::eval::Request> = Vec::new();
        for r in requests {
            if let Some(u) = unique.iter_mut().find(|u| u.key == r.key) {
                if u.spec != r.spec && r.spec == RankSpec::Plan {
                    u.spec = RankSpec::Plan;
                }
                if !fits(&u.tap, u) && fits(&r.tap, u) {
                    u.tap = r.tap.clone();
                }
                u.compact |= r.compact;
                // Hot rows serve Gathers only: a table also read elsewhere (a tied LM head)
                // stays plain.
                u.hot &= r.hot;
                u.pq &= r.pq;
            } else {
                unique.push(r);
            }
        }
        let site_stats = |r: &super::eval::Request| {
            whiten
                .as_ref()
                .and_then(|w| w.site(r.tap.as_deref(), r.matrix.dims[0] as usize))
        };
        for r in &unique {
            let tap = site_stats(r).and(r.tap.clone());
            self.memo.taps.insert(r.key.clone(), tap);
        }
        let (params_before, bytes_before) = stored_size(&self.model.graph);
        let needs_spectrum = |r: &super::eval::Request| {
            matches!(r.spec, RankSpec::Energy(_))
                || (r.spec == RankSpec::Plan
                    && matches!(
                        strategy,
                        crate::plan::Strategy::Global
                            | crate::plan::Strategy::Block
                            | crate::plan::Strategy::Sensitivity
                    ))
        };
        let backend = self.memo.backend.clone();
        let with_spectrum = unique.iter().filter(|r| needs_spectrum(r)).count();
        if with_spectrum > 0 {
            self.begin("singular spectra", with_spectrum);
        }
        let spectra: Vec<Option<Vec<f32>>> = unique
            .par_iter()
            .map(|r| {
                if !needs_spectrum(r) {
                    return Ok(None);
                }
                let _done = Done(self.progress.as_ref());
                let data = r
                    .matrix
                    .as_f32()
                    .ok_or_else(|| format!("{} is not f32", r.name))?;
                let (k, n) = (r.matrix.dims[0] as usize, r.matrix.dims[1] as usize);
                // Whitened sites are planned on their output errors.
                let target = match (site_stats(r), &whiten) {
                    (Some(st), Some(wo)) => Some(
                        wo.target(st, &data, (k, n))
                            .map_err(|e| format!("{} (whitened): {e}", r.name))?
                            .0,
                    ),
                    _ => None,
                };
                let w = crate::compute::MatrixRef::new(k, n, target.as_deref().unwrap_or(&data))
                    .map_err(|e| e.to_string())?;
                backend
                    .full_spectrum(w)
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", r.name))
            })
            .collect::<Result<_, String>>()
            .map_err(|detail| RewriteError::Argument {
                rule: "lowrank".into(),
                detail,
            })?;
        let dims =
            |r: &super::eval::Request| (r.matrix.dims[0] as usize, r.matrix.dims[1] as usize);
        // The planner weighs a table that may take the hot or quantized form by what those
        // forms reach for the parameters of each plain rank (the reported spectra stay the
        // table's own).
        // Token tables that may take the hot or quantized form, with their row weights (once).
        let tables: Vec<Option<TableForms<'_>>> = unique
            .iter()
            .map(|r| table_forms(r, site_stats(r), whiten.as_ref()).transpose())
            .collect::<Result<_, _>>()?;
        let mut plan_spectra = spectra.clone();
        for (i, r) in unique.iter().enumerate() {
            let Some(plain) = spectra[i].as_deref() else {
                continue;
            };
            let Some(t) = &tables[i] else {
                continue;
            };
            let (v, d) = t.dims;
            let fail = |detail: String| hot_err(r, detail);
            let compact = r.compact;
            let cost = |rank: usize| crate::plan::PlanSite::sized(v, d, compact).at(rank);
            let quantized = self.pq_points(r, t)?;
            let best_pq = |budget: u64| -> Option<f64> {
                quantized
                    .iter()
                    .flat_map(|p| p.iter())
                    .filter_map(|q| q.fit((v, d), budget))
                    .map(|f| f.error)
                    .min_by(f64::total_cmp)
            };
            plan_spectra[i] = Some(if t.counted {
                crate::compute::hot::equivalent_spectrum(
                    &t.data,
                    (v, d),
                    &t.weights,
                    cost,
                    crate::plan::ALIGN,
                    &best_pq,
                )
                .map_err(|e| fail(e.to_string()))?
            } else {
                crate::compute::hot::spectrum_with(plain, cost, &best_pq)
            });
        }
        let mut ranks: Vec<Option<usize>> = vec![None; unique.len()];
        let mut fixed = params_before;
        let mut planned: Vec<usize> = Vec::new();
        for (i, r) in unique.iter().enumerate() {
            let (k, n) = dims(r);
            let site = crate::plan::PlanSite::sized(k, n, r.compact);
            fixed = fixed.saturating_sub(site.dense());
            match r.spec {
                RankSpec::Fixed(rank) => ranks[i] = Some(rank.min(k.min(n))),
                RankSpec::Energy(p) => {
                    ranks[i] = Some(
                        crate::plan::energy_rank(spectra[i].as_deref().unwrap_or(&[]), p)
                            .min(k.min(n)),
                    )
                }
                RankSpec::Plan => {
                    planned.push(i);
                    continue;
                }
            }
            // Sites at a given rank that would not save stay dense (their rule's `require`
            // says so at run time); count what they will store.
            let cost = ranks[i]
                .map(|r| site.at(r))
                .filter(|&c| c < site.dense())
                .unwrap_or(site.dense());
            fixed += cost;
        }
        let mut target_params = None;
        // What the plan leaves of the target (ranks are multiples of 8): a hot table, whose
        // size is not bound to whole rank steps, may use it.
        let mut slack = 0u64;
        // The planner's sites (in `planned` order), for a second pass once tables have chosen
        // their forms.
        let mut plan_sites: Vec<crate::plan::PlanSite> = Vec::new();
        if !planned.is_empty() {
            let t = target.ok_or_else(|| RewriteError::Argument {
                rule: "lowrank".into(),
                detail: "`rank = plan` needs a budget: pass --ratio or --max-bytes, or add a `budget` line to the pipeline".into(),
            })?;
            let goal = t.params(params_before, bytes_before);
            target_params = Some(goal);
            let sites: Vec<crate::plan::PlanSite> = planned
                .iter()
                .map(|&i| {
                    let (k, n) = dims(&unique[i]);
                    crate::plan::PlanSite {
                        k,
                        n,
                        spectrum: plan_spectra[i].clone(),
                        // A matrix computed by the rule (a slice of a fused weight) is
                        // factorized together with its siblings: it cannot go dense alone.
                        can_stay_dense: unique[i].key.starts_with('v'),
                        compact: unique[i].compact,
                        group: crate::plan::group_of(&unique[i].name),
                        weight: self.sensitivity.get(&unique[i].name).copied(),
                    }
                })
                .collect();
            let got = crate::plan::plan(&sites, fixed, goal, params_before, strategy)
                .map_err(|e| RewriteError::Budget(e.to_string()))?;
            let planned_total = fixed
                + sites
                    .iter()
                    .zip(&got)
                    .map(|(s, r)| r.map_or(s.dense(), |r| s.at(r)))
                    .sum::<u64>();
            slack = goal.saturating_sub(planned_total);
            for (&i, r) in planned.iter().zip(got) {
                ranks[i] = r;
            }
            plan_sites = sites;
        }
        // Token tables that every reader asks for in the hot form: the hot rows and cold rank
        // that approximate the table best within what its planned rank would store.
        let mut hot_forms: Vec<(usize, crate::compute::hot::HotChoice)> = Vec::new();
        let mut pq_forms: Vec<(
            usize,
            crate::compute::pq::Quantized,
            crate::compute::pq::Fit,
        )> = Vec::new();
        // Tables whose quantized form exceeds their planned budget (see below).
        let mut rounded_up: Vec<usize> = Vec::new();
        for (i, r) in unique.iter().enumerate() {
            let Some(rank) = ranks[i] else {
                continue;
            };
            let Some(t) = &tables[i] else {
                continue;
            };
            let (v, d) = t.dims;
            let fail = |detail: String| hot_err(r, detail);
            let budget = crate::plan::PlanSite::sized(v, d, r.compact).at(rank)
                + if r.spec == RankSpec::Plan { slack } else { 0 };
            let (choice, plain_error) = if t.counted {
                crate::compute::hot::choose(
                    &t.data,
                    (v, d),
                    &t.weights,
                    budget,
                    rank,
                    crate::plan::ALIGN,
                )
                .map_err(|e| fail(e.to_string()))?
            } else {
                // Without counts: the plain form's error from the table's own spectrum.
                let plain = match spectra[i].as_deref() {
                    Some(sp) => sp.to_vec(),
                    None => {
                        let w = crate::compute::MatrixRef::new(v, d, &t.data)
                            .map_err(|e| fail(e.to_string()))?;
                        backend.full_spectrum(w).map_err(|e| fail(e.to_string()))?
                    }
                };
                let tail: f64 = plain.iter().skip(rank).map(|&x| (x as f64).powi(2)).sum();
                (None, tail)
            };
            // The quantized form where it fits and approximates the table best.
            let best_error = choice.as_ref().map_or(plain_error, |c| c.error);
            let points = self.pq_points(r, t)?;
            let mut quantized = points.as_ref().and_then(|p| {
                p.iter()
                    .filter_map(|q| q.fit((v, d), budget).map(|f| (q, f)))
                    .filter(|(_, f)| f.error < best_error)
                    .min_by(|a, b| a.1.error.total_cmp(&b.1.error))
                    .map(|(q, f)| (q.clone(), f))
            });
            // A plan that stopped short of the smallest quantized form (the planner sees the
            // convex hull of the table's forms, so it may end between two of them): round up
            // to the cheapest quantized form that beats what the budget holds, if the other
            // sites can give the difference (planned again below).
            if quantized.is_none() && r.spec == RankSpec::Plan && target_params.is_some() {
                quantized = points.as_ref().and_then(|p| {
                    p.iter()
                        .filter_map(|q| {
                            let base = crate::compute::pq::pq_params(v, d, q.width, 0);
                            q.fit((v, d), base).map(|f| (q, f))
                        })
                        .filter(|(_, f)| f.error < best_error)
                        .min_by_key(|(_, f)| f.params)
                        .map(|(q, f)| (q.clone(), f))
                });
                if quantized.is_some() {
                    rounded_up.push(i);
                }
            }
            if let Some((q, f)) = quantized {
                slack = budget.saturating_sub(f.params).min(slack);
                tracing::debug!(
                    "plan: {} quantized in pieces of {} columns, {} rows exact (weighted error {:.4e} against {:.4e} plain at rank {rank})",
                    r.name,
                    q.width,
                    f.exact,
                    f.error,
                    plain_error
                );
                pq_forms.push((i, q, f));
            } else if let Some(choice) = choice {
                let used = crate::compute::hot::hot_params(v, d, choice.rows.len(), choice.rank);
                slack = budget.saturating_sub(used).min(slack);
                tracing::debug!(
                    "plan: {} keeps {} rows exactly, the rest at rank {} (weighted error {:.4e} against {:.4e} plain at rank {rank})",
                    r.name,
                    choice.rows.len(),
                    choice.rank,
                    choice.error,
                    choice.plain_error
                );
                hot_forms.push((i, choice));
            }
        }
        // A quantized table usually stores less than its planned rank would (its sizes are
        // discrete): the other planned sites are planned again around what the tables now
        // store, so that the compile meets its target rather than overshooting it.
        if let (Some(goal), false) = (target_params, pq_forms.is_empty()) {
            let stored = |i: usize| -> Option<u64> {
                let (v, d) = dims(&unique[i]);
                pq_forms
                    .iter()
                    .find(|(j, _, _)| *j == i)
                    .map(|(_, _, f)| f.params)
                    .or_else(|| {
                        hot_forms.iter().find(|(j, _)| *j == i).map(|(_, c)| {
                            crate::compute::hot::hot_params(v, d, c.rows.len(), c.rank)
                        })
                    })
            };
            let mut fixed2 = fixed;
            let mut rest: Vec<(usize, crate::plan::PlanSite)> = Vec::new();
            for (&i, site) in planned.iter().zip(&plan_sites) {
                match stored(i) {
                    Some(p) => fixed2 += p,
                    None => rest.push((i, site.clone())),
                }
            }
            let sites: Vec<crate::plan::PlanSite> = rest.iter().map(|(_, s)| s.clone()).collect();
            match crate::plan::plan(&sites, fixed2, goal, params_before, strategy) {
                Ok(got) => {
                    let before: u64 = rest
                        .iter()
                        .map(|(i, s)| ranks[*i].map_or(s.dense(), |r| s.at(r)))
                        .sum();
                    let after: u64 = sites
                        .iter()
                        .zip(&got)
                        .map(|(s, r)| r.map_or(s.dense(), |r| s.at(r)))
                        .sum();
                    tracing::debug!(
                        "plan: again around the tables' forms: the other sites store {after} parameters instead of {before}"
                    );
                    for ((i, _), r) in rest.iter().zip(got) {
                        ranks[*i] = r;
                    }
                }
                Err(_) => {
                    // The others cannot make room for the rounded-up tables: those keep the
                    // form their planned rank holds, and the first plan stands.
                    tracing::debug!(
                        "plan: the other sites cannot make room for {} quantized table(s)",
                        rounded_up.len()
                    );
                    pq_forms.retain(|(i, _, _)| !rounded_up.contains(i));
                }
            }
        }
        // Factorize every site, same shape and rank together.
        let mut groups: std::collections::BTreeMap<(usize, usize, usize), Vec<usize>> =
            std::collections::BTreeMap::new();
        let mut whitened: Vec<usize> = Vec::new();
        for (i, r) in unique.iter().enumerate() {
            let (k, n) = dims(r);
            self.memo.ranks.insert(r.key.clone(), ranks[i]);
            if let Some(rank) = ranks[i] {
                if site_stats(r).is_some() {
                    whitened.push(i);
                } else {
                    groups.entry((k, n, rank)).or_default().push(i);
                }
            }
        }
        tracing::debug!(
            "plan: spectra + planning {:.3} s",
            t0.elapsed().as_secs_f64()
        );
        self.factored = unique
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let rank = ranks[i]?;
                let tap = self.memo.taps.get(&r.key).cloned().flatten();
                Some((r.clone(), rank, tap))
            })
            .collect();
        self.whitened = whitened
            .iter()
            .filter(|&&i| {
                matches!(
                    site_stats(&unique[i]),
                    Some(super::eval::SiteStats::Full(_))
                )
            })
            .map(|&i| (unique[i].clone(), ranks[i].unwrap_or(1)))
            .collect();
        let to_factor: usize = groups.values().map(Vec::len).sum::<usize>() + whitened.len();
        if to_factor > 0 {
            self.begin(&format!("factorizing {to_factor} matrices"), to_factor);
        }
        // Groups go to the backend in windows: one group at a time, or, where the backend
        // works on several at once (the GPU), as many as hold at most WINDOW_BYTES of weights.
        const WINDOW_BYTES: usize = 1 << 30;
        let groups: Vec<SiteGroup> = groups.into_iter().collect();
        let concurrent = self.memo.backend.concurrent_jobs() > 1;
        let mut start = 0;
        while start < groups.len() {
            let mut end = start + 1;
            let mut bytes = 0usize;
            while concurrent && end < groups.len() {
                let ((k, n, _), members) = &groups[end - 1];
                bytes += 4 * k * n * members.len();
                let ((k2, n2, _), next) = &groups[end];
                if bytes + 4 * k2 * n2 * next.len() > WINDOW_BYTES {
                    break;
                }
                end += 1;
            }
            self.factorize_window(&groups[start..end], &unique)?;
            start = end;
        }
        // Whitened sites: each its own target (one per matrix and tap), in parallel.
        if let Some(wo) = &whiten {
            let tw = std::time::Instant::now();
            let backend = self.memo.backend.clone();
            let svd = self.memo.svd.clone();
            let built = whitened
                .par_iter()
                .map(|&i| {
                    let _done = Done(self.progress.as_ref());
                    let r = &unique[i];
                    let rank = ranks[i].unwrap_or(1);
                    let data = r
                        .matrix
                        .as_f32()
                        .ok_or_else(|| format!("{} is not f32", r.name))?;
                    let stats = site_stats(r).ok_or("no statistics")?;
                    let tap = r.tap.as_deref().unwrap_or_default();
                    super::eval::whitened_factors(
                        backend.as_ref(),
                        &svd,
                        wo,
                        &r.matrix,
                        &data,
                        &r.name,
                        tap,
                        stats,
                        rank,
                    )
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|detail| RewriteError::Argument {
                    rule: "lowrank".into(),
                    detail,
                })?;
            for (&i, (v, note)) in whitened.iter().zip(built) {
                let r = &unique[i];
                let rank = ranks[i].unwrap_or(1);
                self.memo
                    .insert_lowrank(&r.key, rank, r.tap.as_deref(), v, note);
            }
            tracing::debug!(
                "plan: {} whitened matrices: {:.3} s",
                whitened.len(),
                tw.elapsed().as_secs_f64()
            );
            for (i, choice) in &hot_forms {
                let r = &unique[*i];
                let fail = |detail: String| RewriteError::Argument {
                    rule: "lowrank_hot".into(),
                    detail,
                };
                let data = r
                    .matrix
                    .as_f32()
                    .ok_or_else(|| fail(format!("{} is not f32", r.name)))?;
                let Some(super::eval::SiteStats::Counts(c)) = site_stats(r) else {
                    continue;
                };
                let (v, note) = super::eval::hot_factors(
                    self.memo.backend.as_ref(),
                    &self.memo.svd,
                    wo,
                    &r.matrix,
                    &data,
                    &r.name,
                    r.tap.as_deref().unwrap_or_default(),
                    c,
                    choice,
                )
                .map_err(fail)?;
                self.memo.insert_hot(&r.key, v, note);
            }
        }
        for (i, q, f) in &pq_forms {
            let r = &unique[*i];
            let Some(t) = &tables[*i] else {
                continue;
            };
            let tap = t.counted.then(|| r.tap.clone().unwrap_or_default());
            let (v, note) = super::eval::pq_form(
                &r.matrix,
                &t.data,
                &r.name,
                tap.as_deref(),
                &t.weights,
                q,
                f.exact,
            );
            self.memo.insert_pq(&r.key, v, note);
        }
        let sites = unique
            .iter()
            .enumerate()
            .map(|(i, r)| PlannedSite {
                name: r.name.clone(),
                shape: vec![r.matrix.dims[0], r.matrix.dims[1]],
                rank: ranks[i],
                spectrum: spectra[i].clone(),
            })
            .collect();
        Ok(PlanReport {
            strategy,
            target_params,
            params_before,
            sites,
        })
    }

    /// Run every step of `pipeline`.
    pub fn run_pipeline(&mut self, pipeline: &Pipeline) -> Result<RewriteReport, RewriteError> {
        let mut report = RewriteReport {
            pipeline: pipeline.name.name.clone(),
            stages: Vec::new(),
        };
        self.steps(&pipeline.steps, None, &mut report)?;
        if self.memo.survey.is_none() {
            // Masked constants are stored as sparse initializers where that is smaller.
            super::prune::pack_sparse(&mut self.model.graph);
            verify::verify(&self.model.graph).map_err(|source| RewriteError::Invalid {
                rule: "sparse storage".into(),
                source,
            })?;
        }
        Ok(report)
    }

    fn steps(
        &mut self,
        steps: &[Step],
        round: Option<u32>,
        report: &mut RewriteReport,
    ) -> Result<usize, RewriteError> {
        let mut fired = 0;
        for step in steps {
            match step {
                Step::Run { rule, args, .. } => {
                    let r = self
                        .rules
                        .rule(&rule.name)
                        .ok_or_else(|| RewriteError::UnknownRule(rule.name.clone()))?;
                    let mut stage = self.run_rule(r, args)?;
                    stage.round = round;
                    fired += stage.fired.len();
                    report.stages.push(stage);
                }
                Step::Repeat { max, steps, .. } => {
                    for k in 1..=*max {
                        let n = self.steps(steps, Some(k), report)?;
                        fired += n;
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(fired)
    }

    /// Run one rule at every site, then clean up and verify.
    pub fn run_rule(&mut self, rule: &Rule, args: &[Arg]) -> Result<StageReport, RewriteError> {
        let params = self.params(rule, args)?;
        let g = &self.model.graph;
        let (params_before, bytes_before) = stored_size(g);
        let nodes_before = g.node_count();
        let hits_before = self.memo.hits;
        let mut fired = Vec::new();
        let mut misses = Vec::new();

        g.topo_order().map_err(|e| RewriteError::Invalid {
            rule: rule.name.name.clone(),
            source: e.into(),
        })?;
        let candidates = self.candidates(rule);
        let mut order = self.order();
        self.begin(&format!("rule {}", rule.name.name), candidates.len());
        for root in candidates {
            self.advance(1);
            let g = &self.model.graph;
            let live = match root {
                Root::Node(n) => g.contains_node(n),
                Root::Const(v) => !matches!(g.value(v).def, ValueDef::Removed),
            };
            if !live {
                continue;
            }
            let site = |g: &Graph, detail: String| match root {
                Root::Node(n) => Site {
                    at: g.node(n).name.clone(),
                    op: g.node(n).op_type.clone(),
                    detail,
                    notes: Vec::new(),
                },
                Root::Const(v) => Site {
                    at: g.value(v).name.clone(),
                    op: "const".into(),
                    detail,
                    notes: Vec::new(),
                },
            };
            let m = match match_at(g, &rule.pattern, root, &params) {
                Ok(m) => m,
                Err(miss) => {
                    if !miss.at_root {
                        misses.push(site(g, miss.reason));
                    }
                    continue;
                }
            };
            let root_order = match root {
                Root::Const(v) => order.get(&v).copied(),
                Root::Node(_) => None,
            };
            let mut ev = Eval {
                g,
                b: m.bindings,
                patch: Patch::default(),
                memo: &mut self.memo,
                root_order,
                order: &order,
            };
            let rules = self.rules;
            ev.memo.notes.clear();
            ev.memo.surveyed = false;
            // While surveying, `lowrank` gives placeholder factors and the site is applied like
            // in the real run, so later stages see the graph they will see then.
            let result = ev.clauses(&rule.clauses, &|e| rules.text(e));
            if let Err(reason) = result {
                misses.push(site(g, reason));
                continue;
            }
            let patch = ev.patch;
            let notes = std::mem::take(&mut self.memo.notes);
            let hint = match root {
                Root::Node(n) => g.node(n).name.clone(),
                Root::Const(v) => g.value(v).name.clone(),
            };
            let before = site(g, String::new());
            match self.apply(patch, &hint) {
                Some(detail) => {
                    fired.push(Site {
                        detail,
                        notes,
                        ..before
                    });
                    order = self.order();
                }
                None => misses.push(Site {
                    detail: "the replacement is what is already there".into(),
                    ..before
                }),
            }
        }

        let g = &mut self.model.graph;
        g.remove_dead();
        let opset = self.model.onnx_opset().unwrap_or(1);
        crate::ir::infer::infer_shapes(&mut self.model.graph, opset);
        verify::verify(&self.model.graph).map_err(|source| RewriteError::Invalid {
            rule: rule.name.name.clone(),
            source,
        })?;
        let (params_after, bytes_after) = stored_size(&self.model.graph);
        Ok(StageReport {
            rule: rule.name.name.clone(),
            round: None,
            fired,
            near_misses: misses,
            nodes_before,
            nodes_after: self.model.graph.node_count(),
            params_before,
            params_after,
            bytes_before,
            bytes_after,
            memo_hits: self.memo.hits - hits_before,
        })
    }

    /// Match `rule`'s pattern at every candidate site without evaluating its clauses or changing
    /// anything: (candidate sites, matches). For benchmarks of the matcher.
    pub fn match_all(&self, rule: &Rule) -> (usize, usize) {
        let g = &self.model.graph;
        let params = Bindings::default();
        let roots = self.candidates(rule);
        let matched = roots
            .iter()
            .filter(|&&r| match_at(g, &rule.pattern, r, &params).is_ok())
            .count();
        (roots.len(), matched)
    }

    fn candidates(&self, rule: &Rule) -> Vec<Root> {
        let g = &self.model.graph;
        match &rule.pattern {
            Pattern::Op { op, .. } => g
                .topo_order()
                .unwrap_or_default()
                .into_iter()
                .filter(|&n| op_matches(g, n, &op.op.name))
                .map(Root::Node)
                .collect(),
            Pattern::Const { .. } => g
                .initializers()
                .iter()
                .copied()
                .filter(|v| {
                    matches!(g.value(*v).def, ValueDef::Initializer(_)) && !g.inputs.contains(v)
                })
                .map(Root::Const)
                .collect(),
        }
    }

    fn order(&self) -> HashMap<ValueId, usize> {
        self.model
            .graph
            .initializers()
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i))
            .collect()
    }

    /// Parameter bindings from `run` arguments and defaults.
    fn params(&mut self, rule: &Rule, args: &[Arg]) -> Result<Bindings, RewriteError> {
        let err = |detail: String| RewriteError::Argument {
            rule: rule.name.name.clone(),
            detail,
        };
        let mut b = Bindings::default();
        let order = HashMap::new();
        let mut memo = Memo::default();
        let mut ev = Eval {
            g: &self.model.graph,
            b: Bindings::default(),
            patch: Patch::default(),
            memo: &mut memo,
            root_order: None,
            order: &order,
        };
        for (i, p) in rule.params.iter().enumerate() {
            let arg = args
                .iter()
                .find(|a| a.name.as_ref().is_some_and(|n| n.name == p.name.name))
                .or_else(|| args.get(i).filter(|a| a.name.is_none()));
            let v = match (arg, &p.default) {
                (Some(a), _) => ev.expr(&a.value).map_err(err)?,
                (None, Some(d)) => ev.expr(d).map_err(err)?,
                (None, None) => {
                    return Err(err(format!("parameter '{}' has no value", p.name.name)))
                }
            };
            b.set(&p.name.name, v);
        }
        Ok(b)
    }

    /// Apply a patch. Returns a description, or `None` if it changes nothing.
    fn apply(&mut self, patch: Patch, hint: &str) -> Option<String> {
        let g = &self.model.graph;
        // A patch whose every emit re-defines a value as itself changes nothing.
        if patch
            .emits
            .iter()
            .all(|(t, v)| matches!(v, Val::Value(x) if x == t))
        {
            return None;
        }
        let mut created: HashSet<ValueId> = HashSet::new();
        let mut outs: Vec<Vec<Option<ValueId>>> = Vec::new();
        let mut details = Vec::new();
        let direct: HashMap<usize, ValueId> = patch
            .emits
            .iter()
            .filter_map(|(t, v)| match v {
                Val::Planned(i, 0) => Some((*i, *t)),
                _ => None,
            })
            .collect();
        let _ = g;
        for (i, pn) in patch.nodes.iter().enumerate() {
            let mut inputs = Vec::new();
            for v in &pn.inputs {
                inputs.push(self.resolve(
                    v,
                    &outs,
                    &mut created,
                    &format!("{hint}.{}", pn.op_type),
                ));
            }
            let g = &mut self.model.graph;
            let base = direct
                .get(&i)
                .map(|t| g.value(*t).name.clone())
                .unwrap_or_else(|| format!("{hint}.{}", pn.op_type));
            let names: Vec<Option<String>> = (0..pn.outputs)
                .map(|k| {
                    Some(g.fresh_name(&if k == 0 {
                        base.clone()
                    } else {
                        format!("{base}.{k}")
                    }))
                })
                .collect();
            let mut node = Node::new(
                pn.op_type.clone(),
                fresh_node_name(g, &format!("{hint}/{}", pn.op_type)),
            );
            node.domain = pn.domain.clone();
            node.attributes = pn.attributes.clone();
            // Trailing optional inputs that are absent are left out, not written as "".
            while inputs.last().is_some_and(Option::is_none) {
                inputs.pop();
            }
            let (_, o) = match g.add_node(node, inputs, names) {
                Ok(x) => x,
                Err(_) => return None,
            };
            created.extend(o.iter().flatten().copied());
            outs.push(o);
        }
        for (target, v) in &patch.emits {
            let target_name = self.model.graph.value(*target).name.clone();
            let Some(new) = self.resolve(v, &outs, &mut created, &target_name) else {
                continue;
            };
            if new == *target {
                continue;
            }
            let fresh = created.contains(&new);
            let g = &mut self.model.graph;
            let is_output = g.outputs.contains(target);
            if created.contains(&new) {
                // The new definition takes the old name: names (and graph outputs) stay stable.
                let declared = g.value(*target).declared.clone();
                let tomb = g.fresh_name(&format!("{target_name}.replaced"));
                let _ = g.rename_value(*target, tomb);
                let _ = g.rename_value(new, target_name.clone());
                if is_output {
                    g.value_mut(new).declared = declared;
                }
                g.replace_uses(*target, new);
                details.push(format!("'{}' ← {}", target_name, self.describe(new, fresh)));
            } else if is_output {
                // An existing value replaces a graph output: keep the output's name.
                let tomb = g.fresh_name(&format!("{target_name}.replaced"));
                let declared = g.value(*target).declared.clone();
                let _ = g.rename_value(*target, tomb);
                let node = Node::new("Identity", fresh_node_name(g, &format!("{hint}/Identity")));
                if let Ok((_, o)) =
                    g.add_node(node, vec![Some(new)], vec![Some(target_name.clone())])
                {
                    if let Some(id) = o[0] {
                        g.value_mut(id).declared = declared;
                        g.replace_uses(*target, id);
                    }
                }
                details.push(format!(
                    "'{}' ← Identity({})",
                    target_name,
                    self.describe(new, fresh)
                ));
            } else {
                g.replace_uses(*target, new);
                details.push(format!("'{}' ← {}", target_name, self.describe(new, fresh)));
            }
        }
        if details.is_empty() {
            None
        } else {
            Some(details.join("; "))
        }
    }

    fn describe(&self, v: ValueId, fresh: bool) -> String {
        let g = &self.model.graph;
        match &g.value(v).def {
            ValueDef::Node(n, _) => {
                let node = g.node(*n);
                let args: Vec<String> = node
                    .inputs()
                    .iter()
                    .map(|i| i.map_or("_".into(), |i| format!("'{}'", g.value(i).name)))
                    .collect();
                format!("{}({})", node.op_type, args.join(", "))
            }
            ValueDef::Initializer(t) if fresh => format!("new constant {}{:?}", t.dtype, t.dims),
            ValueDef::Initializer(t) => {
                format!("constant '{}' {}{:?}", g.value(v).name, t.dtype, t.dims)
            }
            _ => format!("'{}'", g.value(v).name),
        }
    }

    /// The graph value for an evaluated operand, storing new constants (once per content).
    fn resolve(
        &mut self,
        v: &Val,
        outs: &[Vec<Option<ValueId>>],
        created: &mut HashSet<ValueId>,
        hint: &str,
    ) -> Option<ValueId> {
        match v {
            Val::Value(id) => Some(*id),
            Val::Planned(i, p) => outs.get(*i).and_then(|o| o.get(*p).copied().flatten()),
            Val::Tensor(t) => {
                let id = self.materialise(t, hint);
                if let Some(id) = id {
                    if self.model.graph.value(id).uses().is_empty() {
                        created.insert(id);
                    }
                }
                id
            }
            _ => None,
        }
    }

    /// The token tables of the last survey that may take the quantized form (every request
    /// for them came from `pq`), by name.
    pub fn quantizable_tables(&self) -> Vec<String> {
        let Some((_, reqs)) = &self.surveyed else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for r in reqs {
            if r.pq
                && reqs.iter().filter(|x| x.key == r.key).all(|x| x.pq)
                && !out.contains(&r.name)
            {
                out.push(r.name.clone());
            }
        }
        out
    }

    /// Every matrix the last [`Engine::plan_pipeline`] gave a rank, with its factors (also the
    /// sites whose stored form a later rule changed, and tables whitened by token counts): what
    /// [`crate::eval::sensitivity`] probes.
    pub fn factorizations(&self) -> Vec<Factorization> {
        let mut out = Vec::new();
        for (r, rank, tap) in &self.factored {
            let key = super::eval::lowrank_key(&r.key, *rank, tap.as_deref());
            let Some(Val::Tuple(items)) = self.memo.get(&key) else {
                continue;
            };
            let [Val::Tensor(a), Val::Tensor(b)] = items.as_slice() else {
                continue;
            };
            out.push(Factorization {
                name: r.name.clone(),
                matrix: r.matrix.clone(),
                rank: *rank,
                factors: (a.clone(), b.clone()),
            });
        }
        out
    }

    /// The factorizations whitened by a full Gram that the last [`Engine::run_pipeline`]
    /// stored, in plan order. A factorization whose constants a later rule transformed (so
    /// that they are not stored as the kernel made them) is left out.
    pub fn whitened_factorizations(&self) -> Vec<WhitenedFactorization> {
        let g = &self.model.graph;
        let live = |t: &Arc<Tensor>| -> Option<ValueId> {
            let (_, v) = self.stored.get(&(Arc::as_ptr(t) as usize))?;
            g.constant(*v)
                .filter(|x| x.dims == t.dims && x.data == t.data)
                .map(|_| *v)
        };
        let tensors = |v: &Val| -> Option<Vec<Arc<Tensor>>> {
            match v {
                Val::Tuple(items) => items
                    .iter()
                    .map(|i| match i {
                        Val::Tensor(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        let mut out = Vec::new();
        for (r, rank) in &self.whitened {
            let Some(tap) = r.tap.clone() else { continue };
            let key = super::eval::lowrank_key(&r.key, *rank, Some(&tap));
            let Some(ab) = self.memo.get(&key).and_then(tensors) else {
                continue;
            };
            let [a, b] = ab.as_slice() else { continue };
            let compact = self.memo.get(&format!("compact:{key}")).and_then(tensors);
            let (form, is_compact) = match compact {
                Some(c) if c.iter().all(|t| live(t).is_some()) => (c, true),
                _ => (ab.clone(), false),
            };
            let Some(stored) = form.iter().map(live).collect::<Option<Vec<_>>>() else {
                continue;
            };
            out.push(WhitenedFactorization {
                name: r.name.clone(),
                matrix: r.matrix.clone(),
                tap,
                rank: *rank,
                factors: (a.clone(), b.clone()),
                compact: is_compact,
                stored,
            });
        }
        out
    }

    /// Store a kernel result as a constant, reusing an identical stored one.
    fn materialise(&mut self, t: &Arc<Tensor>, hint: &str) -> Option<ValueId> {
        let key = Arc::as_ptr(t) as usize;
        let g = &mut self.model.graph;
        if let Some((_, v)) = self.stored.get(&key) {
            if matches!(g.value(*v).def, ValueDef::Initializer(_)) {
                return Some(*v);
            }
        }
        for &v in g.initializers() {
            if let ValueDef::Initializer(x) = &g.value(v).def {
                if x.dtype == t.dtype
                    && x.dims == t.dims
                    && !g.inputs.contains(&v)
                    && x.data == t.data
                {
                    self.stored.insert(key, (t.clone(), v));
                    return Some(v);
                }
            }
        }
        // A kernel's description of its result (e.g. `W[:, 0:32]`) as a plain stored name.
        let name = if t.name.is_empty() {
            g.fresh_name(hint)
        } else {
            g.fresh_name(&super::eval::stored_base(&t.name))
        };
        let mut stored = (**t).clone();
        stored.name.clear();
        let v = g.add_initializer(name, stored).ok()?;
        self.stored.insert(key, (t.clone(), v));
        Some(v)
    }
}

fn fresh_node_name(g: &Graph, base: &str) -> String {
    let taken: HashSet<&str> = g
        .node_ids()
        .into_iter()
        .map(|n| g.node(n).name.as_str())
        .collect();
    if !taken.contains(base) {
        return base.to_string();
    }
    (1..)
        .map(|i| format!("{base}_{i}"))
        .find(|n| !taken.contains(n.as_str()))
        .unwrap_or_default()
}

/// Human-readable `--explain` text for a pipeline run.
pub fn render_explain(r: &RewriteReport, max_misses: usize) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "pipeline {}", r.pipeline);
    for s in &r.stages {
        let round = s.round.map(|k| format!(" (round {k})")).unwrap_or_default();
        let _ = writeln!(
            o,
            "\nrule {}{round}: fired {} time{}, {} near miss{}; nodes {} → {}, stored bytes {} → {}",
            s.rule,
            s.fired.len(),
            if s.fired.len() == 1 { "" } else { "s" },
            s.near_misses.len(),
            if s.near_misses.len() == 1 { "" } else { "es" },
            s.nodes_before,
            s.nodes_after,
            s.bytes_before,
            s.bytes_after
        );
        for f in &s.fired {
            let _ = writeln!(o, "  fired  {} [{}]: {}", f.at, f.op, f.detail);
        }
        for m in s.near_misses.iter().take(max_misses) {
            let _ = writeln!(o, "  miss   {} [{}]: {}", m.at, m.op, m.detail);
        }
        if s.near_misses.len() > max_misses {
            let _ = writeln!(
                o,
                "  ... and {} more near misses",
                s.near_misses.len() - max_misses
            );
        }
        if s.fired.is_empty() && s.near_misses.is_empty() {
            let _ = writeln!(o, "  (no candidate site in this model)");
        }
    }
    o
}

impl RuleSource for crate::dsl::Program {
    fn rule(&self, name: &str) -> Option<&Rule> {
        crate::dsl::Program::rule(self, name)
    }
    fn text(&self, e: &Expr) -> String {
        self.sources.text(e.span).to_string()
    }
}

/// Plan sites factorized together: `((k, n, rank), members)`, members indexing the plan's
/// unique requests.
type SiteGroup = ((usize, usize, usize), Vec<usize>);

impl Engine<'_> {
    /// Factorizes same-shape groups of plan sites (`((k, n, rank), members)`, members
    /// indexing `unique`) in one [`crate::compute::Backend::lowrank_many`] call, and memoises
    /// the factors.
    fn factorize_window(
        &mut self,
        groups: &[SiteGroup],
        unique: &[super::eval::Request],
    ) -> Result<(), RewriteError> {
        use rayon::prelude::*;
        let tg = std::time::Instant::now();
        let arg = |detail: String| RewriteError::Argument {
            rule: "lowrank".into(),
            detail,
        };
        // In parallel: an unaligned tensor is copied, and the first touch of mapped weights
        // faults their pages in.
        let datas: Vec<Vec<_>> = groups
            .iter()
            .map(|(_, members)| {
                members
                    .par_iter()
                    .map(|&i| unique[i].matrix.as_f32())
                    .collect()
            })
            .collect();
        let tcopy = tg.elapsed().as_secs_f64();
        let mut views: Vec<Vec<crate::compute::MatrixRef<'_>>> = Vec::with_capacity(groups.len());
        for (((k, n, _), _), ds) in groups.iter().zip(&datas) {
            let mut v = Vec::with_capacity(ds.len());
            for d in ds {
                let d = d.as_ref().ok_or_else(|| arg("not f32".into()))?;
                v.push(crate::compute::MatrixRef::new(*k, *n, d).map_err(|e| arg(e.to_string()))?);
            }
            views.push(v);
        }
        let jobs: Vec<(&[crate::compute::MatrixRef<'_>], usize)> = groups
            .iter()
            .zip(&views)
            .map(|(((_, _, rank), _), v)| (&v[..], *rank))
            .collect();
        let factors = self
            .memo
            .backend
            .lowrank_many(&jobs, &self.memo.svd)
            .map_err(|e| arg(e.to_string()))?;
        let tf = tg.elapsed().as_secs_f64();
        for ((((k, n, rank), members), fs), vs) in groups.iter().zip(&factors).zip(&views) {
            let built: Vec<_> = members
                .par_iter()
                .zip(fs.par_iter())
                .zip(vs.par_iter())
                .map(|((&i, f), w)| {
                    let r = &unique[i];
                    super::eval::factor_tensors(f, &r.matrix, w.data(), &r.name)
                })
                .collect();
            for (&i, (v, note)) in members.iter().zip(built) {
                self.memo
                    .insert_lowrank(&unique[i].key, *rank, None, v, note);
            }
            self.advance(members.len());
            tracing::debug!("plan: {} × {k}×{n} at rank {rank}", members.len());
        }
        tracing::debug!(
            "plan: {} group(s): {tcopy:.3} s reading, {tf:.3} s factorizing, {:.3} s in all",
            groups.len(),
            tg.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The quantized forms of the token table `r` at every width tried (see
    /// [`crate::compute::pq::equivalent_points`]), computed once per table and weighting for
    /// every engine sharing the cache ([`Engine::set_pq_cache`]); `None` where not every
    /// reader asked for `pq`.
    fn pq_points(
        &self,
        r: &super::eval::Request,
        t: &TableForms<'_>,
    ) -> Result<Option<super::eval::PqPoints>, RewriteError> {
        if !r.pq {
            return Ok(None);
        }
        let (v, d) = t.dims;
        let weighting = match (t.counted, &self.memo.whiten) {
            (true, Some(wo)) => format!("counts λ={}", wo.token_damp),
            _ => "uniform".into(),
        };
        let key = format!("{}|{}|{v}x{d}|{weighting}", r.key, r.name);
        self.memo
            .pq_cache
            .get_or_try(&key, || {
                let t0 = std::time::Instant::now();
                let p = crate::compute::pq::equivalent_points(&t.data, (v, d), &t.weights, PQ_SEED)
                    .map_err(|e| e.to_string())?;
                tracing::debug!(
                    "plan: {} quantized at {} widths in {:.2} s",
                    r.name,
                    p.len(),
                    t0.elapsed().as_secs_f64()
                );
                Ok(p)
            })
            .map(Some)
            .map_err(|detail| RewriteError::Argument {
                rule: "pq".into(),
                detail: format!("{}: {detail}", r.name),
            })
    }

    /// Share quantized token tables with other engines of the same compile (auto's
    /// candidates): k-means runs once per table.
    pub fn set_pq_cache(&mut self, cache: std::sync::Arc<super::eval::PqCache>) {
        self.memo.pq_cache = cache;
    }
}

/// Seed of the k-means seeding of quantized token tables.
const PQ_SEED: u64 = 0x7071_7461_626c;

/// A token table that may take the hot or quantized form, with its row weights: token counts
/// (`counted`, see [`hot_table`]) or, for the quantized form without counts, every row alike.
struct TableForms<'r> {
    dims: (usize, usize),
    data: std::borrow::Cow<'r, [f32]>,
    weights: Vec<f64>,
    counted: bool,
}

/// [`TableForms`] of `r`: the counted form where [`hot_table`] gives one, else uniform weights
/// where every reader asked for `pq`; `None` where neither applies.
fn table_forms<'r>(
    r: &'r super::eval::Request,
    stats: Option<super::eval::SiteStats<'_>>,
    whiten: Option<&super::eval::WhitenOptions>,
) -> Option<Result<TableForms<'r>, RewriteError>> {
    if let Some(t) = whiten.and_then(|wo| hot_table(r, stats, wo)) {
        return Some(t.map(|(dims, data, weights)| TableForms {
            dims,
            data,
            weights,
            counted: true,
        }));
    }
    if !r.pq {
        return None;
    }
    let (v, d) = (r.matrix.dims[0] as usize, r.matrix.dims[1] as usize);
    Some(
        r.matrix
            .as_f32()
            .ok_or_else(|| hot_err(r, "not f32".into()))
            .map(|data| TableForms {
                dims: (v, d),
                data,
                weights: vec![1.0; v],
                counted: false,
            }),
    )
}

/// An error of the hot form of the table `r`.
fn hot_err(r: &super::eval::Request, detail: String) -> RewriteError {
    RewriteError::Argument {
        rule: "lowrank_hot".into(),
        detail: format!("{}: {detail}", r.name),
    }
}

/// A token table that may take the hot form: every request for it came from `lowrank_hot`
/// (`r.hot`) and its statistics are token counts. Its `(V, D)`, data and row weights; `None`
/// where it may not.
#[allow(clippy::type_complexity)]
fn hot_table<'r>(
    r: &'r super::eval::Request,
    stats: Option<super::eval::SiteStats<'_>>,
    whiten: &super::eval::WhitenOptions,
) -> Option<Result<((usize, usize), std::borrow::Cow<'r, [f32]>, Vec<f64>), RewriteError>> {
    let (true, Some(super::eval::SiteStats::Counts(c))) = (r.hot, stats) else {
        return None;
    };
    let (v, d) = (r.matrix.dims[0] as usize, r.matrix.dims[1] as usize);
    Some((|| {
        let data = r
            .matrix
            .as_f32()
            .ok_or_else(|| hot_err(r, "not f32".into()))?;
        let weights = whiten.row_weights(c, v).map_err(|e| hot_err(r, e))?;
        Ok(((v, d), data, weights))
    })())
}
