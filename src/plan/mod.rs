//! The budget planner: a size target → a rank for every low-rank site of a pipeline.
//!
//! Sites are matrices `K × N` that a pipeline would factorize (one per distinct constant: a
//! tied table is one site however many places read it). A site at rank `r` stores `r·(K + N)`
//! parameters instead of `K·N`; a site stays dense where factorizing would not save. Ranks are
//! multiples of [`ALIGN`] (at least `ALIGN`).

use serde::Serialize;

/// Ranks are multiples of this.
pub const ALIGN: usize = 8;

/// How ranks are compared between sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The same kept-parameter fraction at every site.
    Uniform,
    /// Keep the singular triplets with the most relative energy (σ² / ‖W‖²) per parameter,
    /// each matrix's spectrum normalised by its own norm.
    Global,
    /// The same fraction of each site's full rank `min(K, N)` everywhere.
    UniformRank,
    /// Each block (the sites whose names share their first number, e.g. `layers.12`) gets the
    /// budget `uniform` would give it; within a block, blocks of singular triplets are kept by
    /// energy per parameter, each site's energies divided by the square root of its total (half
    /// way between absolute energies, which favour the sites with the largest activations, and
    /// relative ones, which favour small matrices). Meant for whitened spectra (output errors);
    /// see docs/QUALITY.md for the measurements behind it.
    Block,
    /// Keep the singular triplets whose *measured* cost to the model's output is largest per
    /// parameter: each site's whitened energies (its output errors) times its exchange rate
    /// [`PlanSite::weight`], measured on calibration data by
    /// [`crate::eval::sensitivity::measure`]. Sites without a weight keep the rank `uniform`
    /// gives them.
    Sensitivity,
}

impl Strategy {
    /// The name `--strategy` takes (and the report writes).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Uniform => "uniform",
            Strategy::Global => "global",
            Strategy::UniformRank => "uniform-rank",
            Strategy::Block => "block",
            Strategy::Sensitivity => "sensitivity",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Strategy::Uniform),
            "global" => Ok(Strategy::Global),
            "uniform-rank" => Ok(Strategy::UniformRank),
            "block" => Ok(Strategy::Block),
            "sensitivity" => Ok(Strategy::Sensitivity),
            other => Err(format!(
                "unknown strategy '{other}' (uniform, uniform-rank, global, block, sensitivity)"
            )),
        }
    }
}

/// One matrix to plan.
#[derive(Clone, Debug)]
pub struct PlanSite {
    pub k: usize,
    pub n: usize,
    /// Singular values, descending (needed by [`Strategy::Global`]).
    pub spectrum: Option<Vec<f32>>,
    /// Whether the site may be left dense when the budget has room (false for a site whose
    /// rule factorizes several matrices together and fires only if all have a rank).
    pub can_stay_dense: bool,
    /// Stored in the compact form (`lowrank_compact`): `r·(K + N − r) + N` parameters.
    pub compact: bool,
    /// The block the site belongs to (for [`Strategy::Block`]).
    pub group: Option<u32>,
    /// What a unit of the spectrum's energy (`σ²`) costs the model's output (for
    /// [`Strategy::Sensitivity`]).
    pub weight: Option<f64>,
}

impl PlanSite {
    /// A `k × n` site for its sizes alone (no spectrum, group or weight; may stay dense).
    pub fn sized(k: usize, n: usize, compact: bool) -> PlanSite {
        PlanSite {
            k,
            n,
            spectrum: None,
            can_stay_dense: true,
            compact,
            group: None,
            weight: None,
        }
    }

    /// Parameters stored dense.
    pub fn dense(&self) -> u64 {
        (self.k * self.n) as u64
    }
    /// Parameters stored at rank `r`.
    pub fn at(&self, r: usize) -> u64 {
        if self.compact {
            (r * (self.k + self.n - r.min(self.k + self.n)) + self.n) as u64
        } else {
            (r * (self.k + self.n)) as u64
        }
    }
    /// Parameters one more step of [`ALIGN`] costs at rank `r`.
    pub fn step(&self, r: usize) -> u64 {
        self.at(r + ALIGN).saturating_sub(self.at(r))
    }
    /// The largest aligned rank that still saves parameters (0 if none does).
    pub fn max_rank(&self) -> usize {
        let short = self.k.min(self.n);
        let mut r = short - short % ALIGN;
        while r > 0 && self.at(r) >= self.dense() {
            r -= ALIGN;
        }
        r
    }
    /// The smallest rank whose cost reaches `params` (real-valued, for the uniform planner).
    fn rank_for(&self, params: f64) -> f64 {
        let (k, n) = (self.k as f64, self.n as f64);
        if self.compact {
            // r² − (K + N)·r + (params − N) = 0, the smaller root.
            let c = params - n;
            let d = (k + n) * (k + n) - 4.0 * c;
            if d <= 0.0 {
                (k + n) / 2.0
            } else {
                ((k + n) - d.sqrt()) / 2.0
            }
        } else {
            params / (k + n)
        }
    }
    fn cost(&self, r: Option<usize>) -> u64 {
        r.map_or(self.dense(), |r| self.at(r))
    }
}

/// A plan: per site, `Some(rank)` or `None` (stay dense).
pub type Ranks = Vec<Option<usize>>;

/// The budget cannot be met.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the budget of {target} parameters cannot be met: at the smallest ranks the model keeps {best} parameters (ratio {best_ratio:.2} of {original}); ask for ratio ≤ {best_ratio:.2}, or add rules that reach more weights")]
pub struct Unreachable {
    pub target: u64,
    pub best: u64,
    pub original: u64,
    pub best_ratio: f64,
}

/// Parameters a plan stores: `fixed` (everything not planned) plus every site's cost.
pub fn total(sites: &[PlanSite], ranks: &Ranks, fixed: u64) -> u64 {
    fixed
        + sites
            .iter()
            .zip(ranks)
            .map(|(s, r)| s.cost(*r))
            .sum::<u64>()
}

/// Plan ranks so that `fixed + Σ site cost ≤ target`, as close to it as the alignment allows.
/// `original` is the model's parameter count (for the error message).
pub fn plan(
    sites: &[PlanSite],
    fixed: u64,
    target: u64,
    original: u64,
    strategy: Strategy,
) -> Result<Ranks, Unreachable> {
    let smallest: Ranks = sites
        .iter()
        .map(|s| {
            if s.max_rank() >= ALIGN {
                Some(ALIGN)
            } else {
                None
            }
        })
        .collect();
    let best = total(sites, &smallest, fixed);
    if best > target {
        return Err(Unreachable {
            target,
            best,
            original,
            best_ratio: original as f64 / best as f64,
        });
    }
    let dense: Ranks = vec![None; sites.len()];
    if total(sites, &dense, fixed) <= target {
        return Ok(dense);
    }
    Ok(match strategy {
        Strategy::Uniform => uniform(sites, fixed, target, false),
        Strategy::UniformRank => uniform(sites, fixed, target, true),
        Strategy::Block => block(sites, fixed, target),
        Strategy::Global => global(sites, fixed, target),
        Strategy::Sensitivity => sensitivity(sites, fixed, target),
    })
}

/// Ranks keeping fraction `f` of each site's parameters (of its full rank with `by_rank`;
/// dense where that would not save).
fn uniform_at(sites: &[PlanSite], f: f64, by_rank: bool) -> Ranks {
    sites
        .iter()
        .map(|s| {
            let max = s.max_rank();
            if max < ALIGN {
                return None;
            }
            let want = if by_rank {
                f * s.k.min(s.n) as f64
            } else {
                s.rank_for(f * s.dense() as f64)
            };
            let r = ((want / ALIGN as f64).round() as usize * ALIGN).clamp(ALIGN, max.max(ALIGN));
            if f >= 1.0 {
                None
            } else {
                Some(r)
            }
        })
        .collect()
}

fn uniform(sites: &[PlanSite], fixed: u64, target: u64, by_rank: bool) -> Ranks {
    // total(f) is non-decreasing in f: bisect for the largest f that fits.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if total(sites, &uniform_at(sites, mid, by_rank), fixed) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut ranks = uniform_at(sites, lo, by_rank);
    // Rounding to multiples of ALIGN leaves budget unused: hand it out a step at a time to
    // the sites that keep the smallest fraction, while it fits.
    let mut used = total(sites, &ranks, fixed);
    loop {
        let next = sites
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let r = ranks[i]?;
                let step = s.step(r);
                let kept = if by_rank {
                    r as f64 / s.k.min(s.n) as f64
                } else {
                    s.at(r) as f64 / s.dense() as f64
                };
                (r + ALIGN <= s.max_rank() && used + step <= target).then_some((kept, i, step))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        match next {
            Some((_, i, step)) => {
                ranks[i] = ranks[i].map(|r| r + ALIGN);
                used += step;
            }
            None => break,
        }
    }
    ranks
}

fn global(sites: &[PlanSite], fixed: u64, target: u64) -> Ranks {
    // Score of the next block of ALIGN triplets at a site: its share of the site's energy per
    // parameter it costs.
    let scale: Vec<f64> = sites
        .iter()
        .map(|s| {
            let sp = s.spectrum.as_deref().unwrap_or(&[]);
            let tot: f64 = sp.iter().map(|&x| (x as f64) * (x as f64)).sum();
            1.0 / tot.max(f64::MIN_POSITIVE)
        })
        .collect();
    greedy(sites, fixed, target, &scale)
}

/// [`Strategy::Sensitivity`]: sites with a weight share what the others leave of the budget
/// (those keep their `uniform` rank) by weighted energy per parameter.
fn sensitivity(sites: &[PlanSite], fixed: u64, target: u64) -> Ranks {
    let base = uniform(sites, fixed, target, false);
    let weighted =
        |i: usize| base[i].is_some() && sites[i].spectrum.is_some() && sites[i].weight.is_some();
    let fixed_more: u64 = (0..sites.len())
        .filter(|&i| !weighted(i))
        .map(|i| sites[i].cost(base[i]))
        .sum();
    let active: Vec<usize> = (0..sites.len()).filter(|&i| weighted(i)).collect();
    if active.is_empty() {
        return base;
    }
    let sub: Vec<PlanSite> = active.iter().map(|&i| sites[i].clone()).collect();
    let scale: Vec<f64> = sub
        .iter()
        .map(|s| s.weight.unwrap_or(0.0).max(0.0))
        .collect();
    let got = greedy(&sub, fixed + fixed_more, target, &scale);
    let mut out = base;
    for (&i, r) in active.iter().zip(got) {
        out[i] = r;
    }
    out
}

/// From the smallest ranks up, keeps the blocks of [`ALIGN`] singular triplets with the most
/// `scale[i] · Σσ²` per parameter they cost while the budget allows; then sites at their
/// largest saving rank go dense where the budget has room.
fn greedy(sites: &[PlanSite], fixed: u64, target: u64, scale: &[f64]) -> Ranks {
    let energy: Vec<Vec<f64>> = sites
        .iter()
        .map(|s| {
            let sp = s.spectrum.as_deref().unwrap_or(&[]);
            sp.iter().map(|&x| (x as f64) * (x as f64)).collect()
        })
        .collect();
    let block = |i: usize, r: usize| -> f64 {
        let gain: f64 = energy[i].iter().skip(r).take(ALIGN).sum();
        gain * scale[i] / sites[i].step(r).max(1) as f64
    };
    let mut ranks: Vec<usize> = sites
        .iter()
        .map(|s| if s.max_rank() >= ALIGN { ALIGN } else { 0 })
        .collect();
    let current = |ranks: &[usize]| -> Ranks {
        ranks
            .iter()
            .map(|&r| if r == 0 { None } else { Some(r) })
            .collect()
    };
    let mut used = total(sites, &current(&ranks), fixed);
    let mut heap: std::collections::BinaryHeap<(Score, std::cmp::Reverse<usize>)> =
        std::collections::BinaryHeap::new();
    let key = |x: f64| Score(if x.is_finite() { x.max(0.0) } else { 0.0 });
    for (i, &r) in ranks.iter().enumerate() {
        if r > 0 && r + ALIGN <= sites[i].max_rank() {
            heap.push((key(block(i, r)), std::cmp::Reverse(i)));
        }
    }
    while let Some((_, std::cmp::Reverse(i))) = heap.pop() {
        let step = sites[i].step(ranks[i]);
        if used + step > target {
            continue;
        }
        ranks[i] += ALIGN;
        used += step;
        if ranks[i] + ALIGN <= sites[i].max_rank() {
            heap.push((key(block(i, ranks[i])), std::cmp::Reverse(i)));
        }
    }
    // Sites at their largest saving rank go dense when the budget has room for it (not sites
    // coupled with others in one rule: going dense would take the partner with it).
    let mut out = current(&ranks);
    for i in 0..sites.len() {
        if let Some(r) = out[i] {
            if sites[i].can_stay_dense && r == sites[i].max_rank() {
                let extra = sites[i].dense() - sites[i].at(r);
                if used + extra <= target {
                    out[i] = None;
                    used += extra;
                }
            }
        }
    }
    out
}

/// A non-negative finite score, totally ordered (for the greedy heaps).
#[derive(Clone, Copy)]
struct Score(f64);
impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// [`Strategy::Block`]: uniform budgets per block, absolute energy within.
fn block(sites: &[PlanSite], fixed: u64, target: u64) -> Ranks {
    let base = uniform(sites, fixed, target, false);
    let mut groups: std::collections::BTreeMap<Option<u32>, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (i, s) in sites.iter().enumerate() {
        groups.entry(s.group).or_default().push(i);
    }
    let mut out = base.clone();
    for members in groups.values() {
        // Only sites the uniform plan factorizes take part; the group's budget is their cost.
        let active: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| base[i].is_some() && sites[i].spectrum.is_some())
            .collect();
        if active.len() < 2 {
            continue;
        }
        let budget: u64 = active.iter().map(|&i| sites[i].cost(base[i])).sum();
        let energy = |i: usize, r: usize| -> f64 {
            let sp = sites[i].spectrum.as_deref().unwrap_or(&[]);
            let tot: f64 = sp.iter().map(|&x| (x as f64) * (x as f64)).sum();
            sp.iter()
                .skip(r)
                .take(ALIGN)
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                / tot.max(f64::MIN_POSITIVE).sqrt()
        };
        let mut ranks: Vec<usize> = active.iter().map(|_| ALIGN).collect();
        let mut used: u64 = active.iter().map(|&i| sites[i].at(ALIGN)).sum();
        let mut heap: std::collections::BinaryHeap<(u64, std::cmp::Reverse<usize>)> =
            std::collections::BinaryHeap::new();
        let score = |i: usize, r: usize| -> u64 {
            let gain = energy(i, r) / sites[i].step(r).max(1) as f64;
            (gain.max(0.0).sqrt() * 1e9) as u64
        };
        for (j, &i) in active.iter().enumerate() {
            if ranks[j] + ALIGN <= sites[i].max_rank() {
                heap.push((score(i, ranks[j]), std::cmp::Reverse(j)));
            }
        }
        while let Some((_, std::cmp::Reverse(j))) = heap.pop() {
            let i = active[j];
            let step = sites[i].step(ranks[j]);
            if used + step > budget {
                continue;
            }
            ranks[j] += ALIGN;
            used += step;
            if ranks[j] + ALIGN <= sites[i].max_rank() {
                heap.push((score(i, ranks[j]), std::cmp::Reverse(j)));
            }
        }
        for (j, &i) in active.iter().enumerate() {
            out[i] = Some(ranks[j]);
        }
    }
    out
}

/// The block of a weight by its name: the first dotted component that is a number
/// (`model.layers.12.mlp.up_proj.weight` → 12).
pub fn group_of(name: &str) -> Option<u32> {
    name.split(['.', '/', '_'])
        .find_map(|part| part.parse::<u32>().ok())
}

/// The smallest aligned rank keeping fraction `p` of the energy (Σσ²) of `spectrum`.
pub fn energy_rank(spectrum: &[f32], p: f64) -> usize {
    let e: Vec<f64> = spectrum.iter().map(|&x| (x as f64) * (x as f64)).collect();
    let tot: f64 = e.iter().sum();
    let mut acc = 0.0;
    let mut r = e.len();
    for (i, x) in e.iter().enumerate() {
        acc += x;
        if acc >= p * tot {
            r = i + 1;
            break;
        }
    }
    (r.div_ceil(ALIGN) * ALIGN).max(ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(k: usize, n: usize, decay: f32) -> PlanSite {
        PlanSite {
            k,
            n,
            spectrum: Some((0..k.min(n)).map(|i| decay.powi(i as i32)).collect()),
            can_stay_dense: true,
            compact: false,
            group: None,
            weight: None,
        }
    }

    #[test]
    fn uniform_meets_the_budget_tightly() {
        let sites = vec![
            site(768, 768, 0.99),
            site(768, 3072, 0.99),
            site(3072, 768, 0.99),
        ];
        let orig: u64 = sites.iter().map(|s| s.dense()).sum::<u64>() + 1000;
        for ratio in [1.5, 2.0, 4.0] {
            let target = (orig as f64 / ratio) as u64;
            let r = plan(&sites, 1000, target, orig, Strategy::Uniform).unwrap();
            let t = total(&sites, &r, 1000);
            assert!(t <= target, "{t} > {target}");
            assert!(
                t as f64 >= 0.99 * target as f64,
                "{t} too far under {target}"
            );
            assert!(r.iter().flatten().all(|r| r % ALIGN == 0));
        }
    }

    #[test]
    fn global_prefers_the_concentrated_spectrum() {
        let sites = vec![site(512, 512, 0.9), site(512, 512, 0.999)];
        let orig: u64 = sites.iter().map(|s| s.dense()).sum();
        let r = plan(&sites, 0, orig / 4, orig, Strategy::Global).unwrap();
        let (a, b) = (r[0].unwrap(), r[1].unwrap());
        assert!(
            a < b,
            "fast-decaying site should need fewer ranks: {a} vs {b}"
        );
        assert!(total(&sites, &r, 0) <= orig / 4);
    }

    #[test]
    fn unreachable_budget_says_what_is_reachable() {
        let sites = vec![site(64, 64, 0.9)];
        let e = plan(&sites, 10_000, 5_000, 14_096, Strategy::Uniform).unwrap_err();
        assert_eq!(e.best, 10_000 + 8 * 128);
        assert!(e.to_string().contains("cannot be met"));
    }

    #[test]
    fn loose_budgets_keep_sites_dense() {
        let sites = vec![site(64, 64, 0.9)];
        assert_eq!(
            plan(&sites, 0, 4096, 4096, Strategy::Uniform).unwrap(),
            vec![None]
        );
        assert_eq!(energy_rank(&[1.0, 0.5, 0.1], 0.9), 8);
        let s: Vec<f32> = (0..100).map(|_| 1.0).collect();
        assert_eq!(energy_rank(&s, 0.5), 56);
    }

    #[test]
    fn compact_sites_cost_less_and_plan_higher_ranks() {
        let mut c = site(576, 1536, 0.9);
        c.compact = true;
        let p = site(576, 1536, 0.9);
        assert_eq!(c.at(320), (320 * (576 + 1536 - 320) + 1536) as u64);
        assert_eq!(c.step(320), c.at(328) - c.at(320));
        // Every rank below the short side saves in the compact form (less the index cost).
        assert_eq!(c.max_rank(), 568);
        assert_eq!(p.max_rank(), 416);
        let orig = c.dense() + 1000;
        let target = orig * 4 / 5;
        let one = |s: &PlanSite| {
            plan(
                std::slice::from_ref(s),
                1000,
                target,
                orig,
                Strategy::Uniform,
            )
            .unwrap()[0]
                .unwrap()
        };
        let (rc, rp) = (one(&c), one(&p));
        assert!(rc > rp + 64, "{rc} vs {rp}");
        assert!(1000 + c.at(rc) <= target && 1000 + c.at(rc + ALIGN) > target);
    }

    #[test]
    fn sensitivity_moves_rank_to_the_sites_the_output_feels() {
        // Three equal sites: the first costs the output 10x more per unit of energy than the
        // second; the third was not measured and keeps its uniform rank.
        let mk = |w: Option<f64>| {
            let mut s = site(256, 256, 0.99);
            s.weight = w;
            s
        };
        let sites = vec![mk(Some(10.0)), mk(Some(1.0)), mk(None)];
        let orig: u64 = sites.iter().map(PlanSite::dense).sum();
        let target = orig / 2;
        let u = plan(&sites, 0, target, orig, Strategy::Uniform).unwrap();
        let s = plan(&sites, 0, target, orig, Strategy::Sensitivity).unwrap();
        assert_eq!(s[2], u[2], "{s:?} vs {u:?}");
        let (a, b) = (s[0].unwrap(), s[1].unwrap());
        assert!(a > u[0].unwrap() && b < u[1].unwrap(), "{s:?} vs {u:?}");
        let t = total(&sites, &s, 0);
        assert!(
            t <= target && t as f64 >= 0.99 * target as f64,
            "{t} vs {target}"
        );
        // At the margin the kept blocks balance: weighted energy per parameter of the next
        // block at the first site is no larger than that of the last block kept at the second.
        let e = |i: usize, r: usize| -> f64 {
            let sp = sites[i].spectrum.as_ref().unwrap();
            sp[r..r + ALIGN]
                .iter()
                .map(|&x| (x as f64).powi(2))
                .sum::<f64>()
                * sites[i].weight.unwrap()
                / sites[i].step(r) as f64
        };
        assert!(e(0, a) <= e(1, b - ALIGN) * 1.0001, "{s:?}");
        // Without weights it is the uniform plan.
        let plain: Vec<PlanSite> = sites
            .iter()
            .cloned()
            .map(|mut x| {
                x.weight = None;
                x
            })
            .collect();
        assert_eq!(
            plan(&plain, 0, target, orig, Strategy::Sensitivity).unwrap(),
            u
        );
        assert_eq!("sensitivity".parse::<Strategy>(), Ok(Strategy::Sensitivity));
    }

    #[test]
    fn block_keeps_each_blocks_uniform_budget_and_favours_absolute_energy_within() {
        // Two blocks of two same-shape sites; in block 0 one site's spectrum is 10x larger.
        let mk = |group: u32, scale: f32| {
            let mut s = site(256, 256, 0.98);
            s.group = Some(group);
            s.spectrum = s.spectrum.map(|v| v.iter().map(|x| x * scale).collect());
            s
        };
        let sites = vec![mk(0, 10.0), mk(0, 1.0), mk(1, 1.0), mk(1, 1.0)];
        let orig: u64 = sites.iter().map(PlanSite::dense).sum();
        let target = orig * 3 / 5;
        let u = plan(&sites, 0, target, orig, Strategy::Uniform).unwrap();
        let b = plan(&sites, 0, target, orig, Strategy::Block).unwrap();
        let cost =
            |r: &Ranks, idx: &[usize]| -> u64 { idx.iter().map(|&i| sites[i].cost(r[i])).sum() };
        for g in [[0usize, 1], [2, 3]] {
            assert!(cost(&b, &g) <= cost(&u, &g), "{b:?} vs {u:?}");
        }
        assert!(b[0].unwrap() > b[1].unwrap(), "{b:?}");
        assert_eq!(b[2], b[3], "{b:?}");
        assert!(total(&sites, &b, 0) <= target);
        assert_eq!(group_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(group_of("h.3.attn.c_attn.weight_32_64"), Some(3));
        assert_eq!(group_of("embeddings.word_embeddings.weight"), None);
    }
}
