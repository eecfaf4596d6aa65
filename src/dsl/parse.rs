//! The parser: a pest grammar (`grammar/hcp.pest`) and a walker from its tree to the typed AST.
//! pest's pairs never leave this module; syntax errors are translated into readable messages.

use std::cell::RefCell;
use std::sync::{Arc, LazyLock};

use pest::iterators::{Pair, Pairs};
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;

use super::ast::*;
use super::error::{did_you_mean, DslError, Problem, ProblemKind};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/hcp.pest"]
struct Hcp;

/// Parses one `.hcp` file. `file` is the index its spans carry (see [`crate::dsl::Sources`]);
/// diagnostics name the source `<input>` (use [`crate::dsl::load`] for file names).
pub fn parse_module(src: &str, file: u32) -> Result<Module, DslError> {
    parse_named(src, file, "<input>")
}

/// Parses one `.hcp` file whose diagnostics name it `name`.
pub(crate) fn parse_named(src: &str, file: u32, name: &str) -> Result<Module, DslError> {
    let walker = Walker {
        src,
        file,
        name,
        text: Arc::from(src),
        problems: RefCell::new(Vec::new()),
    };
    let module = match Hcp::parse(Rule::file, src) {
        Ok(mut pairs) => match pairs.next() {
            Some(file) => walker.module(file),
            None => Module::default(),
        },
        Err(e) => return Err(walker.syntax_error(&e).into()),
    };
    match DslError::from_problems(walker.problems.into_inner()) {
        Some(err) => Err(err),
        None => Ok(module),
    }
}

/// hcc's short element-type names, for "did you mean".
const SHORT_DTYPES: &[&str] = &[
    "f32", "f16", "bf16", "f64", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "bool",
];

const RESERVED: &[&str] = &[
    "rule", "pipeline", "use", "match", "where", "let", "emit", "require", "const", "true",
    "false", "none", "plan", "run", "repeat", "budget",
];

static PRATT: LazyLock<PrattParser<Rule>> = LazyLock::new(|| {
    PrattParser::new()
        .op(Op::infix(Rule::op_or, Assoc::Left))
        .op(Op::infix(Rule::op_and, Assoc::Left))
        .op(Op::infix(Rule::op_eq, Assoc::Left)
            | Op::infix(Rule::op_ne, Assoc::Left)
            | Op::infix(Rule::op_lt, Assoc::Left)
            | Op::infix(Rule::op_le, Assoc::Left)
            | Op::infix(Rule::op_gt, Assoc::Left)
            | Op::infix(Rule::op_ge, Assoc::Left))
        .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
        .op(Op::infix(Rule::op_mul, Assoc::Left)
            | Op::infix(Rule::op_div, Assoc::Left)
            | Op::infix(Rule::op_rem, Assoc::Left))
        .op(Op::prefix(Rule::op_neg) | Op::prefix(Rule::op_not))
});

struct Walker<'s> {
    src: &'s str,
    file: u32,
    name: &'s str,
    text: Arc<str>,
    problems: RefCell<Vec<Problem>>,
}

/// Pairs without punctuation tokens.
fn parts<'a>(pair: Pair<'a, Rule>) -> impl Iterator<Item = Pair<'a, Rule>> {
    pair.into_inner().filter(|p| !is_punct(p.as_rule()))
}

fn is_punct(r: Rule) -> bool {
    matches!(
        r,
        Rule::t_eq
            | Rule::t_lparen
            | Rule::t_rparen
            | Rule::t_lbrace
            | Rule::t_rbrace
            | Rule::t_lbrack
            | Rule::t_rbrack
            | Rule::t_langle
            | Rule::t_rangle
            | Rule::t_comma
            | Rule::t_colon
            | Rule::kw_rule
            | Rule::kw_pipeline
            | Rule::kw_use
            | Rule::kw_match
            | Rule::kw_where
            | Rule::kw_let
            | Rule::kw_emit
            | Rule::kw_require
            | Rule::kw_run
            | Rule::kw_repeat
            | Rule::kw_max
            | Rule::kw_budget
            | Rule::EOI
    )
}

impl<'s> Walker<'s> {
    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let s = p.as_span();
        Span {
            file: self.file,
            start: s.start(),
            end: s.end(),
        }
    }

    fn problem(
        &self,
        kind: ProblemKind,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem::in_text(kind, self.name, &self.text, span, message, label)
    }

    fn report(&self, p: Problem) {
        self.problems.borrow_mut().push(p);
    }

    fn ident(&self, p: &Pair<'_, Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(p),
        }
    }

    // ------------------------------------------------------------------------------ items

    fn module(&self, file: Pair<'_, Rule>) -> Module {
        let mut m = Module::default();
        for item in parts(file) {
            match item.as_rule() {
                Rule::use_decl => {
                    let span = self.span(&item);
                    if let Some(s) = parts(item).next() {
                        m.uses.push(Use {
                            path: self.string(&s),
                            span,
                        });
                    }
                }
                Rule::rule => {
                    if let Some(r) = self.rule(item) {
                        m.rules.push(r);
                    }
                }
                Rule::pipeline => m.pipelines.push(self.pipeline(item)),
                _ => {}
            }
        }
        m
    }

    fn rule(&self, pair: Pair<'_, Rule>) -> Option<Rule_> {
        let span = self.span(&pair);
        let mut name = None;
        let mut params = Vec::new();
        let mut pattern = None;
        let mut clauses = Vec::new();
        for p in parts(pair) {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(&p)),
                Rule::params => {
                    for param in parts(p) {
                        let mut it = parts(param);
                        let Some(n) = it.next() else { continue };
                        params.push(Param {
                            name: self.ident(&n),
                            default: it.next().map(|e| self.expr(e)),
                        });
                    }
                }
                Rule::match_clause => {
                    pattern = parts(p).next().and_then(|p| self.pattern(p));
                }
                Rule::where_clause => {
                    if let Some(e) = parts(p).next() {
                        clauses.push(Clause::Where(self.expr(e)));
                    }
                }
                Rule::require_clause => {
                    if let Some(e) = parts(p).next() {
                        clauses.push(Clause::Require(self.expr(e)));
                    }
                }
                Rule::let_clause | Rule::emit_clause => {
                    let is_let = p.as_rule() == Rule::let_clause;
                    let cspan = self.span(&p);
                    let mut it = parts(p);
                    let (Some(t), Some(e)) = (it.next(), it.next()) else {
                        continue;
                    };
                    let names = self.targets(t);
                    let value = self.expr(e);
                    clauses.push(if is_let {
                        Clause::Let {
                            names,
                            value,
                            span: cspan,
                        }
                    } else {
                        Clause::Emit {
                            targets: names,
                            value,
                            span: cspan,
                        }
                    });
                }
                _ => {}
            }
        }
        Some(Rule_ {
            name: name?,
            params,
            pattern: pattern?,
            clauses,
            span,
        })
    }

    fn targets(&self, pair: Pair<'_, Rule>) -> Vec<Ident> {
        let mut out = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => out.push(self.ident(&p)),
                Rule::tuple_names => out.extend(parts(p).map(|i| self.ident(&i))),
                _ => {}
            }
        }
        out
    }

    // ------------------------------------------------------------------------------ patterns

    fn pattern(&self, pair: Pair<'_, Rule>) -> Option<Pattern> {
        let span = self.span(&pair);
        let inner = pair.into_inner().next()?;
        match inner.as_rule() {
            Rule::const_match => {
                let mut it = parts(inner);
                let name = self.ident(&it.next()?);
                let ty = self.type_pat(it.next()?);
                Some(Pattern::Const { name, ty, span })
            }
            Rule::op_match => {
                let mut it = parts(inner);
                let out = it.next()?.into_inner().next()?;
                let outputs = match out.as_rule() {
                    Rule::variadic_out => Outputs::Variadic(self.ident(&parts(out).next()?)),
                    Rule::tuple_names => {
                        Outputs::Fixed(parts(out).map(|i| self.ident(&i)).collect())
                    }
                    _ => Outputs::Fixed(vec![self.ident(&out)]),
                };
                let op = self.op_pat(it.next()?)?;
                Some(Pattern::Op { outputs, op, span })
            }
            _ => None,
        }
    }

    fn op_pat(&self, pair: Pair<'_, Rule>) -> Option<OpPattern> {
        let span = self.span(&pair);
        let mut op = None;
        let mut attrs = Vec::new();
        let mut operands = Vec::new();
        for p in parts(pair) {
            match p.as_rule() {
                Rule::op_name => op = Some(self.ident(&p)),
                Rule::attr_pats => {
                    for a in parts(p) {
                        if let Some(ap) = self.attr_pat(a) {
                            attrs.push(ap);
                        }
                    }
                }
                Rule::operand => {
                    if let Some(o) = self.operand(p) {
                        operands.push(o);
                    }
                }
                _ => {}
            }
        }
        Some(OpPattern {
            op: op?,
            attrs,
            operands,
            span,
        })
    }

    fn attr_pat(&self, pair: Pair<'_, Rule>) -> Option<AttrPattern> {
        let span = self.span(&pair);
        let mut it = parts(pair);
        let name = self.ident(&it.next()?);
        let v = it.next()?.into_inner().next()?;
        let value = match v.as_rule() {
            Rule::ident => AttrPatternValue::Bind(self.ident(&v)),
            Rule::int => AttrPatternValue::Literal(Literal::Int(self.int(&v))),
            Rule::float => AttrPatternValue::Literal(Literal::Float(self.float(&v))),
            Rule::string => AttrPatternValue::Literal(Literal::Str(self.string(&v))),
            Rule::kw_true => AttrPatternValue::Literal(Literal::Bool(true)),
            Rule::kw_false => AttrPatternValue::Literal(Literal::Bool(false)),
            Rule::int_list => {
                AttrPatternValue::Literal(Literal::Ints(parts(v).map(|i| self.int(&i)).collect()))
            }
            _ => return None,
        };
        Some(AttrPattern { name, value, span })
    }

    fn operand(&self, pair: Pair<'_, Rule>) -> Option<Operand> {
        let inner = pair.into_inner().next()?;
        if inner.as_rule() == Rule::op_pat {
            return self.op_pat(inner).map(Operand::Op);
        }
        let span = self.span(&inner);
        let mut name = None;
        let mut ty = None;
        let mut optional = false;
        let mut variadic = false;
        for p in inner.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.ident(&p)),
                Rule::type_pat => ty = Some(self.type_pat(p)),
                Rule::t_quest => optional = true,
                Rule::t_dots => variadic = true,
                _ => {}
            }
        }
        Some(Operand::Value {
            name,
            ty,
            optional,
            variadic,
            span,
        })
    }

    fn type_pat(&self, pair: Pair<'_, Rule>) -> TypePattern {
        let span = self.span(&pair);
        let mut tp = TypePattern {
            is_const: false,
            dtype: None,
            shape: None,
            span,
        };
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::kw_const => tp.is_const = true,
                Rule::dtype => {
                    let s = self.span(&p);
                    match dtype_from_short(p.as_str()) {
                        Some(d) => tp.dtype = Some((d, s)),
                        None => {
                            let mut prob = self.problem(
                                ProblemKind::Syntax,
                                s,
                                format!("unknown element type `{}`", p.as_str()),
                                "not an element type",
                            );
                            prob = match did_you_mean(p.as_str(), SHORT_DTYPES.iter().copied()) {
                                Some(m) => prob.with_help(format!("did you mean `{m}`?")),
                                None => prob.with_help(
                                    "element types are f32 f16 bf16 f64 i8 i16 i32 i64 u8 u16 \
                                     u32 u64 bool (or ONNX names such as float16); a type \
                                     pattern is `const`? element type? `[dims]`?",
                                ),
                            };
                            self.report(prob);
                        }
                    }
                }
                Rule::shape => {
                    let mut dims = Vec::new();
                    for d in parts(p) {
                        let Some(d) = d.into_inner().next() else {
                            continue;
                        };
                        let s = self.span(&d);
                        dims.push(match d.as_rule() {
                            Rule::int => DimPattern::Lit(self.int(&d), s),
                            Rule::wildcard => DimPattern::Any(s),
                            _ => DimPattern::Sym(self.ident(&d)),
                        });
                    }
                    tp.shape = Some(dims);
                }
                _ => {}
            }
        }
        tp
    }

    // ------------------------------------------------------------------------------ expressions

    fn expr(&self, pair: Pair<'_, Rule>) -> Expr {
        self.pratt(pair.into_inner())
    }

    fn pratt(&self, pairs: Pairs<'_, Rule>) -> Expr {
        PRATT
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| {
                let span = Span {
                    file: self.file,
                    start: op.as_span().start(),
                    end: rhs.span.end,
                };
                let kind = match (op.as_rule(), &rhs.kind) {
                    (Rule::op_neg, ExprKind::Lit(Literal::Int(v))) => {
                        ExprKind::Lit(Literal::Int(v.wrapping_neg()))
                    }
                    (Rule::op_neg, ExprKind::Lit(Literal::Float(v))) => {
                        ExprKind::Lit(Literal::Float(-v))
                    }
                    (Rule::op_neg, _) => ExprKind::Unary(UnaryOp::Neg, Box::new(rhs)),
                    _ => ExprKind::Unary(UnaryOp::Not, Box::new(rhs)),
                };
                Expr { kind, span }
            })
            .map_infix(|lhs, op, rhs| {
                let op = match op.as_rule() {
                    Rule::op_or => BinaryOp::Or,
                    Rule::op_and => BinaryOp::And,
                    Rule::op_eq => BinaryOp::Eq,
                    Rule::op_ne => BinaryOp::Ne,
                    Rule::op_lt => BinaryOp::Lt,
                    Rule::op_le => BinaryOp::Le,
                    Rule::op_gt => BinaryOp::Gt,
                    Rule::op_ge => BinaryOp::Ge,
                    Rule::op_add => BinaryOp::Add,
                    Rule::op_sub => BinaryOp::Sub,
                    Rule::op_mul => BinaryOp::Mul,
                    Rule::op_div => BinaryOp::Div,
                    _ => BinaryOp::Rem,
                };
                let span = Span {
                    file: self.file,
                    start: lhs.span.start,
                    end: rhs.span.end,
                };
                Expr {
                    kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)),
                    span,
                }
            })
            .parse(pairs)
    }

    fn primary(&self, p: Pair<'_, Rule>) -> Expr {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::paren => match parts(p).next() {
                // The brackets belong to the expression's text (diagnostics, near-miss reasons).
                Some(e) => {
                    let mut inner = self.expr(e);
                    inner.span = span;
                    return inner;
                }
                None => ExprKind::None,
            },
            Rule::list => ExprKind::List(parts(p).map(|e| self.expr(e)).collect()),
            Rule::call => return self.call(p),
            Rule::ufloat => ExprKind::Lit(Literal::Float(self.float(&p))),
            Rule::uint => ExprKind::Lit(Literal::Int(self.int(&p))),
            Rule::string => ExprKind::Lit(Literal::Str(self.string(&p))),
            Rule::kw_true => ExprKind::Lit(Literal::Bool(true)),
            Rule::kw_false => ExprKind::Lit(Literal::Bool(false)),
            Rule::kw_none => ExprKind::None,
            Rule::kw_plan => ExprKind::Plan,
            Rule::name => match p.into_inner().next() {
                Some(i) => ExprKind::Name(self.ident(&i)),
                None => ExprKind::None,
            },
            _ => ExprKind::None,
        };
        Expr { kind, span }
    }

    fn call(&self, pair: Pair<'_, Rule>) -> Expr {
        let span = self.span(&pair);
        let mut name: Option<Ident> = None;
        let mut attrs: Vec<(Ident, Expr)> = Vec::new();
        let mut attrs_span = None;
        let mut args: Vec<Arg> = Vec::new();
        for p in parts(pair) {
            match p.as_rule() {
                Rule::op_name => name = Some(self.ident(&p)),
                Rule::call_attrs => {
                    attrs_span = Some(self.span(&p));
                    for a in parts(p) {
                        let mut it = parts(a);
                        if let (Some(n), Some(v)) = (it.next(), it.next()) {
                            attrs.push((self.ident(&n), self.pratt(v.into_inner())));
                        }
                    }
                }
                Rule::arg => {
                    let mut it = parts(p);
                    let (first, second) = (it.next(), it.next());
                    match (first, second) {
                        (Some(n), Some(v)) => args.push(Arg {
                            name: Some(self.ident(&n)),
                            value: self.expr(v),
                        }),
                        (Some(v), None) => args.push(Arg {
                            name: None,
                            value: self.expr(v),
                        }),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let Some(name) = name else {
            return Expr {
                kind: ExprKind::None,
                span,
            };
        };
        let is_op =
            name.name.contains('.') || name.name.starts_with(|c: char| c.is_ascii_uppercase());
        if is_op {
            let mut positional = Vec::new();
            for a in args {
                if let Some(n) = &a.name {
                    self.report(
                        self.problem(
                            ProblemKind::Syntax,
                            n.span,
                            format!("`{}` is an ONNX operation: its inputs are positional", name),
                            "a named argument",
                        )
                        .with_help(format!(
                            "attributes go in angle brackets: `{}<{} = ...>(...)`",
                            name, n
                        )),
                    );
                }
                positional.push(a.value);
            }
            Expr {
                kind: ExprKind::Op {
                    op: name,
                    attrs,
                    args: positional,
                },
                span,
            }
        } else {
            if let Some(s) = attrs_span {
                self.report(
                    self.problem(
                        ProblemKind::Syntax,
                        s,
                        format!("`{name}` is a function: only ONNX operations take attributes"),
                        "attributes on a function call",
                    )
                    .with_help(
                        "operation names start with an upper-case letter (`Transpose<perm = p>(x)`); \
                         pass a function's options as arguments (`transpose(W, perm = p)`)",
                    ),
                );
            }
            Expr {
                kind: ExprKind::Call { func: name, args },
                span,
            }
        }
    }

    // ------------------------------------------------------------------------------ literals

    fn int(&self, p: &Pair<'_, Rule>) -> i64 {
        match p.as_str().parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                self.report(self.problem(
                    ProblemKind::Value,
                    self.span(p),
                    format!("the number {} does not fit in 64 bits", p.as_str()),
                    "too large",
                ));
                0
            }
        }
    }

    fn float(&self, p: &Pair<'_, Rule>) -> f64 {
        match p.as_str().parse::<f64>() {
            Ok(v) if v.is_finite() => v,
            _ => {
                self.report(self.problem(
                    ProblemKind::Value,
                    self.span(p),
                    format!("the number {} is out of range", p.as_str()),
                    "not a finite number",
                ));
                0.0
            }
        }
    }

    /// The value of a `string` pair, with escapes resolved.
    fn string(&self, p: &Pair<'_, Rule>) -> String {
        let body_start = p.as_span().start() + 1;
        let raw = p.as_str();
        let body = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
        let mut out = String::with_capacity(body.len());
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((j, other)) => {
                    let span = Span {
                        file: self.file,
                        start: body_start + i,
                        end: body_start + j + other.len_utf8(),
                    };
                    self.report(
                        self.problem(
                            ProblemKind::Syntax,
                            span,
                            format!("unknown escape `\\{other}` in a string"),
                            "unknown escape",
                        )
                        .with_help("strings know the escapes \\\" \\\\ \\n and \\t"),
                    );
                }
                None => {}
            }
        }
        out
    }

    // ------------------------------------------------------------------------------ pipelines

    fn pipeline(&self, pair: Pair<'_, Rule>) -> Pipeline {
        let span = self.span(&pair);
        let mut name = Ident {
            name: String::new(),
            span,
        };
        let mut budget: Option<Budget> = None;
        let mut steps = Vec::new();
        for p in parts(pair) {
            match p.as_rule() {
                Rule::ident => name = self.ident(&p),
                Rule::budget => {
                    let Some(b) = self.budget(p) else { continue };
                    match &budget {
                        Some(first) => self.report(
                            self.problem(
                                ProblemKind::Duplicate,
                                b.span,
                                format!("pipeline `{}` has two budgets", name),
                                "second budget",
                            )
                            .with_note(first.span, "first budget")
                            .with_help("a pipeline has at most one `budget` line"),
                        ),
                        None => budget = Some(b),
                    }
                }
                Rule::run_step | Rule::repeat_step => {
                    if let Some(s) = self.step(p) {
                        steps.push(s);
                    }
                }
                _ => {}
            }
        }
        Pipeline {
            name,
            budget,
            steps,
            span,
        }
    }

    fn step(&self, pair: Pair<'_, Rule>) -> Option<Step> {
        let span = self.span(&pair);
        if pair.as_rule() == Rule::run_step {
            let mut it = parts(pair);
            let rule = self.ident(&it.next()?);
            let args = match it.next() {
                Some(a) => parts(a).filter_map(|a| self.arg(a)).collect(),
                None => Vec::new(),
            };
            return Some(Step::Run { rule, args, span });
        }
        let mut max = 1;
        let mut steps = Vec::new();
        for p in parts(pair) {
            match p.as_rule() {
                Rule::uint => {
                    let s = self.span(&p);
                    match p.as_str().parse::<u32>() {
                        Ok(n) if n >= 1 => max = n,
                        _ => self.report(
                            self.problem(
                                ProblemKind::Value,
                                s,
                                format!("`repeat max {}` is out of range", p.as_str()),
                                "must be at least 1",
                            )
                            .with_help("`repeat max N { ... }` runs its steps at most N rounds"),
                        ),
                    }
                }
                Rule::budget => self.report(
                    self.problem(
                        ProblemKind::Syntax,
                        self.span(&p),
                        "a budget inside `repeat`",
                        "not allowed here",
                    )
                    .with_help("the budget applies to the whole pipeline: put it at the top"),
                ),
                Rule::run_step | Rule::repeat_step => {
                    if let Some(s) = self.step(p) {
                        steps.push(s);
                    }
                }
                _ => {}
            }
        }
        if steps.is_empty() {
            self.report(self.problem(
                ProblemKind::Syntax,
                span,
                "`repeat` has no steps",
                "nothing to repeat",
            ));
        }
        Some(Step::Repeat { max, steps, span })
    }

    fn arg(&self, pair: Pair<'_, Rule>) -> Option<Arg> {
        let mut it = parts(pair);
        let first = it.next()?;
        Some(match it.next() {
            Some(v) => Arg {
                name: Some(self.ident(&first)),
                value: self.expr(v),
            },
            None => Arg {
                name: None,
                value: self.expr(first),
            },
        })
    }

    fn budget(&self, pair: Pair<'_, Rule>) -> Option<Budget> {
        let span = self.span(&pair);
        let mut it = parts(pair);
        let kind = it.next()?;
        let size = it.next()?;
        let sspan = self.span(&size);
        let text = size.as_str();
        let split = text
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len());
        let (num, suffix) = text.split_at(split);
        let value: f64 = num.parse().unwrap_or(0.0);
        let bad = |message: String, help: &str| {
            self.report(
                self.problem(ProblemKind::Value, sspan, message, "here")
                    .with_help(help.to_string()),
            );
        };
        let whole = |v: f64, what: &str| -> Option<u64> {
            if v < 1.0 || v.fract() != 0.0 || v > 1e18 {
                bad(
                    format!("`{text}` is not a whole number of {what} (at least 1)"),
                    "write e.g. `80M` or `1.5G` for params, `200MB` or `512KiB` for bytes",
                );
                None
            } else {
                Some(v as u64)
            }
        };
        let kind = match kind.as_str() {
            "ratio" => {
                if !suffix.is_empty() {
                    bad(
                        format!("a ratio takes no unit, found `{suffix}`"),
                        "`budget ratio 4` keeps a quarter of the parameters",
                    );
                    return None;
                }
                if value < 1.0 {
                    bad(
                        format!("`budget ratio {text}` would let the model grow"),
                        "the ratio is original size / compressed size, at least 1",
                    );
                    return None;
                }
                BudgetKind::Ratio(value)
            }
            "params" => {
                let mult = match suffix {
                    "" => 1.0,
                    "k" => 1e3,
                    "M" => 1e6,
                    "G" => 1e9,
                    _ => {
                        bad(
                            format!("unknown unit `{suffix}` for a parameter count"),
                            "parameter counts take k, M or G (thousand, million, billion)",
                        );
                        return None;
                    }
                };
                BudgetKind::Params(whole(scaled(value, mult), "parameters")?)
            }
            _ => {
                let mult = match super::ast::byte_unit(suffix) {
                    Some(m) => m,
                    None => {
                        bad(
                            format!("unknown unit `{suffix}` for a size in bytes"),
                            "sizes take B, KB, MB, GB (decimal) or KiB, MiB, GiB (binary)",
                        );
                        return None;
                    }
                };
                BudgetKind::Bytes(whole(scaled(value, mult), "bytes")?)
            }
        };
        Some(Budget { kind, span })
    }

    // ------------------------------------------------------------------------------ errors

    fn syntax_error(&self, e: &pest::error::Error<Rule>) -> Problem {
        let pos = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((s, _)) => s,
        };
        let found = token_at(self.src, pos);
        let end = self.src.trim_end().len();
        let at_end = pos >= end;
        // At the end of input there is nothing to underline: point at the last character.
        let (span, after) = if at_end {
            let start = self.src[..end]
                .char_indices()
                .next_back()
                .map_or(0, |(i, _)| i);
            ((start, end), " after this")
        } else {
            ((pos, pos + found.len().max(1)), "")
        };
        let span = Span {
            file: self.file,
            start: span.0,
            end: span.1,
        };
        let found_text = if at_end {
            "the end of the file".to_string()
        } else {
            format!("`{found}`")
        };
        let positives: Vec<Rule> = match &e.variant {
            pest::error::ErrorVariant::ParsingError { positives, .. } => positives.clone(),
            pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
        };
        if found.starts_with('"') && !found.ends_with('"') || found == "\"" {
            return self
                .problem(
                    ProblemKind::Syntax,
                    span,
                    "unterminated string",
                    "this string has no closing quote",
                )
                .with_help(
                    "strings end with `\"` on the same line; write \\\" for a quote inside",
                );
        }
        let mut wanted: Vec<&str> = Vec::new();
        for r in &positives {
            if let Some(d) = describe(*r) {
                if !wanted.contains(&d) {
                    wanted.push(d);
                }
            }
        }
        let clause_words = ["`where`", "`let`", "`emit`", "`require`"];
        if found == "match" && wanted.iter().any(|w| clause_words.contains(w)) {
            return self
                .problem(
                    ProblemKind::Syntax,
                    span,
                    "a second `match` clause",
                    "a rule has one `match`",
                )
                .with_help(
                    "a rule matches one pattern; nest operations to match a larger subgraph: \
                     `y = MatMul(Transpose(W: const), x)`",
                );
        }
        if wanted.contains(&"`match`") && ["where", "let", "emit", "require"].contains(&found) {
            return self
                .problem(
                    ProblemKind::Syntax,
                    span,
                    format!("`{found}` before `match`"),
                    "expected `match` here",
                )
                .with_help("a rule starts with its `match` clause, then `where`, `let`, `emit` and `require` clauses");
        }
        if wanted.is_empty() {
            return self.problem(
                ProblemKind::Syntax,
                span,
                format!("unexpected {found_text}"),
                "not expected here",
            );
        }
        let expected = join_alternatives(&wanted);
        let mut prob = self.problem(
            ProblemKind::Syntax,
            span,
            format!("expected {expected}, found {found_text}"),
            format!("expected {}{after}", short_expectation(&wanted)),
        );
        if RESERVED.contains(&found) && wanted.contains(&"a name") {
            prob = prob.with_help(format!("`{found}` is a reserved word and cannot be a name"));
        } else if wanted.contains(&"`}`") && at_end {
            prob = prob.with_help("a `{` is not closed");
        }
        prob
    }
}

type Rule_ = super::ast::Rule;

/// `value * mult` with float noise removed (`1.1M` is 1100000.0000000002 in floats).
fn scaled(value: f64, mult: f64) -> f64 {
    let v = value * mult;
    let r = v.round();
    if (v - r).abs() < 1e-6 * v.abs().max(1.0) {
        r
    } else {
        v
    }
}

/// The token starting at `pos`, for "found ...".
fn token_at(src: &str, pos: usize) -> &str {
    let rest = src.get(pos..).unwrap_or("");
    let mut chars = rest.char_indices();
    let Some((_, c)) = chars.next() else {
        return "";
    };
    let end = if c.is_ascii_alphanumeric() || c == '_' {
        rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'))
            .unwrap_or(rest.len())
    } else if c == '"' {
        // Up to the closing quote on this line, else to the end of the line.
        let line = rest.find('\n').unwrap_or(rest.len());
        let mut esc = false;
        let mut close = None;
        for (i, ch) in rest[..line].char_indices().skip(1) {
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                close = Some(i + 1);
                break;
            }
        }
        close.unwrap_or(line)
    } else {
        let two = rest.get(..2).unwrap_or("");
        if ["==", "!=", "<=", ">=", "&&", "||"].contains(&two) {
            2
        } else if rest.starts_with("...") {
            3
        } else {
            c.len_utf8()
        }
    };
    rest.get(..end).unwrap_or(rest)
}

/// Readable words for grammar rules.
fn describe(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::operand | Rule::value_operand => {
            "an operand such as `x`, `W: const f32[K, N]` or `MatMul(...)`"
        }
        Rule::op_pat => "an operation pattern such as `MatMul(x, W: const)`",
        Rule::pattern | Rule::const_match | Rule::op_match => {
            "a pattern such as `y = MatMul(x, W: const)` or `W: const f32[K, N]`"
        }
        Rule::outputs | Rule::variadic_out => "the matched outputs (`y`, `(a, b)` or `ys...`)",
        Rule::expr
        | Rule::attr_expr
        | Rule::op_neg
        | Rule::op_not
        | Rule::paren
        | Rule::list
        | Rule::call
        | Rule::name
        | Rule::ufloat
        | Rule::uint => "an expression",
        Rule::op_or
        | Rule::op_and
        | Rule::op_eq
        | Rule::op_ne
        | Rule::op_lt
        | Rule::op_le
        | Rule::op_gt
        | Rule::op_ge
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_mul
        | Rule::op_div
        | Rule::op_rem => "an operator",
        Rule::type_pat => "a type such as `const`, `f32`, `[K, N]` or `const f32[K, N]`",
        Rule::dtype => "an element type such as `f32`",
        Rule::shape => "a shape such as `[K, N]`",
        Rule::dim => "a dimension (a name, a number or `_`)",
        Rule::ident | Rule::wildcard => "a name",
        Rule::op_name => "an operation name such as `MatMul`",
        Rule::attr_pats => "attributes `<name = value>`",
        Rule::attr_pat => "an attribute pattern such as `perm = p` or `axis = 0`",
        Rule::attr_value => {
            "an attribute value (a literal such as `0`, `[1, 0]` or `\"x\"`, or a name to bind)"
        }
        Rule::call_attrs => "attributes `<name = value>`",
        Rule::call_attr => "an attribute such as `perm = [1, 0]`",
        Rule::arg => "an argument",
        Rule::params => "parameters `(...)`",
        Rule::param => "a parameter name",
        Rule::match_clause | Rule::kw_match => "`match`",
        Rule::where_clause | Rule::kw_where => "`where`",
        Rule::let_clause | Rule::kw_let => "`let`",
        Rule::emit_clause | Rule::kw_emit => "`emit`",
        Rule::require_clause | Rule::kw_require => "`require`",
        Rule::use_decl | Rule::kw_use => "`use`",
        Rule::rule | Rule::kw_rule => "`rule`",
        Rule::pipeline | Rule::kw_pipeline => "`pipeline`",
        Rule::budget | Rule::kw_budget => "`budget`",
        Rule::budget_kind => "`ratio`, `params` or `bytes`",
        Rule::size => "a size such as `4`, `80M` or `200MB`",
        Rule::run_step | Rule::kw_run => "`run`",
        Rule::repeat_step | Rule::kw_repeat => "`repeat`",
        Rule::kw_max => "`max`",
        Rule::run_args => "arguments `(...)`",
        Rule::targets | Rule::tuple_names => "a name or `(a, b)`",
        Rule::int_list => "a list of whole numbers such as `[1, 0]`",
        Rule::int => "a whole number",
        Rule::float => "a number",
        Rule::string | Rule::str_body => "a string such as \"std.hcp\"",
        Rule::kw_const => "`const`",
        Rule::kw_true | Rule::kw_false => "`true` or `false`",
        Rule::kw_none => "`none`",
        Rule::kw_plan => "`plan`",
        Rule::t_eq => "`=`",
        Rule::t_lparen => "`(`",
        Rule::t_rparen => "`)`",
        Rule::t_lbrace => "`{`",
        Rule::t_rbrace => "`}`",
        Rule::t_lbrack => "`[`",
        Rule::t_rbrack => "`]`",
        Rule::t_langle => "`<`",
        Rule::t_rangle => "`>`",
        Rule::t_comma => "`,`",
        Rule::t_colon => "`:`",
        Rule::t_dots => "`...`",
        Rule::t_quest => "`?`",
        Rule::EOI => "the end of the file",
        _ => return None,
    })
}

/// "a, b or c".
fn join_alternatives(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The label under the offending token: the first one or two expectations.
fn short_expectation(items: &[&str]) -> String {
    if items.len() <= 3 {
        join_alternatives(items)
    } else {
        format!("{} or …", items[..2].join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Module {
        match parse_module(src, 0) {
            Ok(m) => m,
            Err(e) => panic!("{:?}", miette::Report::new(e)),
        }
    }

    fn first_error(src: &str) -> String {
        match parse_module(src, 0) {
            Ok(_) => panic!("parsed: {src}"),
            Err(e) => e
                .problems()
                .next()
                .map(|p| p.message().to_string())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn rule_with_everything() {
        let m = parse(
            "use \"std.hcp\"\n\
             rule f(rank, min_size = 65536) {\n\
               match y = MatMul(x, W: const f32[K, N])\n\
               where K * N >= min_size && !is_output(y)\n\
               let (A, B) = lowrank(W, rank)\n\
               emit y = MatMul(MatMul(x, A), B)\n\
               require numel(A) + numel(B) < K * N\n\
             }",
        );
        assert_eq!(m.uses[0].path, "std.hcp");
        let r = &m.rules[0];
        assert_eq!(r.name.name, "f");
        assert_eq!(r.params.len(), 2);
        assert!(matches!(
            r.params[1].default,
            Some(Expr {
                kind: ExprKind::Lit(Literal::Int(65536)),
                ..
            })
        ));
        let Pattern::Op { outputs, op, .. } = &r.pattern else {
            panic!("{:?}", r.pattern)
        };
        assert_eq!(
            outputs,
            &Outputs::Fixed(vec![Ident {
                name: "y".into(),
                span: Span {
                    file: 0,
                    start: 53,
                    end: 54
                }
            }])
        );
        assert_eq!(op.op.name, "MatMul");
        assert_eq!(op.operands.len(), 2);
        let Operand::Value { ty: Some(ty), .. } = &op.operands[1] else {
            panic!()
        };
        assert!(ty.is_const);
        assert_eq!(ty.dtype.map(|d| d.0), Some(crate::ir::DType::F32));
        assert_eq!(ty.shape.as_ref().map(Vec::len), Some(2));
        assert_eq!(r.clauses.len(), 4);
        let Clause::Where(Expr {
            kind: ExprKind::Binary(BinaryOp::And, lhs, _),
            ..
        }) = &r.clauses[0]
        else {
            panic!("{:?}", r.clauses[0])
        };
        assert!(matches!(lhs.kind, ExprKind::Binary(BinaryOp::Ge, _, _)));
    }

    #[test]
    fn precedence_and_negative_literals() {
        let m = parse("rule r { match W: const\n where 1 + 2 * 3 == -7 || false\n emit W = W }");
        let Clause::Where(e) = &m.rules[0].clauses[0] else {
            panic!()
        };
        let ExprKind::Binary(BinaryOp::Or, l, _) = &e.kind else {
            panic!("{e:?}")
        };
        let ExprKind::Binary(BinaryOp::Eq, sum, neg) = &l.kind else {
            panic!()
        };
        assert!(matches!(sum.kind, ExprKind::Binary(BinaryOp::Add, _, _)));
        assert_eq!(neg.kind, ExprKind::Lit(Literal::Int(-7)));
    }

    #[test]
    fn operands_and_attributes() {
        let m = parse(
            "rule r { match ys... = Split<axis = a, mode = \"x\\n\", p = [1, -2]>(X: const, s: const?, _, rest...)\n emit ys = ys }",
        );
        let Pattern::Op { outputs, op, .. } = &m.rules[0].pattern else {
            panic!()
        };
        assert!(matches!(outputs, Outputs::Variadic(i) if i.name == "ys"));
        assert!(matches!(&op.attrs[0].value, AttrPatternValue::Bind(i) if i.name == "a"));
        assert_eq!(
            op.attrs[1].value,
            AttrPatternValue::Literal(Literal::Str("x\n".into()))
        );
        assert_eq!(
            op.attrs[2].value,
            AttrPatternValue::Literal(Literal::Ints(vec![1, -2]))
        );
        assert!(
            matches!(&op.operands[1], Operand::Value { optional: true, ty: Some(t), .. } if t.is_const)
        );
        assert!(matches!(&op.operands[2], Operand::Value { name: None, .. }));
        assert!(matches!(
            &op.operands[3],
            Operand::Value { variadic: true, .. }
        ));
    }

    #[test]
    fn op_calls_and_function_calls() {
        let m = parse(
            "rule r { match H: const [N, V]\n emit H = com.x.Foo<perm = [1, 0]>(Transpose(stored(H)), none) }",
        );
        let Clause::Emit { value, .. } = &m.rules[0].clauses[0] else {
            panic!()
        };
        let ExprKind::Op { op, attrs, args } = &value.kind else {
            panic!("{value:?}")
        };
        assert_eq!(op.name, "com.x.Foo");
        assert_eq!(attrs.len(), 1);
        assert_eq!(args.len(), 2);
        assert!(
            matches!(&args[0].kind, ExprKind::Op { args, .. } if matches!(args[0].kind, ExprKind::Call { .. }))
        );
        assert_eq!(args[1].kind, ExprKind::None);
    }

    #[test]
    fn pipelines_and_budgets() {
        let m = parse(
            "pipeline p {\n budget bytes 1.5GB\n run a\n repeat max 3 { run b(rank = plan, 4)\n repeat max 1 { run c } }\n}\n\
             pipeline q { budget params 80M }\n pipeline r { budget ratio 4.5 }\n pipeline s { budget bytes 512KiB }",
        );
        assert_eq!(
            m.pipelines[0].budget.as_ref().map(|b| b.kind),
            Some(BudgetKind::Bytes(1_500_000_000))
        );
        assert_eq!(
            m.pipelines[1].budget.as_ref().map(|b| b.kind),
            Some(BudgetKind::Params(80_000_000))
        );
        assert_eq!(
            m.pipelines[2].budget.as_ref().map(|b| b.kind),
            Some(BudgetKind::Ratio(4.5))
        );
        assert_eq!(
            m.pipelines[3].budget.as_ref().map(|b| b.kind),
            Some(BudgetKind::Bytes(524_288))
        );
        let Step::Repeat { max, steps, .. } = &m.pipelines[0].steps[1] else {
            panic!()
        };
        assert_eq!(*max, 3);
        assert!(
            matches!(&steps[0], Step::Run { args, .. } if args.len() == 2 && args[0].value.kind == ExprKind::Plan)
        );
    }

    #[test]
    fn syntax_errors_are_readable() {
        assert!(first_error("rule r { match y = MatMul(x, +) emit y = x }")
            .contains("an operand such as"));
        assert!(
            first_error("rule r { where x\n match W: const emit W = W }")
                .contains("before `match`")
        );
        assert!(
            first_error("rule r { match W: flaot emit W = W }").contains("unknown element type")
        );
        assert!(first_error("pipeline p { budget params 8X }").contains("unknown unit"));
        assert!(first_error("pipeline p { repeat max 0 { run a } }").contains("out of range"));
        assert!(first_error("use \"std.hcp").contains("unterminated string"));
    }
}
