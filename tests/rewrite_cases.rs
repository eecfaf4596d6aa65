//! Data-driven rewrite tests: every `tests/cases/<rule>/*.onnxtxt` is rewritten by the standard
//! rule of that name. Three checks per case:
//! - structure: an insta snapshot of what fired, the near misses with their reasons, and the
//!   rewritten graph in ONNX text;
//! - numerics: onnxruntime gives bit-identical outputs for the original and the rewritten model
//!   (these rules are exact);
//! - near misses: a case named `near_miss_*` must not fire, and must report why.
//!
//! Lossy rules (`LOSSY_DIRS`: pruning) cannot be bit-identical. Each of their cases starts with
//! a `# run: rule(args)` line; the numeric check is then that the weight error the report
//! predicts is the error of the constants written (‖W − Wm‖/‖W‖ of every rewritten `*.pruned`
//! constant against its original, to 1e-5), and that onnxruntime runs the rewritten model with
//! the original's output shapes.
mod common;

use std::path::{Path, PathBuf};

use hcc::rewrite::{render_explain, Engine, RewriteReport};

const RULE_DIRS: &[&str] = &[
    "dedupe",
    "retie",
    "fold_transpose",
    "fold_slice",
    "fold_concat",
    "fold_split",
];

/// Folders of lossy rules; their cases name the rule and arguments in a `# run:` line.
const LOSSY_DIRS: &[&str] = &["prune", "prune_neurons"];

fn cases(rule: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases")
        .join(rule);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnxtxt"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no cases in {}", dir.display());
    v
}

#[test]
fn std_rules_on_cases() {
    let program = hcc::dsl::builtin_std().expect("std.hcp checks");
    let tmp = tempfile::tempdir().unwrap();
    for rule_name in RULE_DIRS {
        let rule = program
            .rule(rule_name)
            .unwrap_or_else(|| panic!("std.hcp has no rule {rule_name}"));
        for case in cases(rule_name) {
            let stem = case.file_stem().unwrap().to_string_lossy().into_owned();
            let original =
                hcc::onnx::load(&case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
            let mut model = original.clone();
            let stage = Engine::new(&mut model, &program)
                .run_rule(rule, &[])
                .unwrap();
            let report = RewriteReport {
                pipeline: format!("{rule_name} on {stem}"),
                stages: vec![stage.clone()],
            };
            let text = hcc::onnx::to_text(&model).unwrap();
            insta::assert_snapshot!(
                format!("{rule_name}__{stem}"),
                format!("{}\n--- rewritten ---\n{text}", render_explain(&report, 20))
            );

            if stem.starts_with("near_miss") {
                assert!(
                    stage.fired.is_empty(),
                    "{}: a near-miss case fired",
                    case.display()
                );
                assert!(
                    !stage.near_misses.is_empty(),
                    "{}: no near-miss reason reported",
                    case.display()
                );
            } else {
                assert!(
                    !stage.fired.is_empty(),
                    "{}: the rule did not fire",
                    case.display()
                );
            }

            let a = tmp.path().join(format!("{rule_name}_{stem}_a.onnx"));
            let b = tmp.path().join(format!("{rule_name}_{stem}_b.onnx"));
            hcc::onnx::save(&original, &a, &Default::default()).unwrap();
            hcc::onnx::save(&model, &b, &Default::default()).unwrap();
            common::judge("judge_check.py", &[b.as_os_str()]);
            common::judge(
                "judge_run.py",
                &[a.as_os_str(), b.as_os_str(), "--require-identical".as_ref()],
            );
        }
    }
}

/// The `run` step a lossy case asks for (`# run: prune(0.5)`).
fn run_line(case: &Path) -> String {
    let text = std::fs::read_to_string(case).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# run:"))
        .unwrap_or_else(|| panic!("{}: no `# run:` line", case.display()))
        .trim()
        .to_string()
}

fn sum_sq(t: &hcc::ir::Tensor) -> f64 {
    t.as_f32()
        .unwrap()
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum()
}

#[test]
fn lossy_rules_on_cases() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in LOSSY_DIRS {
        for case in cases(dir) {
            let stem = case.file_stem().unwrap().to_string_lossy().into_owned();
            let step = run_line(&case);
            let src = format!("use \"std.hcp\"\npipeline case {{\n  run {step}\n}}\n");
            let program = hcc::dsl::load_str(&src, "<case>").unwrap();
            let pipe = program.pipeline("case").unwrap();
            let original =
                hcc::onnx::load(&case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
            let mut model = original.clone();
            let report = Engine::new(&mut model, &program)
                .run_pipeline(pipe)
                .unwrap();
            let stage = &report.stages[0];
            let text = hcc::onnx::to_text(&model).unwrap();
            let notes: Vec<String> = stage
                .fired
                .iter()
                .flat_map(|f| &f.notes)
                .map(|n| format!("{n:?}"))
                .collect();
            insta::assert_snapshot!(
                format!("{dir}__{stem}"),
                format!(
                    "{}\n--- notes ---\n{}\n--- rewritten ---\n{text}",
                    render_explain(&report, 20),
                    notes.join("\n")
                )
            );
            if stem.starts_with("near_miss") {
                assert!(stage.fired.is_empty(), "{}: fired", case.display());
                assert!(!stage.near_misses.is_empty(), "{}", case.display());
                continue;
            }
            assert_eq!(
                stage.fired.len(),
                1,
                "{}: one site expected",
                case.display()
            );

            // The predicted weight error is the error of what was written.
            let a = tmp.path().join(format!("{dir}_{stem}_a.onnx"));
            let b = tmp.path().join(format!("{dir}_{stem}_b.onnx"));
            hcc::onnx::save(&original, &a, &Default::default()).unwrap();
            hcc::onnx::save(&model, &b, &Default::default()).unwrap();
            let written = hcc::onnx::load(&b).unwrap();
            let (mut before, mut after) = (0.0, 0.0);
            for &v in written.graph.initializers() {
                let name = &written.graph.value(v).name;
                let Some(orig) = name.strip_suffix(".pruned") else {
                    continue;
                };
                let o = original.graph.value_by_name(orig).unwrap();
                before += sum_sq(original.graph.constant(o).unwrap());
                after += sum_sq(written.graph.constant(v).unwrap());
            }
            assert!(
                before > 0.0,
                "{}: no pruned constant written",
                case.display()
            );
            let measured = (1.0 - after / before).max(0.0).sqrt();
            let note = &stage.fired[0].notes[0];
            assert!(
                (measured - note.rel_error).abs() < 1e-5,
                "{}: report says {}, file has {measured}",
                case.display(),
                note.rel_error
            );

            common::judge("judge_check.py", &[b.as_os_str()]);
            let run: serde_json::Value = serde_json::from_str(&common::judge(
                "judge_run.py",
                &[a.as_os_str(), b.as_os_str()],
            ))
            .unwrap();
            for o in run["results"][0]["outputs"].as_array().unwrap() {
                assert_eq!(o["shape_a"], o["shape_b"], "{}: {o}", case.display());
            }
        }
    }
}
