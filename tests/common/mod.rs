//! Shared helpers for integration tests: where the real models and the Python judge are.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The folder of real models made by `../shared/models/fetch.sh` (`$HCC_MODELS`, else
/// `~/.cache/hcc-models`). Panics with instructions when it is missing: these tests must not
/// pass silently without their data.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("HCC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/hcc-models")
        });
    assert!(
        dir.join("gpt2-tiny-random.onnx").exists(),
        "real models not found in {} — run `bash ../shared/models/fetch.sh` (or set HCC_MODELS)",
        dir.display()
    );
    dir
}

/// A model file from the models folder.
pub fn model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(p.exists(), "missing model {}", p.display());
    p
}

/// Every real ONNX model, smallest first.
pub fn all_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(models_dir())
        .expect("models folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    v.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    v
}

/// The Python interpreter of the judge venv (onnx + onnxruntime).
pub fn python() -> PathBuf {
    let p = models_dir().join("venv/bin/python");
    assert!(p.exists(), "judge venv missing at {}", p.display());
    p
}

/// Run a judge script from tests/python with arguments; returns stdout, panics with stderr on
/// failure.
pub fn judge(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hcc binary built for this test run.
pub fn hcc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hcc"))
}

/// Runs the hcc binary with `args`.
pub fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    hcc().args(args).output().expect("run hcc")
}

/// Runs hcc expecting success; returns stdout.
pub fn ok(args: &[&std::ffi::OsStr]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "hcc {:?} failed ({}):\n{}{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs hcc expecting failure: non-zero exit, no panic; returns stderr.
pub fn fails(args: &[&std::ffi::OsStr]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "hcc {:?} should fail:\n{}",
        args,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked"), "hcc {:?} panicked:\n{err}", args);
    assert_ne!(
        out.status.code(),
        Some(101),
        "hcc {:?} exited like a panic:\n{err}",
        args
    );
    err
}

/// A string argument as an `OsStr`.
pub fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}
