//! Data-driven rewrite tests: every `tests/cases/<rule>/*.onnxtxt` is rewritten by the standard
//! rule of that name. Three checks per case:
//! - structure: an insta snapshot of what fired, the near misses with their reasons, and the
//!   rewritten graph in ONNX text;
//! - numerics: onnxruntime gives bit-identical outputs for the original and the rewritten model
//!   (these rules are exact);
//! - near misses: a case named `near_miss_*` must not fire, and must report why.
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
