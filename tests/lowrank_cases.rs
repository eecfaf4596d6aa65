//! Low-rank rules on small cases (`tests/cases/lowrank/*.onnxtxt`, each naming its `run` step
//! in a `# run:` line): a snapshot of what fired and the rewritten graph; the factors written to
//! the file reproduce the truncation error the report predicts, ‖W − A·B‖/‖W‖; the model runs
//! in onnxruntime with the original's output shapes; near misses fire nothing and say why.
mod common;

use std::path::{Path, PathBuf};

use hcc::rewrite::{render_explain, Engine};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/lowrank");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnxtxt"))
        .collect();
    v.sort();
    v
}

fn f32s(m: &hcc::ir::Model, name: &str) -> (Vec<i64>, Vec<f64>) {
    let v = m
        .graph
        .value_by_name(name)
        .unwrap_or_else(|| panic!("no constant {name}"));
    let t = m.graph.constant(v).unwrap();
    (
        t.dims.clone(),
        t.as_f32().unwrap().iter().map(|&x| x as f64).collect(),
    )
}

#[test]
fn lowrank_rules_on_cases() {
    let tmp = tempfile::tempdir().unwrap();
    for case in cases() {
        let stem = case.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&case).unwrap();
        let step = text
            .lines()
            .find_map(|l| l.strip_prefix("# run:"))
            .expect("# run: line")
            .trim()
            .to_string();
        let src = format!("use \"std.hcp\"\npipeline case {{\n  run {step}\n}}\n");
        let program = hcc::dsl::load_str(&src, "<case>").unwrap();
        let pipe = program.pipeline("case").unwrap();
        let original = hcc::onnx::load(&case).unwrap();
        let mut model = original.clone();
        let mut engine = Engine::new(&mut model, &program);
        engine
            .plan_pipeline(pipe, None, hcc::plan::Strategy::Global)
            .unwrap();
        let report = engine.run_pipeline(pipe).unwrap();
        let stage = &report.stages[0];
        let printed = hcc::onnx::to_text(&model).unwrap();
        insta::assert_snapshot!(
            format!("lowrank__{stem}"),
            format!(
                "{}\n--- rewritten ---\n{printed}",
                render_explain(&report, 20)
            )
        );
        if stem.starts_with("near_miss") {
            assert!(
                stage.fired.is_empty() && !stage.near_misses.is_empty(),
                "{stem}"
            );
            continue;
        }
        assert_eq!(stage.fired.len(), 1, "{stem}");
        let note = &stage.fired[0].notes[0];

        // What the file stores reproduces the predicted error.
        let out = tmp.path().join(format!("{stem}.onnx"));
        hcc::onnx::save(&model, &out, &Default::default()).unwrap();
        let written = hcc::onnx::load(&out).unwrap();
        let (wd, w) = f32s(&original, &note.constant);
        let (ad, a) = f32s(&written, &format!("{}.lowrank_a", note.constant));
        let (bd, b) = f32s(&written, &format!("{}.lowrank_b", note.constant));
        let (k, r, n) = (wd[0] as usize, ad[1] as usize, bd[1] as usize);
        assert_eq!((ad[0] as usize, bd[0] as usize, wd[1] as usize), (k, r, n));
        let (mut err, mut norm) = (0.0, 0.0);
        for i in 0..k {
            for j in 0..n {
                let ab: f64 = (0..r).map(|l| a[i * r + l] * b[l * n + j]).sum();
                err += (w[i * n + j] - ab).powi(2);
                norm += w[i * n + j].powi(2);
            }
        }
        let measured = (err / norm).sqrt();
        assert!(
            (measured - note.rel_error).abs() < 1e-5,
            "{stem}: report {} vs file {measured}",
            note.rel_error
        );
        assert_eq!(note.params_after as usize, r * (k + n), "{stem}");

        let a_path = tmp.path().join(format!("{stem}_orig.onnx"));
        hcc::onnx::save(&original, &a_path, &Default::default()).unwrap();
        common::judge("judge_check.py", &[out.as_os_str()]);
        let run: serde_json::Value = serde_json::from_str(&common::judge(
            "judge_run.py",
            &[a_path.as_os_str(), out.as_os_str()],
        ))
        .unwrap();
        for o in run["results"][0]["outputs"].as_array().unwrap() {
            assert_eq!(o["shape_a"], o["shape_b"], "{stem}");
        }
    }
}
