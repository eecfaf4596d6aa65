//! Loading and checking: follows `use` imports, then checks every rule and pipeline (names,
//! arities, types) before any model is touched. The result is a [`Program`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ast::*;
use super::builtins::{self, Ty};
use super::error::{did_you_mean, DslError, Problem, ProblemKind};
use super::onnx_ops::{self, EMIT_OPSET, MANY};
use super::parse::parse_named;
use super::{SourceFile, Sources, STD_HCP, STD_NAME};

/// At most this many problems are reported at once.
const MAX_PROBLEMS: usize = 30;

/// Checked rules and pipelines, from one root file and everything it imports.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// The loaded files; spans index into this.
    pub sources: Sources,
    /// Every rule of every loaded file (imported files first), names unique.
    pub rules: Vec<Rule>,
    /// Every pipeline of every loaded file (imported files first), names unique.
    pub pipelines: Vec<Pipeline>,
}

impl Program {
    /// The rule with this name.
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name.name == name)
    }

    /// The pipeline with this name.
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name.name == name)
    }
}

/// Loads and checks a `.hcp` file and its imports (`use` paths are relative to the importing
/// file; `"std.hcp"` falls back to the built-in standard library).
pub fn load(path: &Path) -> Result<Program, DslError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem::nowhere(
            ProblemKind::Use,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let mut loader = Loader::default();
    let key = Key::Path(canonical(path));
    loader.load(
        key,
        path.display().to_string(),
        Some(path.to_path_buf()),
        text,
    );
    loader.finish()
}

/// Loads and checks `.hcp` source text; `origin` names it in diagnostics, and its folder is where
/// `use` paths are looked up.
pub fn load_str(src: &str, origin: &str) -> Result<Program, DslError> {
    let mut loader = Loader::default();
    let path = PathBuf::from(origin);
    loader.load(
        Key::Named(origin.to_string()),
        origin.to_string(),
        Some(path),
        src.to_string(),
    );
    loader.finish()
}

/// The built-in standard library (`passes/std.hcp`, compiled in), checked.
pub fn builtin_std() -> Result<Program, DslError> {
    let mut loader = Loader::default();
    loader.load(
        Key::Builtin,
        STD_NAME.to_string(),
        None,
        STD_HCP.to_string(),
    );
    loader.finish()
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Path(PathBuf),
    Named(String),
    Builtin,
}

#[derive(Default)]
struct Loader {
    sources: Sources,
    modules: Vec<Module>,
    loaded: HashMap<Key, u32>,
    /// Files being loaded (for cycle detection): key and display name.
    stack: Vec<(Key, String)>,
    problems: Vec<Problem>,
}

impl Loader {
    fn load(&mut self, key: Key, name: String, path: Option<PathBuf>, text: String) {
        let file = self.sources.add(SourceFile {
            name: name.clone(),
            path: path.clone(),
            text: Arc::from(text.as_str()),
        });
        self.loaded.insert(key.clone(), file);
        let module = match parse_named(&text, file, &name) {
            Ok(m) => m,
            Err(e) => {
                self.problems.extend(e.problems().cloned());
                return;
            }
        };
        self.stack.push((key, name.clone()));
        for u in &module.uses {
            self.follow(u, &name, path.as_deref());
        }
        self.stack.pop();
        self.modules.push(module);
    }

    fn follow(&mut self, u: &Use, importer_name: &str, importer: Option<&Path>) {
        let dir = importer.and_then(Path::parent).unwrap_or(Path::new(""));
        let candidate = dir.join(&u.path);
        let display = Path::new(importer_name)
            .parent()
            .unwrap_or(Path::new(""))
            .join(&u.path)
            .display()
            .to_string();
        let (key, name, path, text) = if importer.is_some() && candidate.is_file() {
            match std::fs::read_to_string(&candidate) {
                Ok(t) => (
                    Key::Path(canonical(&candidate)),
                    display,
                    Some(candidate),
                    t,
                ),
                Err(e) => {
                    self.problems.push(
                        Problem::new(
                            ProblemKind::Use,
                            &self.sources,
                            u.span,
                            format!("cannot read `{}`: {e}", u.path),
                            "imported here",
                        )
                        .with_help(format!("looked at {}", candidate.display())),
                    );
                    return;
                }
            }
        } else if u.path == "std.hcp" {
            (
                Key::Builtin,
                STD_NAME.to_string(),
                None,
                STD_HCP.to_string(),
            )
        } else {
            self.problems.push(
                Problem::new(
                    ProblemKind::Use,
                    &self.sources,
                    u.span,
                    format!("cannot find `{}`", u.path),
                    "no such file",
                )
                .with_help(format!(
                    "`use` paths are relative to the importing file; looked at {}",
                    candidate.display()
                )),
            );
            return;
        };
        if let Some(i) = self.stack.iter().position(|(k, _)| *k == key) {
            let short = |n: &str| -> String {
                Path::new(n)
                    .file_name()
                    .map_or_else(|| n.to_string(), |f| f.to_string_lossy().into_owned())
            };
            let mut chain: Vec<String> = self.stack[i..].iter().map(|(_, n)| short(n)).collect();
            chain.push(short(&name));
            self.problems.push(
                Problem::new(
                    ProblemKind::Use,
                    &self.sources,
                    u.span,
                    format!("`use` cycle: {}", chain.join(" → ")),
                    "imports a file that imports this one",
                )
                .with_help("move the shared rules into a file both can import"),
            );
            return;
        }
        if self.loaded.contains_key(&key) {
            return;
        }
        self.load(key, name, path, text);
    }

    fn finish(self) -> Result<Program, DslError> {
        let Loader {
            sources,
            modules,
            mut problems,
            ..
        } = self;
        let mut program = Program {
            sources,
            rules: Vec::new(),
            pipelines: Vec::new(),
        };
        for m in modules {
            program.rules.extend(m.rules);
            program.pipelines.extend(m.pipelines);
        }
        // Parse and `use` problems first: checking half-loaded programs would only add noise.
        if problems.is_empty() {
            let mut c = Checker {
                program: &program,
                problems: Vec::new(),
            };
            c.check();
            problems = c.problems;
        }
        problems.sort_by_key(|p| p.span().map(|s| (s.file, s.start, s.end)));
        problems.truncate(MAX_PROBLEMS);
        match DslError::from_problems(problems) {
            Some(e) => Err(e),
            None => Ok(program),
        }
    }
}

// ------------------------------------------------------------------------------------ checker

struct Checker<'p> {
    program: &'p Program,
    problems: Vec<Problem>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BindKind {
    Param,
    /// A matched output (`y`, `ys`, or the constant of a `W: const` pattern): an emit target.
    Output,
    Operand,
    Shape,
    Attr,
    Let,
}

impl BindKind {
    fn noun(self) -> &'static str {
        match self {
            BindKind::Param => "a parameter",
            BindKind::Output => "a matched output",
            BindKind::Operand => "a matched operand",
            BindKind::Shape => "a shape symbol",
            BindKind::Attr => "a matched attribute",
            BindKind::Let => "a `let` name",
        }
    }
}

#[derive(Clone, Debug)]
struct Binding {
    ty: Ty,
    span: Span,
    kind: BindKind,
}

/// Where an expression is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// Inside a rule body.
    Rule,
    /// A parameter default or a pipeline argument: no names.
    Constant,
}

struct Scope {
    names: HashMap<String, Binding>,
    /// Every `let` name of the rule, for "used before its `let`".
    later_lets: HashMap<String, Span>,
    /// Output names of a variadic pattern (`ys...`).
    variadic_outputs: Vec<String>,
    ctx: Ctx,
}

impl Scope {
    fn constant() -> Scope {
        Scope {
            names: HashMap::new(),
            later_lets: HashMap::new(),
            variadic_outputs: Vec::new(),
            ctx: Ctx::Constant,
        }
    }
}

const VALUE_OR_NONE: Ty = Ty::OneOf(&[Ty::Value, Ty::None]);
const CONST_OR_NONE: Ty = Ty::OneOf(&[Ty::Const, Ty::None]);
const LIST_OF_VALUES: Ty = Ty::List(&Ty::Value);

impl<'p> Checker<'p> {
    fn err(&mut self, kind: ProblemKind, span: Span, message: String, label: &str) -> &mut Problem {
        self.problems.push(Problem::new(
            kind,
            &self.program.sources,
            span,
            message,
            label,
        ));
        let last = self.problems.len() - 1;
        &mut self.problems[last]
    }

    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn problem(&self, kind: ProblemKind, span: Span, message: String, label: &str) -> Problem {
        Problem::new(kind, &self.program.sources, span, message, label)
    }

    fn check(&mut self) {
        let program = self.program;
        // Duplicate names.
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for r in &program.rules {
            if let Some(first) = seen.get(r.name.name.as_str()).copied() {
                self.duplicate("rule", &r.name, first);
            } else {
                seen.insert(&r.name.name, r.name.span);
            }
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for p in &program.pipelines {
            if let Some(first) = seen.get(p.name.name.as_str()).copied() {
                self.duplicate("pipeline", &p.name, first);
            } else {
                seen.insert(&p.name.name, p.name.span);
            }
        }
        for r in &program.rules {
            self.rule(r);
        }
        for p in &program.pipelines {
            self.steps(&p.steps);
        }
    }

    fn duplicate(&mut self, what: &str, name: &Ident, first: Span) {
        let loc = self.program.sources.locate(first);
        let p = self
            .problem(
                ProblemKind::Duplicate,
                name.span,
                format!("{what} `{name}` is defined twice"),
                "second definition",
            )
            .with_note(first, "first definition")
            .with_help(format!(
                "the first `{name}` is at {loc}; rename one of them"
            ));
        self.push(p);
    }

    // -------------------------------------------------------------------------------- rules

    fn rule(&mut self, r: &'p Rule) {
        let mut scope = Scope {
            names: HashMap::new(),
            later_lets: HashMap::new(),
            variadic_outputs: Vec::new(),
            ctx: Ctx::Rule,
        };
        for p in &r.params {
            if let Some(d) = &p.default {
                let mut cs = Scope::constant();
                self.expr(d, &mut cs, false);
            }
            self.bind(&mut scope, &p.name, Ty::Any, BindKind::Param);
        }
        for c in &r.clauses {
            if let Clause::Let { names, .. } = c {
                for n in names {
                    scope.later_lets.entry(n.name.clone()).or_insert(n.span);
                }
            }
        }
        self.pattern(&r.pattern, &mut scope);

        let mut emitted: HashMap<String, Span> = HashMap::new();
        for c in &r.clauses {
            match c {
                Clause::Where(e) | Clause::Require(e) => {
                    let ty = self.expr(e, &mut scope, false);
                    if !Ty::Bool.accepts(&ty) {
                        let which = if matches!(c, Clause::Where(_)) {
                            "where"
                        } else {
                            "require"
                        };
                        let msg = format!("`{which}` needs a condition, found {}", ty.describe());
                        self.err(ProblemKind::Type, e.span, msg, "not a condition")
                            .set_help("compare it, e.g. `numel(W) > 4096`");
                    }
                }
                Clause::Let { names, value, .. } => {
                    let ty = self.expr(value, &mut scope, false);
                    if names.len() == 1 {
                        self.bind(&mut scope, &names[0], ty, BindKind::Let);
                    } else {
                        let parts: Vec<Ty> = match ty {
                            Ty::Tuple(ts) if ts.len() == names.len() => ts.to_vec(),
                            Ty::List(e) => vec![*e; names.len()],
                            Ty::Any => vec![Ty::Any; names.len()],
                            other => {
                                let msg = format!(
                                    "`let` with {} names needs a tuple of {} values, found {}",
                                    names.len(),
                                    names.len(),
                                    other.describe()
                                );
                                self.err(
                                    ProblemKind::Type,
                                    value.span,
                                    msg,
                                    "not a matching tuple",
                                );
                                vec![Ty::Any; names.len()]
                            }
                        };
                        for (n, t) in names.iter().zip(parts) {
                            self.bind(&mut scope, n, t, BindKind::Let);
                        }
                    }
                }
                Clause::Emit { targets, value, .. } => {
                    self.emit(targets, value, &mut scope, &mut emitted)
                }
            }
        }
        if emitted.is_empty() && !r.clauses.iter().any(|c| matches!(c, Clause::Emit { .. })) {
            let msg = format!("rule `{}` emits nothing", r.name);
            self.err(ProblemKind::Syntax, r.name.span, msg, "no `emit` clause")
                .set_help("a rule replaces what it matches: add `emit <output> = <expression>`");
        }
    }

    fn bind(&mut self, scope: &mut Scope, name: &Ident, ty: Ty, kind: BindKind) {
        if let Some(first) = scope.names.get(&name.name) {
            let repeatable = first.kind == kind && matches!(kind, BindKind::Shape | BindKind::Attr);
            if !repeatable {
                let msg = format!("`{name}` is bound twice");
                let (fspan, fkind) = (first.span, first.kind);
                let p = self
                    .problem(ProblemKind::Duplicate, name.span, msg, "bound again here")
                    .with_note(fspan, format!("first bound here, as {}", fkind.noun()))
                    .with_help(match (fkind, kind) {
                        (BindKind::Operand, BindKind::Operand) => {
                            "give each operand its own name (compare them in `where` if they must be the same value)"
                        }
                        _ => "use a different name",
                    });
                self.push(p);
            }
            return;
        }
        scope.names.insert(
            name.name.clone(),
            Binding {
                ty,
                span: name.span,
                kind,
            },
        );
    }

    fn pattern(&mut self, p: &'p Pattern, scope: &mut Scope) {
        match p {
            Pattern::Const { name, ty, .. } => {
                self.bind(scope, name, Ty::Const, BindKind::Output);
                if !ty.is_const {
                    let msg = format!("`match {name}: ...` matches stored constants only");
                    let help = format!(
                        "write `match {name}: const {}`; to match an operation write `y = Op(...)`",
                        self.program.sources.text(ty.span)
                    );
                    self.err(ProblemKind::Type, ty.span, msg, "add `const`")
                        .set_help(help);
                }
                self.type_pat(ty, scope);
            }
            Pattern::Op { outputs, op, .. } => {
                let n_out = match outputs {
                    Outputs::Fixed(names) => {
                        for n in names {
                            self.bind(scope, n, Ty::Value, BindKind::Output);
                        }
                        Some(names.len())
                    }
                    Outputs::Variadic(n) => {
                        self.bind(scope, n, LIST_OF_VALUES, BindKind::Output);
                        scope.variadic_outputs.push(n.name.clone());
                        None
                    }
                };
                if let (Some(n), Some(info)) = (n_out, self.known_op(&op.op, false)) {
                    if n as u32 > info.outputs.1 {
                        let msg = format!(
                            "`{}` has at most {} output{}, the pattern names {n}",
                            op.op,
                            info.outputs.1,
                            plural(info.outputs.1)
                        );
                        self.err(
                            ProblemKind::Arity,
                            outputs_span(outputs),
                            msg,
                            "too many outputs",
                        );
                    }
                }
                self.op_pat(op, scope);
            }
        }
    }

    /// The ai.onnx schema of `op`, reporting unknown names; `None` for domain-qualified ops and
    /// unknown ones.
    fn known_op(&mut self, op: &Ident, emitted: bool) -> Option<&'static onnx_ops::OnnxOp> {
        if op.name.contains('.') {
            return None;
        }
        match onnx_ops::lookup(&op.name) {
            Some(info) if emitted && info.since > EMIT_OPSET => {
                let msg = format!(
                    "`{op}` is not in ONNX opset {EMIT_OPSET} (it arrived in opset {})",
                    info.since
                );
                self.err(ProblemKind::Name, op.span, msg, "cannot be emitted")
                    .set_help(format!(
                        "hcc writes opset {EMIT_OPSET} models; emit older operations, or a \
                         domain-qualified one (`com.microsoft.{op}`)"
                    ));
                None
            }
            Some(info) => Some(info),
            None => {
                let msg = format!("unknown ONNX operation `{op}`");
                let names = onnx_ops::OPS.iter().map(|o| o.name);
                let help = match did_you_mean(&op.name, names) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None if op.name.starts_with(|c: char| c.is_ascii_uppercase()) => {
                        "names starting with an upper-case letter are ai.onnx operations; \
                         qualify other domains (`com.microsoft.Attention`)"
                            .to_string()
                    }
                    None => "qualify operations of other domains (`com.microsoft.Attention`)"
                        .to_string(),
                };
                self.err(ProblemKind::Name, op.span, msg, "not an ai.onnx operation")
                    .set_help(help);
                None
            }
        }
    }

    fn op_pat(&mut self, op: &OpPattern, scope: &mut Scope) {
        let info = self.known_op(&op.op, false);
        let mut attr_names: HashMap<&str, Span> = HashMap::new();
        for a in &op.attrs {
            if let Some(first) = attr_names.insert(&a.name.name, a.name.span) {
                let p = self
                    .problem(
                        ProblemKind::Duplicate,
                        a.name.span,
                        format!("attribute `{}` is matched twice", a.name),
                        "again here",
                    )
                    .with_note(first, "first here");
                self.push(p);
            }
            if let AttrPatternValue::Bind(b) = &a.value {
                self.bind(scope, b, Ty::Attr, BindKind::Attr);
            }
        }
        let last = op.operands.len().saturating_sub(1);
        let mut has_variadic = false;
        for (i, o) in op.operands.iter().enumerate() {
            match o {
                Operand::Op(inner) => self.op_pat(inner, scope),
                Operand::Value {
                    name,
                    ty,
                    optional,
                    variadic,
                    span,
                } => {
                    if *variadic {
                        has_variadic = true;
                        if i != last {
                            let msg = "only the last operand can be variadic (`xs...`)".to_string();
                            self.err(ProblemKind::Syntax, *span, msg, "not last")
                                .set_help("`xs...` collects the remaining inputs as a list");
                        }
                    }
                    let is_const = ty.as_ref().is_some_and(|t| t.is_const);
                    let t = match (is_const, *optional, *variadic) {
                        (true, _, true) => Ty::List(&Ty::Const),
                        (false, _, true) => LIST_OF_VALUES,
                        (true, true, false) => CONST_OR_NONE,
                        (false, true, false) => VALUE_OR_NONE,
                        (true, false, false) => Ty::Const,
                        (false, false, false) => Ty::Value,
                    };
                    if let Some(n) = name {
                        self.bind(scope, n, t, BindKind::Operand);
                    }
                    if let Some(tp) = ty {
                        self.type_pat(tp, scope);
                    }
                }
            }
        }
        if let Some(info) = info {
            let fixed = op.operands.len() - usize::from(has_variadic);
            let (min, max) = info.inputs;
            if max != MANY && fixed as u32 > max {
                let msg = format!(
                    "`{}` has at most {max} input{}, the pattern lists {fixed}",
                    op.op,
                    plural(max)
                );
                self.err(ProblemKind::Arity, op.span, msg, "too many operands");
            } else if !has_variadic && (fixed as u32) < min {
                let msg = format!(
                    "`{}` has at least {min} input{}, the pattern lists {fixed}",
                    op.op,
                    plural(min)
                );
                self.err(ProblemKind::Arity, op.span, msg, "too few operands")
                    .set_help("match an input you do not care about with `_`");
            }
        }
    }

    fn type_pat(&mut self, tp: &TypePattern, scope: &mut Scope) {
        if let Some(dims) = &tp.shape {
            for d in dims {
                if let DimPattern::Sym(s) = d {
                    self.bind(scope, s, Ty::Int, BindKind::Shape);
                }
            }
        }
    }

    fn emit(
        &mut self,
        targets: &[Ident],
        value: &Expr,
        scope: &mut Scope,
        emitted: &mut HashMap<String, Span>,
    ) {
        for t in targets {
            match scope.names.get(&t.name) {
                Some(b) if b.kind == BindKind::Output => {}
                other => {
                    let detail = match other {
                        Some(b) => format!("`{t}` is {}, not a matched output", b.kind.noun()),
                        None => format!("`{t}` is not a matched output"),
                    };
                    let outputs = outputs_of(scope);
                    let help = if outputs.is_empty() {
                        "emit targets are the values the `match` defines".to_string()
                    } else {
                        format!(
                            "emit targets are the values the `match` defines: {}",
                            outputs.join(", ")
                        )
                    };
                    self.err(ProblemKind::Name, t.span, detail, "cannot emit this")
                        .set_help(help);
                    continue;
                }
            }
            if let Some(first) = emitted.get(&t.name).copied() {
                let p = self
                    .problem(
                        ProblemKind::Duplicate,
                        t.span,
                        format!("`{t}` is emitted twice"),
                        "second definition",
                    )
                    .with_note(first, "first emitted here")
                    .with_help("each matched output gets one new definition");
                self.push(p);
            } else {
                emitted.insert(t.name.clone(), t.span);
            }
        }
        let ty = self.expr(value, scope, true);
        let multi_op = match &value.kind {
            ExprKind::Op { op, .. } => {
                op.name.contains('.') || onnx_ops::lookup(&op.name).is_some_and(|i| i.outputs.1 > 1)
            }
            _ => false,
        };
        let ok = if targets.len() == 1 {
            if scope.variadic_outputs.contains(&targets[0].name) {
                LIST_OF_VALUES.accepts(&ty) || multi_op
            } else {
                Ty::Value.accepts(&ty)
            }
        } else {
            match ty {
                Ty::Tuple(ts) => {
                    ts.len() == targets.len() && ts.iter().all(|t| Ty::Value.accepts(t))
                }
                _ => LIST_OF_VALUES.accepts(&ty) || multi_op,
            }
        };
        if !ok {
            let want = if targets.len() > 1 {
                format!("{} graph values", targets.len())
            } else if scope.variadic_outputs.contains(&targets[0].name) {
                "a list of graph values".to_string()
            } else {
                "a graph value".to_string()
            };
            let msg = format!("`emit` needs {want}, found {}", ty.describe());
            self.err(ProblemKind::Type, value.span, msg, "cannot be emitted")
                .set_help(
                    "emit an operation (`MatMul(x, A)`), a constant from a kernel \
                     (`transpose(W)`), or a matched value",
                );
        }
    }

    // -------------------------------------------------------------------------------- expressions

    /// The type of `e`; `graph` is true where the expression builds the replacement graph (an
    /// emitted value or an operation's input).
    fn expr(&mut self, e: &Expr, scope: &mut Scope, graph: bool) -> Ty {
        match &e.kind {
            ExprKind::Lit(l) => match l {
                Literal::Int(_) => Ty::Int,
                Literal::Float(_) => Ty::Float,
                Literal::Str(_) => Ty::Str,
                Literal::Bool(_) => Ty::Bool,
                Literal::Ints(_) => Ty::List(&Ty::Int),
            },
            ExprKind::Plan => Ty::RankSpec,
            ExprKind::None => Ty::None,
            ExprKind::Name(n) => self.name(n, scope, graph),
            ExprKind::List(items) => {
                let tys: Vec<Ty> = items.iter().map(|i| self.expr(i, scope, false)).collect();
                list_type(&tys).unwrap_or_else(|| {
                    let found: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
                    let msg = format!(
                        "a list's elements must have one type, found {}",
                        found.join(", ")
                    );
                    self.err(ProblemKind::Type, e.span, msg, "mixed list");
                    Ty::List(&Ty::Any)
                })
            }
            ExprKind::Unary(op, inner) => {
                let t = self.expr(inner, scope, false);
                match op {
                    UnaryOp::Neg if Ty::Float.accepts(&t) => {
                        if t == Ty::Int {
                            Ty::Int
                        } else if matches!(t, Ty::Any | Ty::Attr) {
                            Ty::Any
                        } else {
                            Ty::Float
                        }
                    }
                    UnaryOp::Not if Ty::Bool.accepts(&t) => Ty::Bool,
                    _ => {
                        let (sym, want) = match op {
                            UnaryOp::Neg => ("-", "a number"),
                            UnaryOp::Not => ("!", "a condition"),
                        };
                        let msg = format!("`{sym}` needs {want}, found {}", t.describe());
                        self.err(ProblemKind::Type, inner.span, msg, "wrong type");
                        Ty::Any
                    }
                }
            }
            ExprKind::Binary(op, l, r) => {
                let lt = self.expr(l, scope, false);
                let rt = self.expr(r, scope, false);
                self.binary(*op, e, (l, lt), (r, rt))
            }
            ExprKind::Call { func, args } => self.call(e, func, args, scope),
            ExprKind::Op { op, attrs, args } => {
                self.op_expr(e, op, attrs, args, scope);
                Ty::Value
            }
        }
    }

    fn name(&mut self, n: &Ident, scope: &mut Scope, graph: bool) -> Ty {
        if let Some(b) = scope.names.get(&n.name) {
            if graph && b.kind == BindKind::Output {
                let msg = format!("`{n}` is the value this rule replaces");
                self.err(ProblemKind::Type, n.span, msg, "replaced by this rule")
                    .set_help(
                        "the replacement cannot read the value it replaces; use the matched \
                         operands instead",
                    );
            }
            return b.ty;
        }
        if scope.ctx == Ctx::Constant {
            let msg = format!("`{n}` is not a constant");
            self.err(ProblemKind::Name, n.span, msg, "a name here")
                .set_help(
                    "parameter defaults and pipeline arguments are literals, lists, `plan`, \
                     `none` or calls such as `energy(0.95)`",
                );
            return Ty::Any;
        }
        if let Some(at) = scope.later_lets.get(&n.name).copied() {
            let p = self
                .problem(
                    ProblemKind::Name,
                    n.span,
                    format!("`{n}` is used before its `let`"),
                    "not defined yet",
                )
                .with_note(at, "defined here, later")
                .with_help("clauses run in order: move the `let` above this clause");
            self.push(p);
            return Ty::Any;
        }
        let candidates: Vec<&str> = scope.names.keys().map(String::as_str).collect();
        let help = match did_you_mean(&n.name, candidates.iter().copied()) {
            Some(m) => format!("did you mean `{m}`?"),
            None => {
                let mut known: Vec<&str> = candidates;
                known.sort_unstable();
                if known.is_empty() {
                    "names are bound by the `match` pattern, `let` clauses and the rule's \
                     parameters"
                        .to_string()
                } else {
                    format!("names bound here: {}", known.join(", "))
                }
            }
        };
        let msg = format!("unknown name `{n}`");
        self.err(ProblemKind::Name, n.span, msg, "not bound")
            .set_help(help);
        Ty::Any
    }

    fn binary(&mut self, op: BinaryOp, e: &Expr, l: (&Expr, Ty), r: (&Expr, Ty)) -> Ty {
        use BinaryOp::*;
        let (lt, rt) = (l.1, r.1);
        let sym = match op {
            Or => "||",
            And => "&&",
            Eq => "==",
            Ne => "!=",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Rem => "%",
        };
        match op {
            Or | And => {
                for (side, t) in [l, r] {
                    if !Ty::Bool.accepts(&t) {
                        let msg = format!("`{sym}` needs conditions, found {}", t.describe());
                        self.err(ProblemKind::Type, side.span, msg, "not a condition");
                    }
                }
                Ty::Bool
            }
            Eq | Ne => {
                let numeric = Ty::Float.accepts(&lt) && Ty::Float.accepts(&rt);
                if !(numeric || lt.accepts(&rt) || rt.accepts(&lt)) {
                    let msg = format!("cannot compare {} with {}", lt.describe(), rt.describe());
                    self.err(ProblemKind::Type, e.span, msg, "different types");
                }
                Ty::Bool
            }
            Lt | Le | Gt | Ge | Add | Sub | Mul | Div | Rem => {
                for (side, t) in [l, r] {
                    if !Ty::Float.accepts(&t) {
                        let mut msg = format!("`{sym}` needs numbers, found {}", t.describe());
                        let help = if t.is_graph_value() {
                            msg = format!("`{sym}` needs numbers, found {}", t.describe());
                            Some("measure a value with `numel(x)`, `dim(x, 0)` or `rank(x)`")
                        } else {
                            None
                        };
                        let p = self.err(ProblemKind::Type, side.span, msg, "not a number");
                        if let Some(h) = help {
                            p.set_help(h);
                        }
                    }
                }
                if matches!(op, Lt | Le | Gt | Ge) {
                    Ty::Bool
                } else if lt == Ty::Int && rt == Ty::Int {
                    Ty::Int
                } else if matches!(lt, Ty::Any | Ty::Attr) || matches!(rt, Ty::Any | Ty::Attr) {
                    Ty::Any
                } else {
                    Ty::Float
                }
            }
        }
    }

    fn call(&mut self, e: &Expr, func: &Ident, args: &[Arg], scope: &mut Scope) -> Ty {
        let Some(b) = builtins::lookup(&func.name) else {
            let msg = format!("unknown function `{func}`");
            let help = if self.program.rule(&func.name).is_some() {
                format!("`{func}` is a rule: rules run from pipelines (`run {func}`), not from expressions")
            } else {
                match did_you_mean(&func.name, builtins::BUILTINS.iter().map(|b| b.name)) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => {
                        let names: Vec<&str> = builtins::BUILTINS.iter().map(|b| b.name).collect();
                        format!("functions: {}", names.join(", "))
                    }
                }
            };
            self.err(ProblemKind::Name, func.span, msg, "not a function")
                .set_help(help);
            for a in args {
                self.expr(&a.value, scope, false);
            }
            return Ty::Any;
        };
        let params: Vec<(&str, bool)> = b
            .params
            .iter()
            .map(|p| (p.name, p.default.is_some()))
            .collect();
        let what = format!("`{}`", b.name);
        let bound = self.bind_args(&what, &params, args, e.span, &b.signature());
        for (i, a) in bound.iter().enumerate() {
            let Some(a) = a else { continue };
            let t = self.expr(a, scope, false);
            let param = &b.params[i];
            if !param.ty.accepts(&t) {
                let msg = format!(
                    "argument `{}` of `{}` must be {}, found {}",
                    param.name,
                    b.name,
                    param.ty.describe(),
                    t.describe()
                );
                let help = if param.ty.accepts(&Ty::Const) && t.is_graph_value() {
                    "kernels compute from stored constants: match it as one (`W: const`)"
                        .to_string()
                } else {
                    format!("`{}`", b.signature())
                };
                self.err(ProblemKind::Type, a.span, msg, "wrong type")
                    .set_help(help);
            }
        }
        // Type-check arguments that failed to bind too, for their own errors.
        for a in args {
            if !bound
                .iter()
                .any(|b| b.is_some_and(|x| std::ptr::eq(x, &a.value)))
            {
                self.expr(&a.value, scope, false);
            }
        }
        b.ret
    }

    fn op_expr(
        &mut self,
        e: &Expr,
        op: &Ident,
        attrs: &[(Ident, Expr)],
        args: &[Expr],
        scope: &mut Scope,
    ) {
        let info = self.known_op(op, true);
        if let Some(info) = info {
            let (min, max) = info.inputs;
            let n = args.len() as u32;
            if n < min || (max != MANY && n > max) {
                let range = if max == MANY {
                    format!("at least {min}")
                } else if min == max {
                    format!("{min}")
                } else {
                    format!("{min} to {max}")
                };
                let msg = format!(
                    "`{op}` takes {range} input{}, found {n}",
                    plural(if max == MANY { min } else { max })
                );
                self.err(ProblemKind::Arity, e.span, msg, "wrong number of inputs")
                    .set_help("pass `none` for an absent optional input");
            }
        }
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for (name, value) in attrs {
            if let Some(first) = seen.insert(&name.name, name.span) {
                let p = self
                    .problem(
                        ProblemKind::Duplicate,
                        name.span,
                        format!("attribute `{name}` is given twice"),
                        "again here",
                    )
                    .with_note(first, "first here");
                self.push(p);
            }
            let t = self.expr(value, scope, false);
            if !Ty::Attr.accepts(&t) {
                let msg = format!(
                    "attribute `{name}` must be a literal value, found {}",
                    t.describe()
                );
                self.err(ProblemKind::Type, value.span, msg, "not an attribute value")
                    .set_help(
                        "attributes are numbers, strings, lists of numbers, or attributes \
                         matched by the pattern (`perm = p`)",
                    );
            }
        }
        for (i, a) in args.iter().enumerate() {
            let t = self.expr(a, scope, true);
            if !VALUE_OR_NONE.accepts(&t) {
                let msg = format!(
                    "input {} of `{op}` must be a graph value, found {}",
                    i + 1,
                    t.describe()
                );
                self.err(ProblemKind::Type, a.span, msg, "not a graph value")
                    .set_help(
                        "operation inputs are matched values, `let` constants from kernels, \
                         nested operations, or `none` for an absent optional input",
                    );
            }
        }
    }

    /// Matches arguments to parameters: for each parameter, the expression given for it (`None`
    /// when left to its default, or missing, which is reported).
    fn bind_args<'a>(
        &mut self,
        what: &str,
        params: &[(&str, bool)],
        args: &'a [Arg],
        call_span: Span,
        signature: &str,
    ) -> Vec<Option<&'a Expr>> {
        let mut bound: Vec<Option<&'a Expr>> = vec![None; params.len()];
        let mut seen_named = false;
        let mut pos = 0;
        for a in args {
            match &a.name {
                None => {
                    if seen_named {
                        let msg = "a positional argument after a named one".to_string();
                        self.err(ProblemKind::Syntax, a.value.span, msg, "positional")
                            .set_help("put positional arguments first");
                        continue;
                    }
                    if pos >= params.len() {
                        let msg = format!(
                            "{what} takes {} argument{}, found {}",
                            params.len(),
                            plural(params.len() as u32),
                            args.len()
                        );
                        self.err(ProblemKind::Arity, a.value.span, msg, "one too many")
                            .set_help(signature.to_string());
                        break;
                    }
                    bound[pos] = Some(&a.value);
                    pos += 1;
                }
                Some(n) => {
                    seen_named = true;
                    match params.iter().position(|(p, _)| *p == n.name) {
                        Some(i) if bound[i].is_some() => {
                            let msg = format!("argument `{n}` is given twice");
                            self.err(ProblemKind::Duplicate, n.span, msg, "again here");
                        }
                        Some(i) => bound[i] = Some(&a.value),
                        None => {
                            let msg = format!("{what} has no parameter `{n}`");
                            let help = match did_you_mean(&n.name, params.iter().map(|p| p.0)) {
                                Some(m) => format!("did you mean `{m}`?"),
                                None => signature.to_string(),
                            };
                            self.err(ProblemKind::Name, n.span, msg, "unknown parameter")
                                .set_help(help);
                        }
                    }
                }
            }
        }
        let missing: Vec<&str> = params
            .iter()
            .zip(&bound)
            .filter(|((_, has_default), b)| !has_default && b.is_none())
            .map(|((p, _), _)| *p)
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
            let msg = format!("{what} needs {}", join_and(&names));
            self.err(ProblemKind::Arity, call_span, msg, "missing arguments")
                .set_help(signature.to_string());
        }
        bound
    }

    // -------------------------------------------------------------------------------- pipelines

    fn steps(&mut self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Repeat { steps, .. } => self.steps(steps),
                Step::Run { rule, args, span } => {
                    let Some(r) = self.program.rule(&rule.name) else {
                        let msg = format!("unknown rule `{rule}`");
                        let help = if self.program.pipeline(&rule.name).is_some() {
                            format!("`{rule}` is a pipeline; `run` takes a rule")
                        } else {
                            match did_you_mean(
                                &rule.name,
                                self.program.rules.iter().map(|r| r.name.name.as_str()),
                            ) {
                                Some(m) => format!("did you mean `{m}`?"),
                                None => "rules come from this file and the files it `use`s \
                                         (`use \"std.hcp\"`)"
                                    .to_string(),
                            }
                        };
                        self.err(ProblemKind::Name, rule.span, msg, "no such rule")
                            .set_help(help);
                        continue;
                    };
                    let params: Vec<(&str, bool)> = r
                        .params
                        .iter()
                        .map(|p| (p.name.name.as_str(), p.default.is_some()))
                        .collect();
                    let sig = rule_signature(r);
                    let what = format!("rule `{}`", r.name);
                    self.bind_args(&what, &params, args, *span, &sig);
                    for a in args {
                        let mut cs = Scope::constant();
                        self.expr(&a.value, &mut cs, false);
                    }
                }
            }
        }
    }
}

fn rule_signature(r: &Rule) -> String {
    let params: Vec<String> = r
        .params
        .iter()
        .map(|p| match &p.default {
            Some(_) => format!("{} = ...", p.name),
            None => p.name.name.clone(),
        })
        .collect();
    format!("rule {}({})", r.name, params.join(", "))
}

fn outputs_of(scope: &Scope) -> Vec<String> {
    let mut v: Vec<String> = scope
        .names
        .iter()
        .filter(|(_, b)| b.kind == BindKind::Output)
        .map(|(n, _)| format!("`{n}`"))
        .collect();
    v.sort();
    v
}

fn outputs_span(o: &Outputs) -> Span {
    match o {
        Outputs::Variadic(n) => n.span,
        Outputs::Fixed(names) => match (names.first(), names.last()) {
            (Some(a), Some(b)) => Span {
                file: a.span.file,
                start: a.span.start,
                end: b.span.end,
            },
            _ => Span::default(),
        },
    }
}

fn list_type(tys: &[Ty]) -> Option<Ty> {
    if tys.is_empty() || tys.contains(&Ty::Any) {
        return Some(Ty::List(&Ty::Any));
    }
    let all = |t: Ty| tys.iter().all(|x| t.accepts(x) && *x != Ty::Attr);
    Some(if all(Ty::Int) {
        Ty::List(&Ty::Int)
    } else if all(Ty::Float) {
        Ty::List(&Ty::Float)
    } else if all(Ty::Str) {
        Ty::List(&Ty::Str)
    } else if all(Ty::Const) {
        Ty::List(&Ty::Const)
    } else if all(Ty::Value) {
        Ty::List(&Ty::Value)
    } else if tys
        .iter()
        .all(|t| matches!(t, Ty::Attr | Ty::Int | Ty::Float))
    {
        Ty::List(&Ty::Any)
    } else {
        return None;
    })
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(src: &str) -> Vec<String> {
        match load_str(src, "t.hcp") {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems()
                .map(|p| format!("{} ({})", p.message(), p.help_text().unwrap_or("")))
                .collect(),
        }
    }

    #[test]
    fn std_library_checks() {
        let p = builtin_std().unwrap_or_else(|e| panic!("{e:?}"));
        assert!(p.rule("dedupe").is_some());
        assert!(p.rule("fold_split").is_some());
    }

    #[test]
    fn good_rules_check() {
        let src = "rule f(rank, min_size = 65536) {\n\
                     match y = MatMul(x, W: const f32[K, N])\n\
                     where K * N >= min_size\n\
                     let (A, B) = lowrank(W, rank)\n\
                     emit y = MatMul(MatMul(x, A), B)\n\
                     require numel(A) + numel(B) < K * N\n\
                   }\n\
                   rule s { match ys... = Split<axis = a>(X: const, s: const?)\n\
                     emit ys = split(X, a, s, len(ys)) }\n\
                   rule t { match (a, b) = Dropout(x) emit (a, b) = Dropout(x) }\n\
                   pipeline p { budget ratio 4 run f(rank = plan) run f(energy(0.9), 10) }";
        assert_eq!(problems(src), Vec::<String>::new());
        assert!(
            problems("rule r { match y = Relu(x) emit y = x }\npipeline p { run r }").is_empty()
        );
    }

    #[test]
    fn checks() {
        let cases: &[(&str, &str)] = &[
            ("rule r { match y = Relu(x) emit z = x }", "`z` is not a matched output"),
            ("rule r { match y = Relu(x) where 1 emit y = x }", "`where` needs a condition"),
            ("rule r { match y = Relu(x) emit y = Relu(x, x) }", "`Relu` takes 1 input"),
            ("rule r { match y = Relu(x) emit y = Relu<alpha = x>(x) }", "attribute `alpha`"),
            ("rule r { match y = Relu(x) emit y = Relu(3) }", "input 1 of `Relu`"),
            ("rule r { match y = Relu(x) let a = numel(x) let a = 2 emit y = x }", "bound twice"),
            ("rule r { match ys... = Split(x) emit ys = x }", "a list of graph values"),
            ("rule r { match y = Relu(xs..., z) emit y = z }", "only the last operand"),
            ("rule r(k) { match y = Relu(k) emit y = k }", "bound twice"),
            ("rule r { match W: const emit W = stored(W) } pipeline p { run r(3) }", "takes 0"),
            ("rule r(k = x) { match W: const emit W = stored(W) }", "`x` is not a constant"),
            ("pipeline p { run q } pipeline q { run p }", "unknown rule `q`"),
            ("rule r { match W: [N, N] emit W = stored(W) }", "stored constants only"),
            ("rule r { match W: const emit W = dedupe(W) } rule dedupe { match W: const emit W = W }",
             "is a rule"),
            ("rule r { match y = Relu(x) where !numel(x) emit y = x }", "`!` needs a condition"),
            ("rule r { match y = Relu(x) where x > 1 emit y = x }", "`>` needs numbers"),
        ];
        for (src, want) in cases {
            let got = problems(src);
            assert!(
                got.iter().any(|m| m.contains(want)),
                "{src}\n  wanted: {want}\n  got: {got:?}"
            );
        }
    }
}

#[cfg(test)]
mod doc_example {
    /// The worked example of docs/PASS_LANGUAGE.md says what these report.
    #[test]
    fn worked_example_messages() {
        let src = "rule remove_identity {\n  match y = Identity(x)\n  where !is_ouput(y)\n  emit y = x\n}\n\
                   rule fold_cast {\n  match y = Cast<to = t>(W: const)\n  where uses(W) == 1\n  emit y = cast(W, t)\n}\n";
        let Err(e) = super::load_str(src, "mine.hcp") else {
            panic!("checked")
        };
        let got: Vec<(String, Option<String>)> = e
            .problems()
            .map(|p| (p.message().to_string(), p.help_text().map(str::to_string)))
            .collect();
        assert_eq!(got[0].0, "unknown function `is_ouput`");
        assert_eq!(got[0].1.as_deref(), Some("did you mean `is_output`?"));
        assert_eq!(got[1].0, "unknown function `cast`");
    }
}
