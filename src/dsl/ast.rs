//! The typed AST of the pass language (`.hcp` files). Every node carries the [`Span`] of the
//! source text it came from, so later stages (checker, engine, report) can point at it.

use std::fmt;

use crate::ir::DType;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Which file, an index into [`crate::dsl::Sources`].
    pub file: u32,
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

/// A name with its place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// One parsed `.hcp` file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Module {
    /// `use "other.hcp"` imports, in order.
    pub uses: Vec<Use>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Pipelines, in order.
    pub pipelines: Vec<Pipeline>,
}

/// `use "path.hcp"` (relative to the importing file; `"std.hcp"` also finds the built-in
/// standard library).
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    pub path: String,
    pub span: Span,
}

/// `rule name(params) { match ...; where ...; let ...; emit ...; require ... }`
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: Ident,
    /// Parameters, with optional defaults: `rule linear_factorize(rank, min_size = 65536)`.
    pub params: Vec<Param>,
    /// The `match` clause.
    pub pattern: Pattern,
    /// `where`, `let`, `emit` and `require` clauses in source order (evaluated in that order;
    /// `require` clauses are checked after every `emit` has been planned).
    pub clauses: Vec<Clause>,
    pub span: Span,
}

/// A rule parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

/// What a rule matches: an operation (with nested operands) defining one or more values, or a
/// stored constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    /// `match y = MatMul(x, W: const f32[K, N])`, `match (a, b) = Split(...)`,
    /// `match ys... = Split(...)`.
    Op {
        outputs: Outputs,
        op: OpPattern,
        span: Span,
    },
    /// `match W: const f32[K, N]` — every stored constant (initializer or `Constant` node
    /// output) of that type.
    Const {
        name: Ident,
        ty: TypePattern,
        span: Span,
    },
}

/// The values an operation pattern defines.
#[derive(Clone, Debug, PartialEq)]
pub enum Outputs {
    /// `y = ...` or `(y, z) = ...`: exactly these outputs (an operation may have more; the
    /// extra ones must be unused for the match to hold, and are then ignored).
    Fixed(Vec<Ident>),
    /// `ys... = ...`: all outputs, as a list.
    Variadic(Ident),
}

/// `Op<attr = pattern, ...>(operand, ...)`. `op` may be domain-qualified (`com.microsoft.Attention`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpPattern {
    pub op: Ident,
    pub attrs: Vec<AttrPattern>,
    pub operands: Vec<Operand>,
    pub span: Span,
}

/// `name = literal` (the attribute must be present and equal), `name = ident` (binds the
/// attribute's value, or `none` when absent; a name bound twice must agree).
#[derive(Clone, Debug, PartialEq)]
pub struct AttrPattern {
    pub name: Ident,
    pub value: AttrPatternValue,
    pub span: Span,
}

/// The right side of an attribute pattern.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrPatternValue {
    Literal(Literal),
    Bind(Ident),
}

/// One operand of an operation pattern.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A nested operation producing this operand: `MatMul(Transpose(W: const), x)`.
    Op(OpPattern),
    /// A value: `x`, `W: const f32[K, N]`, `_`, `b?` (optional: matches an absent input too,
    /// binding `none`), `xs...` (the remaining operands, as a list; last only).
    Value {
        /// `None` for `_`.
        name: Option<Ident>,
        ty: Option<TypePattern>,
        optional: bool,
        variadic: bool,
        span: Span,
    },
}

/// `const f32[K, N]`: all parts optional (`const`, `f32`, `[K, N]`, `const [_, 4]`).
#[derive(Clone, Debug, PartialEq)]
pub struct TypePattern {
    /// The value must be a stored constant.
    pub is_const: bool,
    /// Element type (`f32`, `f16`, `i64`, ...: hcc's short names, see [`dtype_from_short`]).
    pub dtype: Option<(DType, Span)>,
    /// Shape: the rank must equal the list's length; each dim a symbol, literal or `_`.
    pub shape: Option<Vec<DimPattern>>,
    pub span: Span,
}

/// One dimension in a type pattern.
#[derive(Clone, Debug, PartialEq)]
pub enum DimPattern {
    /// Binds the dim (must be known); the same symbol elsewhere must be equal.
    Sym(Ident),
    /// Must equal this.
    Lit(i64, Span),
    /// Anything, symbolic or unknown included.
    Any(Span),
}

/// A clause after `match`.
#[derive(Clone, Debug, PartialEq)]
pub enum Clause {
    /// `where <bool expr>`: the match holds only if true (else a near-miss with the reason).
    Where(Expr),
    /// `let x = expr` / `let (a, b) = expr`.
    Let {
        names: Vec<Ident>,
        value: Expr,
        span: Span,
    },
    /// `emit y = expr` / `emit (a, b) = expr` / `emit ys = expr`: a new definition for matched
    /// output(s). `expr` builds operations (`MatMul(x, A)`) or evaluates to a constant.
    Emit {
        targets: Vec<Ident>,
        value: Expr,
        span: Span,
    },
    /// `require <bool expr>`: checked once the replacement is planned; if false the match is
    /// dropped as a near-miss (e.g. "never grow a layer").
    Require(Expr),
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Lit(Literal),
    /// A bound name: pattern binding, `let` name, rule parameter, shape symbol.
    Name(Ident),
    /// `[a, b, c]`
    List(Vec<Expr>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// A lower-case call: a kernel or built-in function, `lowrank(W, rank)`, `numel(W)`.
    Call {
        func: Ident,
        args: Vec<Arg>,
    },
    /// An upper-case call: an ONNX operation to emit, `Transpose<perm = [1, 0]>(E)`.
    Op {
        op: Ident,
        attrs: Vec<(Ident, Expr)>,
        args: Vec<Expr>,
    },
    /// `plan`: let the budget planner choose (a parameter value).
    Plan,
    /// `none`: an absent optional value.
    None,
}

/// A call argument, positional or named (`rank = 64`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

/// Literals.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// `[1, 0]` in an attribute pattern.
    Ints(Vec<i64>),
}

/// `-x`, `!x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Not,
}

/// Binary operators, by precedence (low to high): `||`; `&&`; `== != < <= > >=`; `+ -`;
/// `* / %`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// `pipeline name { budget ...; run ...; repeat max N { ... } }`
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub name: Ident,
    pub budget: Option<Budget>,
    pub steps: Vec<Step>,
    pub span: Span,
}

/// A size target (planned by the budget planner).
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub kind: BudgetKind,
    pub span: Span,
}

/// `budget ratio 4` (parameters stored, original / compressed), `budget params 80M`,
/// `budget bytes 200MB`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BudgetKind {
    Ratio(f64),
    Params(u64),
    Bytes(u64),
}

/// A pipeline step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `run rule(args)`.
    Run {
        rule: Ident,
        args: Vec<Arg>,
        span: Span,
    },
    /// `repeat max N { steps }`: run the steps until none fires, at most N rounds.
    Repeat {
        max: u32,
        steps: Vec<Step>,
        span: Span,
    },
}

/// hcc's short element-type names in patterns: `f32 f16 bf16 f64 i8 i16 i32 i64 u8 u16 u32
/// u64 bool`; any ONNX textual name (`float`, `int64`, `float8e4m3fn`, ...) is accepted too.
pub fn dtype_from_short(name: &str) -> Option<DType> {
    Some(match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "f64" => DType::F64,
        "i8" => DType::I8,
        "i16" => DType::I16,
        "i32" => DType::I32,
        "i64" => DType::I64,
        "u8" => DType::U8,
        "u16" => DType::U16,
        "u32" => DType::U32,
        "u64" => DType::U64,
        "bool" => DType::Bool,
        other => return DType::from_name(other),
    })
}

/// The multiplier of a byte-size unit: `B`, `KB`/`kB`, `MB`, `GB` (decimal), `KiB`, `MiB`,
/// `GiB` (binary); `""` means bytes. Shared by `budget bytes` and `hcc compile --max-bytes`.
pub fn byte_unit(suffix: &str) -> Option<f64> {
    Some(match suffix {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}
