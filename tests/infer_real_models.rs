//! Shape inference on the real models, checked against onnx's own shape inference.
//!
//! Needs the models in `$HCC_MODELS` (default `~/.cache/hcc-models`) and the Python venv with
//! `onnx` at `$HCC_MODELS/venv/bin/python` (or `$HCC_PYTHON`). Missing models or Python fail the
//! test with a message saying what is missing; nothing is skipped silently.
//!
//! For every model:
//! (a) every MatMul, Gemm and Gather node has fully inferred input and output shapes whose only
//!     symbols are the symbolic dims of the model's inputs (`batch`, `seq`, ...);
//! (b) for every value both hcc and `onnx.shape_inference.infer_shapes(model, data_prop=True)`
//!     type, the element types agree and hcc's shape equals onnx's or is more specific: a
//!     known onnx dim must be the same known dim in hcc, an onnx input symbol the same symbol;
//!     a symbol onnx invents (`unk__3`) matches an hcc symbol or unknown dim, and a known hcc
//!     dim only where (d) confirms it (onnx gives up on, e.g., `Slice` with computed ends and
//!     invents symbols even for the dims the slice does not touch);
//! (c) inference reports no warnings;
//! (d) ground truth: onnxruntime runs the model twice with the input symbols bound to different
//!     small sizes; every hcc shape, evaluated under the binding (`batch*seq` → product;
//!     unknown dims skipped), equals the actual shape of the value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use hcc::ir::infer::infer_shapes;
use hcc::ir::{Dim, Graph};
use serde_json::Value as Json;

const MODELS: [&str; 6] = [
    "gpt2-tiny-random.onnx",
    "gpt2-small-random.onnx",
    "smollm2-135m-4layers-f32.onnx",
    "smollm2-135m-f32.onnx",
    "all-minilm-l6-v2-f32.onnx",
    "paraphrase-minilm-l3-v2.onnx",
];

fn models_dir() -> PathBuf {
    match std::env::var_os("HCC_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/hcc-models")
        }
    }
}

fn python(dir: &Path) -> PathBuf {
    std::env::var_os("HCC_PYTHON").map_or_else(|| dir.join("venv/bin/python"), PathBuf::from)
}

/// onnx's view of a model: input symbols, name → (elem code, dims), and onnxruntime runs.
struct OnnxView {
    symbols: BTreeSet<String>,
    values: BTreeMap<String, (i64, Option<Vec<Json>>)>,
    runs: Vec<Run>,
}

/// One onnxruntime run: the sizes bound to the input symbols and the actual shapes.
struct Run {
    bind: BTreeMap<String, i64>,
    shapes: BTreeMap<String, Vec<i64>>,
}

fn onnx_view(py: &Path, model: &Path) -> Result<OnnxView, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/onnx_shapes.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(model)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let j: Json = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bad JSON from the script: {e}"))?;
    let symbols = j["symbols"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut values = BTreeMap::new();
    if let Some(m) = j["values"].as_object() {
        for (name, v) in m {
            let elem = v[0].as_i64().unwrap_or(0);
            let dims = v[1].as_array().cloned();
            values.insert(name.clone(), (elem, dims));
        }
    }
    let mut runs = Vec::new();
    for r in j["runs"].as_array().into_iter().flatten() {
        let bind = r["bind"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        let shapes = r["shapes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let dims: Option<Vec<i64>> =
                            v.as_array()?.iter().map(Json::as_i64).collect();
                        Some((k.clone(), dims?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        runs.push(Run { bind, shapes });
    }
    if runs.len() < 2 {
        return Err("the script reported fewer than 2 onnxruntime runs".into());
    }
    Ok(OnnxView {
        symbols,
        values,
        runs,
    })
}

/// Why hcc's dim is not as specific as onnx's, if it is not.
fn dim_mismatch(ours: &Dim, theirs: &Json, symbols: &BTreeSet<String>) -> Option<String> {
    match theirs {
        Json::Null => None,
        Json::Number(n) => (ours.known() != n.as_i64()).then(|| format!("onnx knows {n}")),
        Json::String(s) if symbols.contains(s) => {
            (*ours != Dim::Sym(s.clone())).then(|| format!("onnx has the input symbol {s}"))
        }
        // An invented symbol: anything goes here; a known hcc dim is checked by (d).
        Json::String(_) => None,
        other => Some(format!("unexpected dim {other} from onnx")),
    }
}

/// The size of `d` under `bind`, when it can be told.
fn eval_dim(d: &Dim, bind: &BTreeMap<String, i64>) -> Option<i64> {
    match d {
        Dim::Known(k) => Some(*k),
        Dim::Sym(s) => s.split('*').try_fold(1i64, |acc, p| {
            acc.checked_mul(p.parse::<i64>().ok().or_else(|| bind.get(p).copied())?)
        }),
        Dim::Unknown => None,
    }
}

fn input_symbols(g: &Graph) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for &v in &g.inputs {
        if let Some(s) = g.value(v).declared.as_ref().and_then(|t| t.shape()) {
            for d in s {
                if let Dim::Sym(name) = d {
                    out.insert(name.clone());
                }
            }
        }
    }
    out
}

/// Check one model; returns the problems found and a one-line summary.
fn check_model(path: &Path, py: &Path) -> (Vec<String>, String) {
    let mut problems = Vec::new();
    let mut model = match hcc::onnx::load(path) {
        Ok(m) => m,
        Err(e) => return (vec![format!("cannot load: {e}")], String::new()),
    };
    let opset = model.onnx_opset().unwrap_or(1);
    let g = &mut model.graph;
    let stats = infer_shapes(g, opset);
    for w in &stats.warnings {
        problems.push(format!("warning: {w}"));
    }
    let symbols = input_symbols(g);

    // (a) the sites compression passes touch are fully typed.
    for n in g.node_ids() {
        let node = g.node(n);
        if !matches!(node.op_type.as_str(), "MatMul" | "Gemm" | "Gather") {
            continue;
        }
        for v in node.inputs().iter().chain(node.outputs()).flatten() {
            let val = g.value(*v);
            let ok = val
                .inferred
                .as_ref()
                .and_then(|t| t.shape())
                .is_some_and(|s| {
                    s.iter().all(|d| match d {
                        Dim::Known(_) => true,
                        Dim::Sym(s) => symbols.contains(s),
                        Dim::Unknown => false,
                    })
                });
            if !ok {
                let shown = val
                    .inferred
                    .as_ref()
                    .map_or("nothing".into(), |t| t.to_string());
                problems.push(format!(
                    "(a) {} '{}': value '{}' is {shown}, not fully inferred over {symbols:?}",
                    node.op_type, node.name, val.name
                ));
            }
        }
    }

    // (b) agreement with onnx.
    let view = match onnx_view(py, path) {
        Ok(v) => v,
        Err(e) => {
            problems.push(e);
            return (problems, String::new());
        }
    };
    if view.symbols != symbols {
        problems.push(format!(
            "input symbols differ: onnx {:?}, hcc {symbols:?}",
            view.symbols
        ));
    }
    // (d) ground truth from onnxruntime.
    let mut checked_runtime = 0;
    for (_, val) in g.values() {
        let Some(s) = val.inferred.as_ref().and_then(|t| t.shape()) else {
            continue;
        };
        for run in &view.runs {
            let Some(actual) = run.shapes.get(&val.name) else {
                continue;
            };
            checked_runtime += 1;
            let ours: Vec<Option<i64>> = s.iter().map(|d| eval_dim(d, &run.bind)).collect();
            let agree = ours.len() == actual.len()
                && ours
                    .iter()
                    .zip(actual)
                    .all(|(o, a)| o.is_none_or(|o| o == *a));
            if !agree {
                let shown: Vec<String> = s.iter().map(|d| d.to_string()).collect();
                problems.push(format!(
                    "(d) value '{}': hcc [{}] but onnxruntime gives {actual:?} with {:?}",
                    val.name,
                    shown.join(","),
                    run.bind
                ));
            }
        }
    }
    if checked_runtime == 0 {
        problems.push("(d) no value could be checked against onnxruntime".into());
    }

    let (mut compared, mut more_specific, mut only_onnx) = (0, 0, Vec::new());
    for (_, val) in g.values() {
        let Some((elem, dims)) = view.values.get(&val.name) else {
            continue;
        };
        let Some(ours) = &val.inferred else {
            if dims.is_some() {
                only_onnx.push(val.name.clone());
            }
            continue;
        };
        compared += 1;
        let mut why = Vec::new();
        let our_elem = ours.elem().map_or(0, |e| i64::from(e.onnx_code()));
        if *elem != 0 && our_elem != *elem {
            why.push(format!("element type {our_elem} vs onnx {elem}"));
        }
        if let Some(theirs) = dims {
            match ours.shape() {
                None => why.push("hcc has no shape".into()),
                Some(s) if s.len() != theirs.len() => {
                    why.push(format!("rank {} vs onnx {}", s.len(), theirs.len()))
                }
                Some(s) => {
                    for (i, (d, t)) in s.iter().zip(theirs).enumerate() {
                        if let Some(m) = dim_mismatch(d, t, &view.symbols) {
                            why.push(format!("dim {i}: {m}"));
                        }
                    }
                    let sharper = s.iter().zip(theirs).any(|(d, t)| match t {
                        Json::Null => *d != Dim::Unknown,
                        Json::String(name) => !view.symbols.contains(name) && *d != Dim::Unknown,
                        _ => false,
                    });
                    if sharper {
                        more_specific += 1;
                    }
                }
            }
        }
        if !why.is_empty() {
            let theirs = dims
                .as_ref()
                .map_or("?".to_string(), |d| Json::Array(d.clone()).to_string());
            problems.push(format!(
                "(b) value '{}': hcc {ours}, onnx {theirs}: {}",
                val.name,
                why.join("; ")
            ));
        }
    }
    let with_unknown = g
        .values()
        .filter(|(_, v)| {
            v.inferred
                .as_ref()
                .is_some_and(|t| t.shape().is_none_or(|s| s.contains(&Dim::Unknown)))
        })
        .count();
    let summary = format!(
        "{} values, {} inferred; compared with onnx: {compared}, hcc more specific on {more_specific}, \
         typed only by onnx: {} {:?}; hcc types with an unknown dim or rank: {with_unknown}; shapes checked against onnxruntime: {checked_runtime}; unsupported ops: {:?}",
        stats.total,
        stats.inferred,
        only_onnx.len(),
        only_onnx.iter().take(5).collect::<Vec<_>>(),
        stats.unsupported
    );
    (problems, summary)
}

#[test]
fn infer_real_models_against_onnx() {
    let dir = models_dir();
    let py = python(&dir);
    let missing: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| !dir.join(m).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "models missing from {} (set HCC_MODELS to their folder): {missing:?}",
        dir.display()
    );
    assert!(
        py.is_file(),
        "no Python with onnx at {} (set HCC_PYTHON)",
        py.display()
    );
    let mut report = String::new();
    let mut failed = false;
    for m in MODELS {
        let (problems, summary) = check_model(&dir.join(m), &py);
        eprintln!("{m}: {summary}");
        if !problems.is_empty() {
            failed = true;
            report.push_str(&format!("\n{m}: {} problems\n", problems.len()));
            for p in problems.iter().take(25) {
                report.push_str(&format!("  {p}\n"));
            }
        }
    }
    assert!(!failed, "shape inference disagrees on real models:{report}");
}
