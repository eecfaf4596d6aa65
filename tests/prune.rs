//! Pruning end to end on the real models (GPT-2, BERT/MiniLM, SmolLM2): structured FFN neuron
//! pruning really shrinks the parameter count; unstructured sparsity is stored sparse only where
//! that is smaller; the outputs pass the onnx checker and run in onnxruntime with the original's
//! output shapes; the report's sizes are the file's (judge_stats.py).
mod common;

use std::path::Path;

const PIPELINES: &str = r#"use "std.hcp"

pipeline neurons {
  run prune_neurons_gelu_tanh(0.5)
  run prune_neurons_gelu_erf(0.5)
  run prune_neurons_swiglu(0.5)
}

pipeline sparse50 {
  run prune(0.5)
}

pipeline sparse90 {
  run prune(0.9)
}
"#;

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_str(&common::judge("judge_stats.py", &[path.as_os_str()])).unwrap()
}

/// Bytes of the int64 indices of the file's sparse initializers (judge_stats.py counts values).
fn sparse_index_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            "import onnx,sys,numpy as np\n\
             m=onnx.load(sys.argv[1])\n\
             print(sum(int(np.prod(s.indices.dims))*8 for s in m.graph.sparse_initializer))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn same_output_shapes(a: &Path, b: &Path) {
    let run: serde_json::Value = serde_json::from_str(&common::judge(
        "judge_run.py",
        &[a.as_os_str(), b.as_os_str()],
    ))
    .unwrap();
    let outs = run["results"][0]["outputs"].as_array().unwrap();
    assert!(!outs.is_empty());
    for o in outs {
        assert_eq!(o["shape_a"], o["shape_b"], "{}: {o}", b.display());
    }
}

/// `hcc compile` with one of [`PIPELINES`]; returns (output, report).
fn compile(model: &str, pipeline: &str, dir: &Path) -> (std::path::PathBuf, serde_json::Value) {
    let hcp = dir.join("prune.hcp");
    std::fs::write(&hcp, PIPELINES).unwrap();
    let src = common::model(model);
    let out = dir.join(format!("{pipeline}.onnx"));
    let report = dir.join(format!("{pipeline}.json"));
    let r = common::hcc()
        .args(["compile", "-q"])
        .arg(&src)
        .arg("-p")
        .arg(&hcp)
        .args(["--pipeline", pipeline])
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{model} {pipeline}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (out, report)
}

fn check_sizes(report: &serde_json::Value, out: &Path, what: &str) {
    let s = stats(out);
    assert_eq!(report["params_after"], s["params"], "{what}: params");
    assert_eq!(report["bytes_after"], s["bytes"], "{what}: bytes");
}

fn structured(model: &str, blocks: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model(model);
    let (out, report) = compile(model, "neurons", tmp.path());
    common::judge("judge_check.py", &[out.as_os_str()]);
    same_output_shapes(&src, &out);
    check_sizes(&report, &out, model);
    let sites = report["sites"].as_array().unwrap();
    assert_eq!(sites.len(), blocks, "{model}: one site per MLP block");
    let mut saved = 0;
    for s in sites {
        let (b, a) = (
            s["params_before"].as_u64().unwrap(),
            s["params_after"].as_u64().unwrap(),
        );
        assert_eq!(a * 2, b, "{model}: half the neurons: {s}");
        saved += b - a;
    }
    let before = report["params_before"].as_u64().unwrap();
    let after = report["params_after"].as_u64().unwrap();
    // At least the sites' savings (identical pruned constants, e.g. all-zero biases of a
    // random model, are stored once).
    assert!(
        before - after >= saved,
        "{model}: {before} → {after}, sites save {saved}"
    );
    assert!(after * 10 < before * 9, "{model}: {before} → {after}");
}

fn unstructured50(model: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model(model);
    let (out, report) = compile(model, "sparse50", tmp.path());
    common::judge("judge_check.py", &[out.as_os_str()]);
    same_output_shapes(&src, &out);
    check_sizes(&report, &out, model);
    // 4 bytes value + 8 bytes index per kept weight > 4 bytes dense: nothing is saved.
    assert_eq!(report["params_after"], report["params_before"], "{model}");
    assert_eq!(sparse_index_bytes(&out), 0, "{model}: stored dense");
    let sites = report["sites"].as_array().unwrap();
    assert!(!sites.is_empty());
    for s in sites {
        assert_eq!(s["params_after"], s["params_before"], "{s}");
        let sp = s["sparsity"].as_f64().unwrap();
        assert!((sp - 0.5).abs() < 1e-3, "{s}");
    }
}

#[test]
fn gpt2_structured_and_unstructured() {
    structured("gpt2-small-random.onnx", 12);
    unstructured50("gpt2-small-random.onnx");
}

#[test]
fn minilm_structured_and_unstructured() {
    structured("all-minilm-l6-v2-f32.onnx", 6);
    unstructured50("all-minilm-l6-v2-f32.onnx");
}

#[test]
fn smollm2_structured_and_unstructured() {
    structured("smollm2-135m-f32.onnx", 30);
    unstructured50("smollm2-135m-f32.onnx");
}

/// At 90 % the masked weights are stored as sparse initializers, and the notes predicted that
/// storage exactly. Runs the library path (the engine packs at the end of the pipeline, then
/// save).
#[test]
fn minilm_unstructured90_is_stored_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model("all-minilm-l6-v2-f32.onnx");
    let program = hcc::dsl::load_str(PIPELINES, "<prune test>").unwrap();
    let pipe = program.pipeline("sparse90").unwrap();
    let mut m = hcc::onnx::load(&src).unwrap();
    let (params_before, bytes_before) = hcc::rewrite::engine::stored_size(&m.graph);
    let report = hcc::rewrite::Engine::new(&mut m, &program)
        .run_pipeline(pipe)
        .unwrap();
    // run_pipeline packed the masked constants that are smaller sparse.
    let packed = m
        .graph
        .initializers()
        .iter()
        .filter(|&&v| {
            matches!(
                m.graph.value(v).def,
                hcc::ir::ValueDef::SparseInitializer(_)
            )
        })
        .count();
    hcc::ir::verify::verify(&m.graph).unwrap();
    let (params_after, bytes_after) = hcc::rewrite::engine::stored_size(&m.graph);
    let notes: Vec<_> = report.stages[0]
        .fired
        .iter()
        .flat_map(|f| f.notes.iter())
        .collect();
    assert!(!notes.is_empty());
    assert_eq!(packed, notes.len(), "every masked weight is packed");
    let predicted: u64 = notes.iter().map(|n| n.bytes_saved.unwrap()).sum();
    assert!(notes.iter().all(|n| n.storage.as_deref() == Some("sparse")));
    assert_eq!(bytes_before - bytes_after, predicted);
    let saved_params: u64 = notes.iter().map(|n| n.params_before - n.params_after).sum();
    assert_eq!(params_before - params_after, saved_params);

    let out = tmp.path().join("sparse90.onnx");
    hcc::onnx::save(&m, &out, &Default::default()).unwrap();
    let s = stats(&out);
    assert_eq!(s["params"].as_u64().unwrap(), params_after);
    assert_eq!(
        s["bytes"].as_u64().unwrap(),
        bytes_after,
        "values + indices (judge_stats counts both)"
    );
    assert!(sparse_index_bytes(&out) > 0);
    // onnx's shape inference types a sparse initializer as a sparse tensor and rejects it as a
    // MatMul input; the structural checker accepts it, and onnxruntime densifies it at load.
    common::judge(
        "judge_check.py",
        &["--no-full-check".as_ref(), out.as_os_str()],
    );
    same_output_shapes(&src, &out);
}
