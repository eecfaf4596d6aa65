//! The same model compiled through the CPU and the GPU backend (Mesa lavapipe where there is no
//! GPU): the reports must agree (same sites, ranks and stored sizes; truncation errors within
//! 1e-4 relative), both outputs load in onnxruntime, and `hcc adapters` lists what `auto` takes.
//!
//! Without a wgpu adapter this test fails, unless `HCC_SKIP_GPU_TESTS=1` (then it skips).
mod common;

use std::path::Path;

use serde_json::Value;

fn compile(backend: &str, model: &Path, passes: &Path, dir: &Path) -> Option<Value> {
    let out = dir.join(format!("{backend}.onnx"));
    let report = dir.join(format!("{backend}.json"));
    let res = common::hcc()
        .args(["-q", "compile", "--no-fidelity", "--backend", backend])
        .arg(model)
        .arg("-p")
        .arg(passes)
        .arg("-o")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    if !res.status.success() {
        if backend == "gpu" && std::env::var("HCC_SKIP_GPU_TESTS").is_ok_and(|v| v == "1") {
            eprintln!("skipping: no GPU adapter ({stderr})");
            return None;
        }
        panic!("compile --backend {backend} failed: {stderr}");
    }
    common::judge("judge_check.py", &[out.as_os_str()]);
    Some(serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap())
}

#[test]
fn cpu_and_gpu_backends_agree_on_a_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let passes = dir.path().join("p.hcp");
    // A fixed rank (kv_compress: the sketch and power-iteration path) and a planned budget
    // (full spectra from each backend feed the planner, whose ranks must then agree). SmolLM2's
    // first 4 blocks: matrices of 576 × 192 … 576 × 1536, past the exact-SVD threshold.
    std::fs::write(
        &passes,
        "use \"std.hcp\"\npipeline p {\n  budget ratio 1.25\n  run kv_compress(rank = 32)\n  run linear_factorize(rank = plan, min_size = 0)\n}\n",
    )
    .unwrap();
    let model = common::model("smollm2-135m-4layers-f32.onnx");
    let cpu = compile("cpu", &model, &passes, dir.path()).unwrap();
    let Some(gpu) = compile("gpu", &model, &passes, dir.path()) else {
        return;
    };
    assert_eq!(cpu["backend"], "cpu");
    assert!(
        gpu["backend"].as_str().unwrap().starts_with("gpu:"),
        "{}",
        gpu["backend"]
    );
    for key in ["params_after", "bytes_after"] {
        assert_eq!(cpu[key], gpu[key], "{key}");
    }
    let (cs, gs) = (
        cpu["sites"].as_array().unwrap(),
        gpu["sites"].as_array().unwrap(),
    );
    assert!(
        cs.len() >= 20,
        "expected factorized sites, got {}",
        cs.len()
    );
    assert_eq!(cs.len(), gs.len());
    for (c, g) in cs.iter().zip(gs) {
        for key in [
            "rule",
            "node",
            "constant",
            "rank",
            "params_before",
            "params_after",
        ] {
            assert_eq!(c[key], g[key], "{key} of {}", c["node"]);
        }
        let (ce, ge) = (
            c["rel_error"].as_f64().unwrap(),
            g["rel_error"].as_f64().unwrap(),
        );
        assert!(
            (ce - ge).abs() <= 1e-4 * ce.max(1e-3),
            "{}: rel error cpu {ce} vs gpu {ge}",
            c["node"]
        );
    }
}

#[test]
fn adapters_command_says_what_auto_takes() {
    let out = common::hcc().args(["adapters", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let auto = v["auto"].as_str().unwrap();
    let hardware = v["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["software"] == false);
    // auto takes a hardware adapter when there is one, else the CPU (never a software GPU).
    assert_eq!(auto.starts_with("gpu:"), hardware, "{auto}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("XDG_RUNTIME_DIR"));
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let out = common::hcc()
        .args(["compile", "--backend", "tpu", "x.onnx"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown backend 'tpu'"), "{err}");
}
