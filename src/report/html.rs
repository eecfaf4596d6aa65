//! The HTML compile report: one self-contained page (inline CSS and SVG, no scripts, no
//! external assets). It shows the summary (sizes as stored, ratio, budget and strategy),
//! fidelity when measured, the per-rule totals, charts of rank and error per site, the
//! planner's singular spectra (when it computed them), the per-site table and every stage
//! with its fired sites and near misses.
//!
//! The output is deterministic: the same report renders to the same bytes. Every text that
//! comes from the model or the rules (names, details, reasons) is escaped.

use std::fmt::Write as _;

use super::compile::{CompileReport, SiteReport};
use super::inspect::{human_bytes, human_count};
use crate::rewrite::engine::{PlannedSite, Site, StageReport};

/// Spectra are downsampled to at most this many points per matrix.
const SPECTRUM_POINTS: usize = 200;
/// Near misses listed per stage.
const MAX_NEAR_MISSES: usize = 20;
/// Fired sites listed per stage.
const MAX_FIRED: usize = 20;
/// Chart width in SVG user units.
const W: f64 = 1100.0;
/// Left, right, top and bottom margins of a chart's plot area.
const ML: f64 = 64.0;
const MR: f64 = 16.0;
const MT: f64 = 14.0;
const MB: f64 = 40.0;

/// Tableau 10.
const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

const CSS: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;\
margin:0 auto;padding:16px 24px 48px;max-width:1180px;background:#fff}\
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;\
border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:14px 0 6px}\
p.note{color:#555;margin:4px 0 8px}\
table{border-collapse:collapse;margin:6px 0 10px}\
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}\
th{background:#f4f4f6;font-weight:600;white-space:nowrap}\
tbody tr:nth-child(even){background:#fafafc}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
.m{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;\
overflow-wrap:anywhere}.nw{white-space:nowrap}\
table.kv th{text-align:left;background:none;font-weight:600;color:#444}\
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}\
.card{border:1px solid #ddd;border-radius:6px;padding:7px 12px;min-width:150px}\
.card .k{color:#666;font-size:12px;text-transform:uppercase;letter-spacing:.04em}\
.card .v{font-size:17px;font-weight:600;font-variant-numeric:tabular-nums}\
.card .s{color:#666;font-size:12px}\
svg{display:block;width:100%;max-width:1100px;height:auto;margin:4px 0 8px}\
svg text{font:11px system-ui,sans-serif;fill:#444}\
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:#444;margin:2px 0 4px}\
.legend i{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px;\
border-radius:2px}\
details{margin:6px 0;border:1px solid #e4e4e8;border-radius:6px;padding:4px 10px}\
summary{cursor:pointer;font-weight:600}summary span{font-weight:400;color:#555}\
.zero{color:#999}.shared{color:#777;font-style:italic}";

/// Render the report as one self-contained HTML page (no scripts, no external assets).
pub fn render(r: &CompileReport) -> String {
    let mut o = String::with_capacity(64 * 1024);
    o.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n");
    let _ = writeln!(
        o,
        "<title>hcc compile report: {}</title>",
        esc(&file_name(&r.model))
    );
    let _ = writeln!(o, "<style>{CSS}</style>\n</head>\n<body>");
    summary(&mut o, r);
    fidelity(&mut o, r);
    rules(&mut o, r);
    site_charts(&mut o, r);
    spectra(&mut o, r);
    plan_table(&mut o, r);
    site_table(&mut o, r);
    stages(&mut o, r);
    o.push_str("</body>\n</html>\n");
    o
}

// ---------------------------------------------------------------------------------------------
// Sections

fn summary(o: &mut String, r: &CompileReport) {
    let _ = writeln!(o, "<h1>hcc compile report</h1>");
    let _ = writeln!(o, "<table class=\"kv\">");
    kv_row(
        o,
        "model",
        &format!("<span class=\"m\">{}</span>", esc(&r.model)),
    );
    kv_row(
        o,
        "output",
        &format!("<span class=\"m\">{}</span>", esc(&r.output)),
    );
    kv_row(
        o,
        "pipeline",
        &format!("<span class=\"m\">{}</span>", esc(&r.pipeline)),
    );
    let _ = writeln!(o, "</table>");

    o.push_str("<div class=\"cards\">\n");
    card(
        o,
        "parameters (stored)",
        &format!(
            "{} → {}",
            human_count(r.params_before),
            human_count(r.params_after)
        ),
        &format!("{} → {}", group(r.params_before), group(r.params_after)),
    );
    card(
        o,
        "ratio",
        &format!("{:.3}×", r.ratio),
        "parameters before / after",
    );
    card(
        o,
        "tensor bytes (stored)",
        &format!(
            "{} → {}",
            human_bytes(r.bytes_before),
            human_bytes(r.bytes_after)
        ),
        &format!("{} → {} B", group(r.bytes_before), group(r.bytes_after)),
    );
    card(
        o,
        "file size",
        &format!(
            "{} → {}",
            human_bytes(r.file_bytes_before),
            human_bytes(r.file_bytes_after)
        ),
        "model file plus external data",
    );
    if let Some(p) = &r.plan {
        let strategy = enum_name(&p.strategy);
        match p.target_params {
            Some(t) => card(
                o,
                "budget",
                &format!("{} params", human_count(t)),
                &format!("{} parameters · {} strategy", group(t), esc(&strategy)),
            ),
            None => card(o, "strategy", &esc(&strategy), "no parameter budget"),
        }
    }
    o.push_str("</div>\n");
}

fn fidelity(o: &mut String, r: &CompileReport) {
    // Through serde so that any serializable fidelity type renders.
    let v = match serde_json::to_value(&r.fidelity) {
        Ok(v) if !v.is_null() => v,
        _ => return,
    };
    let _ = writeln!(o, "<h2>Fidelity</h2>");
    json_html(o, &v);
    o.push('\n');
}

fn rules(o: &mut String, r: &CompileReport) {
    let _ = writeln!(o, "<h2>Rules</h2>");
    if r.rules.is_empty() {
        let _ = writeln!(o, "<p class=\"note\">No rules ran.</p>");
        return;
    }
    o.push_str(
        "<table><thead><tr><th>rule</th><th class=\"n\">fired</th><th class=\"n\">near misses</th>\
<th class=\"n\">params saved</th><th class=\"n\">bytes saved</th></tr></thead><tbody>\n",
    );
    for (i, x) in r.rules.iter().enumerate() {
        let _ = writeln!(
            o,
            "<tr><td class=\"m\"><i style=\"display:inline-block;width:9px;height:9px;\
border-radius:2px;margin-right:6px;background:{}\"></i>{}</td><td {}>{}</td>\
<td class=\"n\">{}</td><td {}>{}</td><td {}>{}</td></tr>",
            PALETTE[i % PALETTE.len()],
            esc(&x.rule),
            zero_class(x.fired as i64),
            x.fired,
            x.near_misses,
            zero_class(x.params_saved),
            signed(x.params_saved),
            zero_class(x.bytes_saved),
            signed_bytes(x.bytes_saved),
        );
    }
    o.push_str("</tbody></table>\n");
}

/// Charts 1 and 2: rank and relative error per transformed site, in site order (same x axis).
fn site_charts(o: &mut String, r: &CompileReport) {
    if r.sites.is_empty() {
        return;
    }
    let colors: Vec<&str> = r.sites.iter().map(|s| rule_color(r, &s.rule)).collect();
    let legend = rule_legend(r);

    let _ = writeln!(o, "<h2>Rank per site</h2>");
    let _ = writeln!(
        o,
        "<p class=\"note\">Bars: kept rank as a fraction of full rank (min(K, N)); for pruned \
sites without a rank, the fraction of entries kept. Black ticks: kept-parameter fraction \
(stored after / dense). Faded bars are shared with an earlier site (stored once). \
Sites in the order of the table below.</p>"
    );
    o.push_str(&legend);
    let bars: Vec<Bar> = r
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (v, label) = rank_fraction(s);
            Bar {
                value: v,
                tick: kept_fraction(s),
                color: colors[i],
                faded: s.shared,
                label,
                title: site_title(i, s),
            }
        })
        .collect();
    bar_chart(o, &bars, 1.0, "rank / full rank", 240.0);

    let _ = writeln!(o, "<h2>Relative error per site</h2>");
    let _ = writeln!(
        o,
        "<p class=\"note\">‖W − Ŵ‖<sub>F</sub> / ‖W‖<sub>F</sub> of each transformed constant.</p>"
    );
    o.push_str(&legend);
    let max = r
        .sites
        .iter()
        .map(|s| s.rel_error)
        .filter(|e| e.is_finite())
        .fold(0.0f64, f64::max);
    let bars: Vec<Bar> = r
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| Bar {
            value: if s.rel_error.is_finite() {
                s.rel_error
            } else {
                0.0
            },
            tick: None,
            color: colors[i],
            faded: s.shared,
            label: None,
            title: site_title(i, s),
        })
        .collect();
    bar_chart(o, &bars, nice_ceil(max.max(1e-6)), "relative error", 200.0);
}

/// Chart 3: the planner's singular spectra, σ/σ₀ on a log axis, the chosen rank marked.
fn spectra(o: &mut String, r: &CompileReport) {
    let Some(plan) = &r.plan else { return };
    let lines: Vec<(&PlannedSite, &[f32])> = plan
        .sites
        .iter()
        .filter_map(|s| {
            let sp = s.spectrum.as_deref()?;
            (sp.len() >= 2 && sp[0].is_finite() && sp[0] > 0.0).then_some((s, sp))
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(o, "<h2>Singular spectra</h2>");
    let _ = writeln!(
        o,
        "<p class=\"note\">σ<sub>i</sub> / σ<sub>1</sub> of each planned matrix (log scale, one \
line per matrix, at most {SPECTRUM_POINTS} points each). Dots: the chosen rank (the last kept \
σ). Dashed grey lines: matrices kept dense. Lines are coloured by role (the name with layer \
numbers removed).</p>"
    );

    // Groups: the name with digit runs replaced, in order of first appearance.
    let mut groups: Vec<String> = Vec::new();
    // Dense matrices are drawn grey and take no colour.
    let group_of: Vec<usize> = lines
        .iter()
        .map(|(s, _)| {
            if s.rank.is_none() {
                return usize::MAX;
            }
            let g = role(&s.name);
            match groups.iter().position(|x| *x == g) {
                Some(i) => i,
                None => {
                    groups.push(g);
                    groups.len() - 1
                }
            }
        })
        .collect();
    if !groups.is_empty() && groups.len() <= PALETTE.len() {
        o.push_str("<div class=\"legend\">");
        for (i, g) in groups.iter().enumerate() {
            let _ = write!(
                o,
                "<span><i style=\"background:{}\"></i><span class=\"m\">{}</span></span>",
                PALETTE[i],
                esc(g)
            );
        }
        o.push_str("</div>\n");
    }

    let max_len = lines.iter().map(|(_, sp)| sp.len()).max().unwrap_or(2);
    let min_pos = lines
        .iter()
        .flat_map(|(_, sp)| {
            let s0 = sp[0];
            sp.iter()
                .map(move |&v| (v / s0) as f64)
                .filter(|&v| v.is_finite() && v > 0.0)
        })
        .fold(1.0f64, f64::min);
    let lo_exp = min_pos.max(1e-8).log10().floor().min(-1.0) as i32;
    let h = 380.0;
    let (pw, ph) = (W - ML - MR, h - MT - MB);
    let xs = |i: f64| ML + (i - 1.0) / ((max_len as f64 - 1.0).max(1.0)) * pw;
    let ys = |v: f64| {
        let l = v.max(10f64.powi(lo_exp)).log10();
        MT + (-l) / (-lo_exp as f64) * ph
    };

    let _ = writeln!(
        o,
        "<svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"singular spectra\">"
    );
    // Grid: decades.
    for e in lo_exp..=0 {
        let y = ys(10f64.powi(e));
        let _ = writeln!(
            o,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">1e{e}</text>",
            f1(ML + pw),
            f1(y),
            f1(y),
            f1(ML - 6.0),
            f1(y + 4.0)
        );
    }
    x_axis(o, max_len, |i| xs(i as f64), MT + ph, "index i");
    let _ = writeln!(
        o,
        "<text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">σᵢ / σ₁</text>",
        f1(MT + ph / 2.0)
    );
    // Dense matrices first (underneath), then the factorized ones.
    let mut markers = String::new();
    for pass in [false, true] {
        for (k, (s, sp)) in lines.iter().enumerate() {
            if s.rank.is_some() != pass {
                continue;
            }
            let s0 = sp[0] as f64;
            let color = if pass {
                PALETTE[group_of[k] % PALETTE.len()]
            } else {
                "#aaa"
            };
            let _ = write!(
                o,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.1\" stroke-opacity=\"0.7\"{} points=\"",
                if pass { "" } else { " stroke-dasharray=\"4 3\"" }
            );
            for (j, i) in downsample(sp.len(), SPECTRUM_POINTS)
                .into_iter()
                .enumerate()
            {
                if j > 0 {
                    o.push(' ');
                }
                let _ = write!(
                    o,
                    "{},{}",
                    f1(xs(i as f64 + 1.0)),
                    f1(ys(sp[i] as f64 / s0))
                );
            }
            let _ = writeln!(
                o,
                "\"><title>{}</title></polyline>",
                esc(&planned_title(s, sp.len()))
            );
            if let Some(rank) = s.rank.filter(|&r| r >= 1 && r <= sp.len()) {
                let _ = writeln!(
                    markers,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3.2\" fill=\"{color}\" stroke=\"#222\" stroke-width=\"0.8\">\
<title>{}</title></circle>",
                    f1(xs(rank as f64)),
                    f1(ys(sp[rank - 1] as f64 / s0)),
                    esc(&planned_title(s, sp.len()))
                );
            }
        }
    }
    o.push_str(&markers);
    frame(o, pw, ph);
    o.push_str("</svg>\n");
}

/// The planner's decision per matrix (including those kept dense).
fn plan_table(o: &mut String, r: &CompileReport) {
    let Some(plan) = &r.plan else { return };
    if plan.sites.is_empty() {
        return;
    }
    let factorized = plan.sites.iter().filter(|s| s.rank.is_some()).count();
    let _ = writeln!(o, "<h2>Plan</h2>");
    let _ = writeln!(
        o,
        "<p class=\"note\">{} strategy; {} matrices planned, {} factorized, {} kept dense. \
Parameters before: {}.</p>",
        esc(&enum_name(&plan.strategy)),
        plan.sites.len(),
        factorized,
        plan.sites.len() - factorized,
        group(plan.params_before)
    );
    let _ = write!(
        o,
        "<details{}><summary>Planned matrices <span>({})</span></summary>",
        if plan.sites.len() <= 40 { " open" } else { "" },
        plan.sites.len()
    );
    o.push_str(
        "<table><thead><tr><th class=\"n\">#</th><th>matrix</th><th>shape</th><th class=\"n\">rank</th>\
<th class=\"n\">full rank</th><th class=\"n\">kept params</th><th class=\"n\">σ<sub>r</sub>/σ<sub>1</sub></th>\
</tr></thead><tbody>\n",
    );
    for (i, s) in plan.sites.iter().enumerate() {
        let (k, n) = kn(&s.shape);
        let kept = match (s.rank, k * n) {
            (Some(rank), d) if d > 0 => format!("{:.3}", (rank * (k + n)) as f64 / d as f64),
            (None, _) => "1".into(),
            _ => "–".into(),
        };
        let tail = match (s.rank, s.spectrum.as_deref()) {
            (Some(rank), Some(sp)) if rank >= 1 && rank <= sp.len() && sp[0] > 0.0 => {
                sci(sp[rank - 1] as f64 / sp[0] as f64)
            }
            _ => "–".into(),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{}</td><td class=\"m\">{}</td><td class=\"m nw\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            i + 1,
            name(&s.name),
            shape(&s.shape),
            s.rank.map_or("dense".into(), |r| r.to_string()),
            k.min(n),
            kept,
            tail
        );
    }
    o.push_str("</tbody></table></details>\n");
}

fn site_table(o: &mut String, r: &CompileReport) {
    let _ = writeln!(o, "<h2>Sites</h2>");
    if r.sites.is_empty() {
        let _ = writeln!(o, "<p class=\"note\">No constant was transformed.</p>");
        return;
    }
    let _ = writeln!(
        o,
        "<p class=\"note\">{} transformed constants. “after” counts a shared (tied) result once, \
at its first site.</p>",
        r.sites.len()
    );
    o.push_str(
        "<table><thead><tr><th class=\"n\">#</th><th>rule</th><th>node</th><th>constant</th>\
<th>shape</th><th class=\"n\">rank / sparsity</th><th class=\"n\">rel. error</th>\
<th class=\"n\">params</th><th class=\"n\">after</th></tr></thead><tbody>\n",
    );
    for (i, s) in r.sites.iter().enumerate() {
        let rs = match (s.rank, s.sparsity) {
            (Some(k), _) => k.to_string(),
            (None, Some(p)) => format!("{:.1}%", p * 100.0),
            _ => "–".into(),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{}</td><td class=\"m nw\">{}</td><td class=\"m\">{}</td><td class=\"m\">{}</td>\
<td class=\"m nw\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            i + 1,
            esc(&s.rule),
            name(&s.node),
            name(&s.constant),
            shape(&s.shape),
            rs,
            sci(s.rel_error),
            group(s.params_before),
            if s.shared {
                "<span class=\"shared\">shared</span>".to_string()
            } else {
                group(s.params_after)
            }
        );
    }
    o.push_str("</tbody></table>\n");
}

/// Chart 4 and the stage list: fired and near-miss counts per stage, then each stage's sites.
fn stages(o: &mut String, r: &CompileReport) {
    let st = &r.stages.stages;
    let _ = writeln!(o, "<h2>Stages</h2>");
    if st.is_empty() {
        let _ = writeln!(o, "<p class=\"note\">The pipeline ran no stage.</p>");
        return;
    }
    let _ = writeln!(
        o,
        "<p class=\"note\">Pipeline <span class=\"m\">{}</span>: {} stages in order. Near misses are \
places where a rule's pattern matched but a condition did not hold.</p>",
        esc(&r.stages.pipeline),
        st.len()
    );
    o.push_str(
        "<div class=\"legend\"><span><i style=\"background:#59a14f\"></i>fired</span>\
<span><i style=\"background:#c9c9cf\"></i>near misses</span></div>\n",
    );
    stage_chart(o, st);
    for (i, s) in st.iter().enumerate() {
        let _ = writeln!(
            o,
            "<details{}><summary>{}. <span class=\"m\">{}</span>{} <span>— fired {}, near misses {}, \
nodes {} → {}, params {} → {}{}</span></summary>",
            if s.fired.is_empty() && s.near_misses.is_empty() {
                ""
            } else {
                " open"
            },
            i + 1,
            esc(&s.rule),
            s.round.map_or(String::new(), |k| format!(" (round {k})")),
            s.fired.len(),
            s.near_misses.len(),
            s.nodes_before,
            s.nodes_after,
            human_count(s.params_before),
            human_count(s.params_after),
            if s.memo_hits > 0 {
                format!(", memo hits {}", s.memo_hits)
            } else {
                String::new()
            }
        );
        site_list(o, "Fired", &s.fired, MAX_FIRED);
        site_list(o, "Near misses", &s.near_misses, MAX_NEAR_MISSES);
        o.push_str("</details>\n");
    }
}

fn site_list(o: &mut String, what: &str, sites: &[Site], max: usize) {
    if sites.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "<h3>{what} ({})</h3><table><thead><tr><th>at</th><th>op</th><th>{}</th></tr></thead><tbody>",
        sites.len(),
        if what == "Fired" { "result" } else { "reason" }
    );
    for s in sites.iter().take(max) {
        let _ = writeln!(
            o,
            "<tr><td class=\"m\">{}</td><td class=\"m nw\">{}</td><td class=\"m\">{}</td></tr>",
            name(&s.at),
            esc(&s.op),
            esc(&s.detail)
        );
    }
    if sites.len() > max {
        let _ = writeln!(
            o,
            "<tr><td colspan=\"3\" class=\"zero\">… {} more</td></tr>",
            sites.len() - max
        );
    }
    o.push_str("</tbody></table>\n");
}

fn stage_chart(o: &mut String, st: &[StageReport]) {
    let row = 18.0;
    let label_w = 230.0;
    let h = MT + row * st.len() as f64 + 30.0;
    let pw = W - label_w - MR - 60.0;
    let max = st
        .iter()
        .map(|s| s.fired.len().max(s.near_misses.len()))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let top = nice_ceil(max);
    let xs = |v: f64| label_w + v / top * pw;
    let _ = writeln!(
        o,
        "<svg viewBox=\"0 0 {W} {}\" role=\"img\" aria-label=\"stages\">",
        f1(h)
    );
    let y_axis = MT + row * st.len() as f64;
    for t in ticks(top) {
        let x = xs(t);
        let _ = writeln!(
            o,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{MT}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            f1(x),
            f1(x),
            f1(y_axis),
            f1(x),
            f1(y_axis + 14.0),
            num(t)
        );
    }
    for (i, s) in st.iter().enumerate() {
        let y = MT + row * i as f64;
        let name = match s.round {
            Some(k) => format!("{}. {} (round {k})", i + 1, s.rule),
            None => format!("{}. {}", i + 1, s.rule),
        };
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            f1(label_w - 8.0),
            f1(y + 12.0),
            esc(&clip(&name, 36))
        );
        let (f, m) = (s.fired.len() as f64, s.near_misses.len() as f64);
        let title = esc(&format!(
            "{name}: fired {}, near misses {}",
            s.fired.len(),
            s.near_misses.len()
        ));
        let _ = writeln!(
            o,
            "<rect x=\"{label_w}\" y=\"{}\" width=\"{}\" height=\"7\" fill=\"#59a14f\"><title>{title}</title></rect>\
<rect x=\"{label_w}\" y=\"{}\" width=\"{}\" height=\"7\" fill=\"#c9c9cf\"><title>{title}</title></rect>\
<text x=\"{}\" y=\"{}\">{} / {}</text>",
            f1(y + 2.0),
            f1(xs(f) - label_w),
            f1(y + 9.0),
            f1(xs(m) - label_w),
            f1(xs(f.max(m)) + 5.0),
            f1(y + 12.0),
            s.fired.len(),
            s.near_misses.len()
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{label_w}\" x2=\"{label_w}\" y1=\"{MT}\" y2=\"{}\" stroke=\"#888\"/>",
        f1(y_axis)
    );
    o.push_str("</svg>\n");
}

// ---------------------------------------------------------------------------------------------
// Charts

struct Bar<'a> {
    value: f64,
    /// A second value drawn as a short horizontal tick across the bar.
    tick: Option<f64>,
    color: &'a str,
    faded: bool,
    /// Drawn above the bar when there is room.
    label: Option<String>,
    title: String,
}

fn bar_chart(o: &mut String, bars: &[Bar], top: f64, y_label: &str, h: f64) {
    let n = bars.len().max(1);
    let (pw, ph) = (W - ML - MR, h - MT - MB);
    let step = pw / n as f64;
    let bw = (step * 0.8).max(0.6);
    let ys = |v: f64| MT + ph - (v / top).clamp(0.0, 1.0) * ph;
    let _ = writeln!(
        o,
        "<svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{}\">",
        esc(y_label)
    );
    for t in ticks(top) {
        let y = ys(t);
        let _ = writeln!(
            o,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            f1(ML + pw),
            f1(y),
            f1(y),
            f1(ML - 6.0),
            f1(y + 4.0),
            num(t)
        );
    }
    let _ = writeln!(
        o,
        "<text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        f1(MT + ph / 2.0),
        esc(y_label)
    );
    let xs = |i: usize| ML + step * i as f64 + (step - bw) / 2.0;
    for (i, b) in bars.iter().enumerate() {
        let y = ys(b.value);
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"{}><title>{}</title></rect>",
            f2(xs(i)),
            f1(y),
            f2(bw),
            f1(MT + ph - y),
            b.color,
            if b.faded { " fill-opacity=\"0.35\"" } else { "" },
            esc(&b.title)
        );
        if let Some(t) = b.tick {
            let ty = ys(t);
            let _ = writeln!(
                o,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#222\" stroke-width=\"1.5\"/>",
                f2(xs(i) - (0.1 * step).min(2.0)),
                f2(xs(i) + bw + (0.1 * step).min(2.0)),
                f1(ty),
                f1(ty)
            );
        }
        if let Some(l) = &b.label {
            if step >= 22.0 {
                let _ = writeln!(
                    o,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>",
                    f1(xs(i) + bw / 2.0),
                    f1(y - 3.0),
                    esc(l)
                );
            }
        }
    }
    x_axis(
        o,
        bars.len(),
        |i| ML + step * (i as f64 - 0.5),
        MT + ph,
        "site # (see the table of sites)",
    );
    frame(o, pw, ph);
    o.push_str("</svg>\n");
}

/// Tick labels 1..=n along the bottom of the plot area, at a readable spacing.
fn x_axis(o: &mut String, n: usize, x: impl Fn(usize) -> f64, y0: f64, label: &str) {
    let every = nice_step(n as f64 / 20.0).max(1.0) as usize;
    let mut i = every.max(1);
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">1</text>",
        f1(x(1)),
        f1(y0 + 14.0)
    );
    while i <= n {
        if i > 1 {
            let _ = writeln!(
                o,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{i}</text>",
                f1(x(i)),
                f1(x(i)),
                f1(y0),
                f1(y0 + 4.0),
                f1(x(i)),
                f1(y0 + 14.0)
            );
        }
        i += every;
    }
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        f1(ML + (W - ML - MR) / 2.0),
        f1(y0 + 32.0),
        esc(label)
    );
}

fn frame(o: &mut String, pw: f64, ph: f64) {
    let _ = writeln!(
        o,
        "<rect x=\"{ML}\" y=\"{MT}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        f1(pw),
        f1(ph)
    );
}

fn rule_color<'a>(r: &CompileReport, rule: &str) -> &'a str {
    let i = r.rules.iter().position(|x| x.rule == rule).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

fn rule_legend(r: &CompileReport) -> String {
    let mut o = String::from("<div class=\"legend\">");
    let mut seen: Vec<&str> = Vec::new();
    for s in &r.sites {
        if !seen.contains(&s.rule.as_str()) {
            seen.push(&s.rule);
            let _ = write!(
                o,
                "<span><i style=\"background:{}\"></i><span class=\"m\">{}</span></span>",
                rule_color(r, &s.rule),
                esc(&s.rule)
            );
        }
    }
    o.push_str("</div>\n");
    o
}

/// The value of the rank bar and the label above it.
fn rank_fraction(s: &SiteReport) -> (f64, Option<String>) {
    let (k, n) = kn(&s.shape);
    match (s.rank, s.sparsity) {
        (Some(rank), _) if k.min(n) > 0 => (
            (rank as f64 / k.min(n) as f64).min(1.0),
            Some(rank.to_string()),
        ),
        (None, Some(p)) => ((1.0 - p).clamp(0.0, 1.0), None),
        _ => (kept_fraction(s).unwrap_or(0.0).min(1.0), None),
    }
}

/// Stored parameters after / before at this site (for a shared result: what it would store).
fn kept_fraction(s: &SiteReport) -> Option<f64> {
    let (k, n) = kn(&s.shape);
    match s.rank {
        Some(rank) if k * n > 0 => Some((rank * (k + n)) as f64 / (k * n) as f64),
        _ if s.params_before > 0 && !s.shared => {
            Some(s.params_after as f64 / s.params_before as f64)
        }
        _ => None,
    }
}

fn site_title(i: usize, s: &SiteReport) -> String {
    let mut t = format!(
        "#{} {} · {} · {}\n{}",
        i + 1,
        s.rule,
        s.node,
        s.constant,
        shape(&s.shape)
    );
    if let Some(k) = s.rank {
        let _ = write!(t, " rank {k}");
    }
    if let Some(p) = s.sparsity {
        let _ = write!(t, " sparsity {:.1}%", p * 100.0);
    }
    let _ = write!(t, " · rel. error {}", sci(s.rel_error));
    if s.shared {
        t.push_str(" · shared");
    }
    t
}

fn planned_title(s: &PlannedSite, len: usize) -> String {
    format!(
        "{} {} · {} · {} singular values",
        s.name,
        shape(&s.shape),
        s.rank.map_or("dense".into(), |r| format!("rank {r}")),
        len
    )
}

// ---------------------------------------------------------------------------------------------
// Generic JSON (fidelity)

/// Objects as key/value tables, arrays of objects as tables with a column per key, other
/// arrays as lists, numbers rounded for reading.
fn json_html(o: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            o.push_str("<table class=\"kv\"><tbody>");
            for (k, v) in m {
                let _ = write!(o, "<tr><th class=\"m\">{}</th><td>", esc(k));
                json_html(o, v);
                o.push_str("</td></tr>");
            }
            o.push_str("</tbody></table>");
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_object) => {
            let mut keys: Vec<&str> = Vec::new();
            for x in a {
                if let Value::Object(m) = x {
                    for k in m.keys() {
                        if !keys.contains(&k.as_str()) {
                            keys.push(k);
                        }
                    }
                }
            }
            o.push_str("<table><thead><tr>");
            for k in &keys {
                let _ = write!(o, "<th class=\"m\">{}</th>", esc(k));
            }
            o.push_str("</tr></thead><tbody>");
            for x in a {
                o.push_str("<tr>");
                for k in &keys {
                    match x.get(*k) {
                        Some(Value::Number(_)) => o.push_str("<td class=\"n\">"),
                        _ => o.push_str("<td>"),
                    }
                    if let Some(v) = x.get(*k) {
                        json_html(o, v);
                    }
                    o.push_str("</td>");
                }
                o.push_str("</tr>");
            }
            o.push_str("</tbody></table>");
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    o.push_str(", ");
                }
                json_html(o, x);
            }
        }
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => o.push_str(&i.to_string()),
            (_, Some(u), _) => o.push_str(&u.to_string()),
            (_, _, Some(f)) => o.push_str(&sig(f)),
            _ => o.push_str(&esc(&n.to_string())),
        },
        Value::String(s) => {
            let _ = write!(o, "<span class=\"m\">{}</span>", esc(s));
        }
        Value::Bool(b) => o.push_str(if *b { "yes" } else { "no" }),
        Value::Null => o.push_str("<span class=\"zero\">–</span>"),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Escape text for HTML element content and quoted or unquoted attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A name from the model, escaped, with break opportunities after `.` and `/`.
fn name(s: &str) -> String {
    esc(s).replace('.', ".<wbr>").replace('/', "/<wbr>")
}

fn kv_row(o: &mut String, k: &str, v: &str) {
    let _ = writeln!(o, "<tr><th>{k}</th><td>{v}</td></tr>");
}

fn card(o: &mut String, k: &str, v: &str, sub: &str) {
    let _ = writeln!(
        o,
        "<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{v}</div><div class=\"s\">{sub}</div></div>"
    );
}

fn zero_class(v: i64) -> &'static str {
    if v == 0 {
        "class=\"n zero\""
    } else {
        "class=\"n\""
    }
}

/// A serializable unit enum's name (`global`).
fn enum_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn file_name(p: &str) -> String {
    std::path::Path::new(p)
        .file_name()
        .map_or_else(|| p.to_string(), |f| f.to_string_lossy().into_owned())
}

/// `[768, 768]`.
fn shape(s: &[i64]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A matrix's rows and columns: all leading dimensions × the last.
fn kn(shape: &[i64]) -> (usize, usize) {
    match shape {
        [] => (0, 0),
        [n] => (1, (*n).max(0) as usize),
        [lead @ .., n] => (
            lead.iter().map(|&d| d.max(0) as usize).product(),
            (*n).max(0) as usize,
        ),
    }
}

/// `124,439,827`.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut o = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            o.push(',');
        }
        o.push(c);
    }
    o
}

fn signed(v: i64) -> String {
    if v < 0 {
        format!("−{}", group(v.unsigned_abs()))
    } else {
        group(v as u64)
    }
}

fn signed_bytes(v: i64) -> String {
    if v < 0 {
        format!("−{}", human_bytes(v.unsigned_abs()))
    } else if v == 0 {
        "0".into()
    } else {
        human_bytes(v as u64)
    }
}

/// An error or a ratio for reading: four decimals, or scientific when small.
fn sci(v: f64) -> String {
    if !v.is_finite() {
        format!("{v}")
    } else if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

/// Six significant digits.
fn sig(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() < 1e-3 || v.abs() >= 1e7 {
        return format!("{v:.5e}");
    }
    let d = (5 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{v:.d$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An axis tick value.
fn num(v: f64) -> String {
    let s = sig(v);
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// One decimal, for coordinates.
fn f1(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

/// Two decimals, for thin bars.
fn f2(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The smallest 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10ᵏ at or above `x` (an axis top).
fn nice_ceil(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * p >= x * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// The smallest 1, 2 or 5 × 10ᵏ at or above `x` (tick spacing).
fn nice_step(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || x.is_infinite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= x * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// About five ticks from 0 to `top` (a [`nice_ceil`] value).
fn ticks(top: f64) -> Vec<f64> {
    let step = nice_step(top / 5.0);
    let k = (top / step + 1e-9).floor() as usize;
    (0..=k).map(|i| i as f64 * step).collect()
}

/// At most `max` indices of `0..len`, evenly spaced, first and last included.
fn downsample(len: usize, max: usize) -> Vec<usize> {
    if len <= max {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..max)
        .map(|k| ((k as f64) * (len - 1) as f64 / (max - 1) as f64).round() as usize)
        .collect();
    v.dedup();
    v
}

/// A matrix's role: its name with digit runs replaced by `#` (`layers.#.mlp.up.weight`).
fn role(name: &str) -> String {
    let mut o = String::with_capacity(name.len());
    let mut in_digits = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                o.push('#');
            }
            in_digits = true;
        } else {
            o.push(c);
            in_digits = false;
        }
    }
    o
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n - 1).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::engine::{PlanReport, RewriteReport};
    use crate::rewrite::eval::Note;

    fn note(constant: &str, k: i64, n: i64, rank: usize, err: f64, shared: bool) -> Note {
        Note {
            kernel: "svd".into(),
            constant: constant.into(),
            shape: vec![k, n],
            rank: Some(rank),
            sparsity: None,
            rel_error: err,
            params_before: (k * n) as u64,
            params_after: rank as u64 * (k + n) as u64,
            shared,
            storage: None,
            bytes_saved: None,
            whitened: None,
            method: None,
            hot_rows: None,
            pq_width: None,
            centroids: None,
        }
    }

    fn stage(rule: &str, fired: Vec<Site>, near: Vec<Site>) -> StageReport {
        StageReport {
            rule: rule.into(),
            round: None,
            fired,
            near_misses: near,
            nodes_before: 10,
            nodes_after: 12,
            params_before: 1000,
            params_after: 600,
            bytes_before: 4000,
            bytes_after: 2400,
            memo_hits: 0,
        }
    }

    fn report(spectra: bool) -> CompileReport {
        let evil = "h.0.<script>alert(\"x\")</script>&'q'";
        let fired = vec![
            Site {
                at: evil.into(),
                op: "MatMul".into(),
                detail: "'a' ← MatMul('a.0', 'b<1>')".into(),
                notes: vec![note(evil, 64, 32, 8, 0.25, false)],
            },
            Site {
                at: "h.1.mlp".into(),
                op: "MatMul".into(),
                detail: "ok".into(),
                notes: vec![note("h.1.mlp.weight", 64, 32, 16, 0.125, false)],
            },
        ];
        let near: Vec<Site> = (0..30)
            .map(|i| Site {
                at: format!("miss{i}<&>"),
                op: "Gather".into(),
                detail: format!("where V >= 8 * D is false ({i} < 6144)"),
                notes: vec![],
            })
            .collect();
        let stages = RewriteReport {
            pipeline: "default".into(),
            stages: vec![
                stage("linear_factorize", fired, near),
                stage("fold_slice", vec![], vec![]),
            ],
        };
        let plan = PlanReport {
            strategy: crate::plan::Strategy::Global,
            target_params: Some(2048),
            params_before: 4096,
            sites: vec![
                PlannedSite {
                    name: evil.into(),
                    shape: vec![64, 32],
                    rank: Some(8),
                    spectrum: spectra.then(|| (0..32).map(|i| 0.8f32.powi(i)).collect()),
                },
                PlannedSite {
                    name: "h.1.mlp.weight".into(),
                    shape: vec![64, 32],
                    rank: None,
                    spectrum: spectra.then(|| (0..32).map(|i| 1.0 / (1.0 + i as f32)).collect()),
                },
            ],
        };
        CompileReport::new(
            "/m/model<1>.onnx".into(),
            "/m/out.onnx".into(),
            stages,
            Some(plan),
            (4096, 16384),
            (2048, 8192),
            20000,
            10000,
        )
    }

    #[test]
    fn escapes_model_text() {
        let h = render(&report(true));
        assert!(!h.contains("<script"), "raw script tag in output");
        assert!(!h.contains("b<1>"));
        assert!(!h.contains("miss0<&>"));
        assert!(h.contains("h.0.&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;q&#39;"));
        assert!(h.contains("miss0&lt;&amp;&gt;"));
        assert!(h.contains("model&lt;1&gt;.onnx"));
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn spectra_chart_only_with_spectra() {
        let with = render(&report(true));
        let without = render(&report(false));
        assert!(with.contains("Singular spectra"));
        assert!(with.contains("<polyline"));
        assert_eq!(with.matches("<polyline").count(), 2);
        // The chosen rank of the factorized matrix is marked; the dense one has none.
        assert_eq!(with.matches("<circle").count(), 1);
        assert!(!without.contains("Singular spectra"));
        assert!(!without.contains("<polyline"));
        // The per-site charts do not depend on spectra.
        assert!(without.contains("Rank per site"));
        assert!(without.contains("Relative error per site"));
    }

    #[test]
    fn no_site_charts_without_sites() {
        let mut r = report(false);
        r.sites.clear();
        let h = render(&r);
        assert!(!h.contains("Rank per site"));
        assert!(h.contains("No constant was transformed"));
    }

    /// Every attribute value is quoted (an unquoted value before `/>` would swallow the slash
    /// and leave the SVG element open).
    #[test]
    fn attributes_quoted() {
        let h = render(&report(true));
        let mut in_tag = false;
        let mut in_quote = false;
        let b = h.as_bytes();
        for i in 0..b.len() {
            match b[i] {
                b'<' if !in_quote => in_tag = true,
                b'>' if !in_quote => in_tag = false,
                b'"' if in_tag => in_quote = !in_quote,
                b'=' if in_tag && !in_quote => {
                    assert_eq!(
                        b[i + 1],
                        b'"',
                        "unquoted attribute at {}",
                        &h[i.saturating_sub(40)..i + 10]
                    )
                }
                _ => {}
            }
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(render(&report(true)), render(&report(true)));
    }

    #[test]
    fn summary_and_stages() {
        let h = render(&report(true));
        assert!(h.contains("2.000×"));
        assert!(h.contains("global strategy"));
        assert!(!h.to_lowercase().contains("effective"));
        // Up to 20 near misses per stage, then a count of the rest.
        assert!(h.contains("miss19&lt;"));
        assert!(!h.contains("miss20&lt;"));
        assert!(h.contains("… 10 more"));
        assert!(!h.contains("<script"));
        assert!(h.starts_with("<!doctype html>"));
        assert!(h.ends_with("</html>\n"));
    }

    #[test]
    fn downsamples_long_spectra() {
        let idx = downsample(5000, SPECTRUM_POINTS);
        assert!(idx.len() <= SPECTRUM_POINTS);
        assert_eq!(idx[0], 0);
        assert_eq!(*idx.last().unwrap(), 4999);
        assert_eq!(downsample(10, SPECTRUM_POINTS), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn generic_json() {
        let v = serde_json::json!({
            "outputs": [
                {"name": "logits<x>", "rel_error": 0.0123456789, "cosine": 0.99, "top1_agreement": 1.0},
                {"name": "hidden", "rel_error": 1e-5, "cosine": 1.0}
            ],
            "samples": 8,
        });
        let mut o = String::new();
        json_html(&mut o, &v);
        assert!(o.contains("logits&lt;x&gt;"));
        assert!(o.contains("0.0123457"));
        assert!(o.contains("<th class=\"m\">top1_agreement</th>"));
        assert!(o.contains(">8<"));
    }

    #[test]
    fn helpers() {
        assert_eq!(group(124439827), "124,439,827");
        assert_eq!(group(12), "12");
        assert_eq!(nice_ceil(0.73), 0.8);
        assert_eq!(nice_ceil(0.95), 1.0);
        assert_eq!(nice_ceil(0.21), 0.25);
        assert_eq!(nice_ceil(114.0), 120.0);
        assert_eq!(ticks(120.0), vec![0.0, 50.0, 100.0]);
        assert_eq!(
            role("model.layers.12.mlp.up_proj.weight"),
            "model.layers.#.mlp.up_proj.weight"
        );
        assert_eq!(kn(&[50257, 768]), (50257, 768));
    }
}
