//! The pass language front end: diagnostics for malformed `.hcp` files (insta snapshots, one per
//! file under `tests/cases/dsl/`), the shipped `passes/*.hcp`, and the AST of a good file.

use std::path::{Path, PathBuf};

use hcc::dsl::ast::{
    BinaryOp, BudgetKind, Clause, DimPattern, ExprKind, Operand, Outputs, Pattern, Step,
};
use hcc::dsl::{builtin_std, load, load_str, parse_module, DslError, ProblemKind};

fn render(err: &DslError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap_or_else(|e| panic!("rendering failed: {e}"));
    out
}

fn hcp_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hcp"))
        .collect();
    files.sort();
    files
}

/// Every `tests/cases/dsl/*.hcp` is malformed; its rendered diagnostic is a snapshot
/// `dsl__diagnostic_<name>.snap`.
#[test]
fn diagnostics() {
    let files = hcp_files(Path::new("tests/cases/dsl"));
    assert!(files.len() >= 15, "only {} cases", files.len());
    for path in files {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let err = match load(&path) {
            Ok(_) => panic!("{} loaded without errors", path.display()),
            Err(e) => e,
        };
        let rendered = render(&err);
        insta::with_settings!({ prepend_module_to_snapshot => true, description => path.display().to_string(), omit_expression => true }, {
            insta::assert_snapshot!(format!("diagnostic_{name}"), rendered);
        });
    }
}

#[test]
fn shipped_passes_parse_and_check() {
    let files = hcp_files(Path::new("passes"));
    assert!(!files.is_empty(), "no passes/*.hcp");
    for path in files {
        if let Err(e) = load(&path) {
            panic!("{}:\n{}", path.display(), render(&e));
        }
    }
    let std = builtin_std().unwrap_or_else(|e| panic!("{}", render(&e)));
    for rule in ["dedupe", "retie", "fold_transpose", "fold_split"] {
        assert!(std.rule(rule).is_some(), "std.hcp lacks {rule}");
    }
}

#[test]
fn good_file_ast_shape() {
    let path = Path::new("tests/cases/dsl/good/example.hcp");
    let program = load(path).unwrap_or_else(|e| panic!("{}", render(&e)));
    // std.hcp (next to nothing here, so the built-in one) is loaded first.
    assert_eq!(program.sources.files().len(), 2);
    assert_eq!(program.sources.files()[1].name, "<built-in>/std.hcp");

    let r = program
        .rule("my_factorize")
        .unwrap_or_else(|| panic!("no my_factorize"));
    assert_eq!(r.params.len(), 2);
    assert_eq!(r.params[0].name.name, "rank");
    assert!(r.params[0].default.is_none());
    let Pattern::Op { outputs, op, .. } = &r.pattern else {
        panic!("{:?}", r.pattern)
    };
    assert!(matches!(outputs, Outputs::Fixed(n) if n.len() == 1 && n[0].name == "y"));
    assert_eq!(op.op.name, "MatMul");
    let Operand::Value {
        name: Some(w),
        ty: Some(ty),
        ..
    } = &op.operands[1]
    else {
        panic!("{:?}", op.operands[1])
    };
    assert_eq!(w.name, "W");
    assert!(ty.is_const);
    assert!(matches!(
        ty.shape.as_deref(),
        Some([DimPattern::Sym(k), DimPattern::Sym(n)]) if k.name == "K" && n.name == "N"
    ));
    let kinds: Vec<&str> = r
        .clauses
        .iter()
        .map(|c| match c {
            Clause::Where(_) => "where",
            Clause::Let { .. } => "let",
            Clause::Emit { .. } => "emit",
            Clause::Require(_) => "require",
        })
        .collect();
    assert_eq!(kinds, ["where", "let", "emit", "require"]);
    let Clause::Emit { targets, value, .. } = &r.clauses[2] else {
        panic!()
    };
    assert_eq!(targets[0].name, "y");
    let ExprKind::Op { op, args, .. } = &value.kind else {
        panic!("{value:?}")
    };
    assert_eq!(op.name, "MatMul");
    assert!(matches!(&args[0].kind, ExprKind::Op { op, .. } if op.name == "MatMul"));
    let Clause::Require(req) = &r.clauses[3] else {
        panic!()
    };
    assert!(matches!(req.kind, ExprKind::Binary(BinaryOp::Lt, _, _)));
    // Spans point into the file: the rule's name is where the text says.
    let loc = program.sources.locate(r.name.span);
    assert_eq!(
        (loc.file.as_str(), loc.line, loc.col),
        ("tests/cases/dsl/good/example.hcp", 4, 6)
    );

    let p = program
        .pipeline("compress")
        .unwrap_or_else(|| panic!("no pipeline"));
    assert_eq!(
        p.budget.as_ref().map(|b| b.kind),
        Some(BudgetKind::Bytes(1_500_000_000))
    );
    assert_eq!(p.steps.len(), 4);
    assert!(matches!(&p.steps[1], Step::Repeat { max: 8, steps, .. } if steps.len() == 2));
    let Step::Run { rule, args, .. } = &p.steps[2] else {
        panic!()
    };
    assert_eq!(rule.name, "my_factorize");
    assert_eq!(args[0].name.as_ref().map(|n| n.name.as_str()), Some("rank"));
    assert!(matches!(&args[0].value.kind, ExprKind::Call { func, .. } if func.name == "energy"));
}

#[test]
fn several_problems_are_reported_together() {
    let err = match load(Path::new("tests/cases/dsl/several_errors.hcp")) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };
    let kinds: Vec<ProblemKind> = err.problems().map(|p| p.kind()).collect();
    assert_eq!(
        kinds,
        [ProblemKind::Type, ProblemKind::Name, ProblemKind::Name]
    );
}

#[test]
fn load_str_and_parse_module() {
    let src = "rule r { match y = Identity(x) emit y = x }\npipeline p { run r }";
    let program = load_str(src, "inline.hcp").unwrap_or_else(|e| panic!("{}", render(&e)));
    assert!(program.rule("r").is_some() && program.pipeline("p").is_some());
    let module = parse_module(src, 7).unwrap_or_else(|e| panic!("{}", render(&e)));
    assert_eq!(module.rules[0].name.span.file, 7);
    // Parsing does not check names: that is the checker's job.
    assert!(parse_module("rule r { match y = Identity(x) emit y = z }", 0).is_ok());
}
