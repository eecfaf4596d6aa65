//! The functions a rule may call: built-ins (evaluated on the match) and kernels (evaluated by the
//! engine; they compute new constants). The table is data: adding a kernel is one [`Builtin`]
//! entry in [`BUILTINS`] (plus its implementation in the engine).

use std::fmt;

/// A type in the pass language's checker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ty {
    /// A whole number (shape symbols, `numel`, literals like `4`).
    Int,
    /// A number (`0.95`); an `Int` is accepted where a `Float` is expected.
    Float,
    /// `true` / `false`, comparisons.
    Bool,
    /// A string.
    Str,
    /// A value of the graph (an operation's output, a graph input, a constant).
    Value,
    /// A stored constant (initializer or `Constant` output); also a [`Ty::Value`].
    Const,
    /// An attribute value whose kind is known only at match time (bound by `perm = p`); `none`
    /// when the attribute is absent.
    Attr,
    /// `none`.
    None,
    /// A rank choice for `lowrank`: `plan`, or what `energy(p)` returns.
    RankSpec,
    /// Unknown (a rule parameter, or after an error): accepted everywhere.
    Any,
    /// A list of one element type.
    List(&'static Ty),
    /// A fixed-size tuple (`lowrank` returns `(Const, Const)`).
    Tuple(&'static [Ty]),
    /// One of several types (`Const | List<Int>`); `T | none` is how optional values are typed.
    OneOf(&'static [Ty]),
}

impl Ty {
    /// Whether a value of type `actual` may be passed where `self` is expected.
    pub fn accepts(&self, actual: &Ty) -> bool {
        use Ty::*;
        match (self, actual) {
            (Any, _) | (_, Any) => true,
            (OneOf(_), OneOf(acts)) => acts.iter().all(|a| self.accepts(a)),
            (OneOf(alts), a) => alts.iter().any(|t| t.accepts(a)),
            (e, OneOf(acts)) => acts.iter().all(|a| e.accepts(a)),
            (Attr, Int | Float | Str | Bool | None | Attr | RankSpec) => true,
            (Attr, List(e)) => matches!(e, Int | Float | Str | Any),
            // An attribute is checked at match time against what it is passed to.
            (Int | Float | Str | Bool | None, Attr) => true,
            (List(e), Attr) => matches!(e, Int | Float | Str),
            (Float, Int) => true,
            (Value, Const) => true,
            (RankSpec, Int) => true,
            (List(e), List(a)) => e.accepts(a),
            (Tuple(es), Tuple(as_)) => {
                es.len() == as_.len() && es.iter().zip(as_.iter()).all(|(e, a)| e.accepts(a))
            }
            (e, a) => e == a,
        }
    }

    /// True for `Value`, `Const`, and anything that may be one.
    pub fn is_graph_value(&self) -> bool {
        match self {
            Ty::Value | Ty::Const | Ty::Any => true,
            Ty::OneOf(alts) => alts.iter().all(|a| a.is_graph_value() || *a == Ty::None),
            _ => false,
        }
    }

    /// A phrase for messages: "a stored constant (Const)".
    pub fn describe(&self) -> String {
        match self {
            Ty::Int => "a whole number (Int)".into(),
            Ty::Float => "a number (Float)".into(),
            Ty::Bool => "a condition (Bool)".into(),
            Ty::Str => "a string (Str)".into(),
            Ty::Value => "a graph value (Value)".into(),
            Ty::Const => "a stored constant (Const)".into(),
            Ty::Attr => "an attribute value (Attr)".into(),
            Ty::None => "`none`".into(),
            Ty::RankSpec => "a rank choice (RankSpec)".into(),
            Ty::Any => "anything".into(),
            Ty::List(_) | Ty::Tuple(_) | Ty::OneOf(_) => format!("`{self}`"),
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Int => f.write_str("Int"),
            Ty::Float => f.write_str("Float"),
            Ty::Bool => f.write_str("Bool"),
            Ty::Str => f.write_str("Str"),
            Ty::Value => f.write_str("Value"),
            Ty::Const => f.write_str("Const"),
            Ty::Attr => f.write_str("Attr"),
            Ty::None => f.write_str("none"),
            Ty::RankSpec => f.write_str("RankSpec"),
            Ty::Any => f.write_str("Any"),
            Ty::List(e) => write!(f, "List<{e}>"),
            Ty::Tuple(es) => {
                f.write_str("(")?;
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str(")")
            }
            Ty::OneOf(alts) => {
                for (i, e) in alts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// A parameter's default value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    /// `none`.
    None,
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// A string.
    Str(&'static str),
}

impl fmt::Display for Default {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Default::None => f.write_str("none"),
            Default::Int(v) => write!(f, "{v}"),
            Default::Float(v) => write!(f, "{v}"),
            Default::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One parameter of a built-in function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BParam {
    /// Its name (usable as a named argument: `lowrank(W, rank = 64)`).
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// Its default, if it may be left out.
    pub default: Option<Default>,
}

/// Whether a function is evaluated on the match or by a numeric kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinKind {
    /// Evaluated on the matched graph (shapes, use counts, names).
    Builtin,
    /// A numeric kernel: computes new constants; results are memoised per (kernel, constant
    /// content, parameters) and stored once.
    Kernel,
}

/// A function's signature and one-line documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Builtin {
    /// The name it is called by.
    pub name: &'static str,
    /// Built-in or kernel.
    pub kind: BuiltinKind,
    /// Parameters, in order; those with defaults come last.
    pub params: &'static [BParam],
    /// What it returns.
    pub ret: Ty,
    /// One line of documentation.
    pub doc: &'static str,
}

impl Builtin {
    /// The number of parameters that must be given.
    pub fn required(&self) -> usize {
        self.params.iter().filter(|p| p.default.is_none()).count()
    }

    /// `name(a: T, b: U = d) -> R`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.default {
                Some(d) => format!("{}: {} = {d}", p.name, p.ty),
                None => format!("{}: {}", p.name, p.ty),
            })
            .collect();
        format!("{}({}) -> {}", self.name, params.join(", "), self.ret)
    }
}

const fn p(name: &'static str, ty: Ty) -> BParam {
    BParam {
        name,
        ty,
        default: None,
    }
}

const fn opt(name: &'static str, ty: Ty, default: Default) -> BParam {
    BParam {
        name,
        ty,
        default: Some(default),
    }
}

const INTS_OR_CONST: Ty = Ty::OneOf(&[Ty::Const, Ty::List(&Ty::Int)]);
const INTS_OR_CONST_OR_NONE: Ty = Ty::OneOf(&[Ty::Const, Ty::List(&Ty::Int), Ty::None]);

/// Every function a rule may call, sorted by kind then name.
pub static BUILTINS: &[Builtin] = &[
    // ------------------------------------------------------------------ built-ins
    Builtin {
        name: "contains",
        kind: BuiltinKind::Builtin,
        params: &[p("s", Ty::Str), p("part", Ty::Str)],
        ret: Ty::Bool,
        doc: "Whether `s` contains `part`.",
    },
    Builtin {
        name: "dim",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value), p("axis", Ty::Int)],
        ret: Ty::Int,
        doc: "The size of dimension `axis` (negative counts from the end); the match fails if it \
              is not a known number.",
    },
    Builtin {
        name: "ends_with",
        kind: BuiltinKind::Builtin,
        params: &[p("s", Ty::Str), p("suffix", Ty::Str)],
        ret: Ty::Bool,
        doc: "Whether `s` ends with `suffix`.",
    },
    Builtin {
        name: "energy",
        kind: BuiltinKind::Builtin,
        params: &[p("fraction", Ty::Float)],
        ret: Ty::RankSpec,
        doc: "A rank choice for `lowrank`: the smallest rank keeping this fraction of the \
              squared singular values (0 < fraction <= 1).",
    },
    Builtin {
        name: "input",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value), p("i", Ty::Int)],
        ret: Ty::Value,
        doc: "Input `i` of the operation defining `x`; the match fails if `x` is not an \
              operation's output or that input is absent. With `op`, checks that a value bound in \
              one place of a pattern is the same computation as a nested pattern elsewhere.",
    },
    Builtin {
        name: "is_output",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Bool,
        doc: "Whether `x` is an output of the graph.",
    },
    Builtin {
        name: "len",
        kind: BuiltinKind::Builtin,
        params: &[p("xs", Ty::List(&Ty::Any))],
        ret: Ty::Int,
        doc: "The number of elements of a list (`ys...`, `xs...`, a list literal).",
    },
    Builtin {
        name: "name",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Str,
        doc: "The value's name in the model.",
    },
    Builtin {
        name: "numel",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Int,
        doc: "The number of elements; the match fails if the shape is not fully known.",
    },
    Builtin {
        name: "op",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Str,
        doc: "The type of the operation defining `x` (`\"MatMul\"`); `\"\"` for a graph input or \
              a stored constant.",
    },
    Builtin {
        name: "rank",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Int,
        doc: "The number of dimensions; the match fails if it is not known.",
    },
    Builtin {
        name: "starts_with",
        kind: BuiltinKind::Builtin,
        params: &[p("s", Ty::Str), p("prefix", Ty::Str)],
        ret: Ty::Bool,
        doc: "Whether `s` starts with `prefix`.",
    },
    Builtin {
        name: "uses",
        kind: BuiltinKind::Builtin,
        params: &[p("x", Ty::Value)],
        ret: Ty::Int,
        doc: "How many operation inputs read `x` (a graph output counts as one more).",
    },
    // ------------------------------------------------------------------ kernels
    Builtin {
        name: "concat",
        kind: BuiltinKind::Kernel,
        params: &[p("xs", Ty::List(&Ty::Const)), p("axis", Ty::Int)],
        ret: Ty::Const,
        doc: "The constants joined along `axis` (as ONNX `Concat`).",
    },
    Builtin {
        name: "lowrank",
        kind: BuiltinKind::Kernel,
        params: &[
            p("w", Ty::Const),
            p("rank", Ty::RankSpec),
            opt("whiten", Ty::OneOf(&[Ty::Value, Ty::None]), Default::None),
        ],
        ret: Ty::Tuple(&[Ty::Const, Ty::Const]),
        doc: "Truncated SVD of a [K, N] matrix: (A [K, r], B [r, N]) with A·B ≈ w; `rank` is an \
              Int, `plan` (chosen by the budget planner) or `energy(p)`. With `whiten = x` (the \
              input of `x·w`) and calibration data (`--calib`), the factors preserve the site's \
              outputs on that data instead of the weights (truncation-aware whitening).",
    },
    Builtin {
        name: "lowrank_compact",
        kind: BuiltinKind::Kernel,
        params: &[
            p("w", Ty::Const),
            p("rank", Ty::RankSpec),
            opt("whiten", Ty::OneOf(&[Ty::Value, Ty::None]), Default::None),
        ],
        ret: Ty::Tuple(&[Ty::Const, Ty::Const, Ty::Const]),
        doc: "`lowrank` stored compactly: (A [K, r], Z [r, N - r], cols [N]) with \
              x·w ≈ Gather(Concat(x·A, x·A·Z), cols) along the last axis: r·(K + N - r) + N \
              parameters instead of r·(K + N), the same product (r columns of B become the \
              identity; they are chosen by pivoted QR).",
    },
    Builtin {
        name: "lowrank_hot",
        kind: BuiltinKind::Kernel,
        params: &[
            p("w", Ty::Const),
            p("rank", Ty::RankSpec),
            opt("whiten", Ty::OneOf(&[Ty::Value, Ty::None]), Default::None),
        ],
        ret: Ty::Tuple(&[Ty::Const, Ty::Const, Ty::Const, Ty::Const, Ty::Const]),
        doc: "`lowrank` of a token table [V, D] read by `Gather(w, ids)`, keeping the rows \
              the calibration data reads most exactly: (hot [V] int32, H [K + 1, D], cold [V] \
              int32, T [V - K + 1, r], P [r, D]) with w[t] ≈ H[hot[t]] + T[cold[t]]·P (the \
              last rows of H and T are zero). The planner chooses K and r within the budget \
              the table's plain rank would store; it fails (the rule does not fire) where the \
              plain form is better or there are no token counts (`--calib`).",
    },
    Builtin {
        name: "pq",
        kind: BuiltinKind::Kernel,
        params: &[
            p("w", Ty::Const),
            p("rank", Ty::RankSpec),
            opt("whiten", Ty::OneOf(&[Ty::Value, Ty::None]), Default::None),
        ],
        ret: Ty::Tuple(&[Ty::Const, Ty::Const, Ty::Const, Ty::Const, Ty::Const, Ty::Const]),
        doc: "A token table [V, D] read by `Gather(w, ids)`, product-quantized: (codes \
              [V, M] uint8, offsets [M] int64, codebook [M·256, D/M] float, dim [1] int64, \
              map [V] int32, X [K + 1, D] float) with w[t] = the codewords codebook[offsets[s] + \
              codes[t, s]] side by side + X[map[t]], found by k-means weighted by the \
              calibration data's token counts (uniform without `--calib`); X corrects the K rows \
              with the largest weighted error exactly (its last row is zero). The planner \
              weighs it against the plain and hot forms at the table's planned parameters; it \
              fails (the rule does not fire) where another form is better.",
    },
    Builtin {
        name: "mask",
        kind: BuiltinKind::Kernel,
        params: &[
            p("w", Ty::Const),
            p("sparsity", Ty::Float),
            opt("pattern", Ty::Str, Default::Str("unstructured")),
        ],
        ret: Ty::Const,
        doc: "A 2-D f32 `w` with its smallest-magnitude entries zeroed: `pattern` is \
              \"unstructured\" (exact count per tensor), \"N:M\" such as \"2:4\" (N kept of every M \
              along dim 0, K of a MatMul weight; `sparsity` ignored), \"rows\" or \"cols\". The \
              file stores it sparse only where that is smaller.",
    },
    Builtin {
        name: "neurons",
        kind: BuiltinKind::Kernel,
        params: &[
            p("up", Ty::Const),
            p("down", Ty::Const),
            p("sparsity", Ty::Float),
            opt("gate", Ty::OneOf(&[Ty::Const, Ty::None]), Default::None),
            opt("bias", Ty::OneOf(&[Ty::Const, Ty::None]), Default::None),
        ],
        ret: Ty::Const,
        doc: "The hidden neurons of an MLP block to keep when a `sparsity` fraction is removed: \
              ascending int64 indices into F of `up` [D, F] (and `gate` [D, F], `bias` [F]) and \
              `down` [F, E], least important (‖up col‖·‖down row‖·‖gate col‖) removed first.",
    },
    Builtin {
        name: "slice",
        kind: BuiltinKind::Kernel,
        params: &[
            p("x", Ty::Const),
            p("starts", INTS_OR_CONST),
            p("ends", INTS_OR_CONST),
            opt("axes", INTS_OR_CONST_OR_NONE, Default::None),
            opt("steps", INTS_OR_CONST_OR_NONE, Default::None),
        ],
        ret: Ty::Const,
        doc: "The constant sliced as ONNX `Slice` would.",
    },
    Builtin {
        name: "split",
        kind: BuiltinKind::Kernel,
        params: &[
            p("x", Ty::Const),
            p("axis", Ty::OneOf(&[Ty::Int, Ty::Attr])),
            p("sizes", Ty::OneOf(&[Ty::Const, Ty::None])),
            p("n", Ty::Int),
        ],
        ret: Ty::List(&Ty::Const),
        doc: "The constant split as ONNX `Split` would into `n` parts (`sizes` as its second \
              input, or `none` for equal parts).",
    },
    Builtin {
        name: "stored",
        kind: BuiltinKind::Kernel,
        params: &[p("x", Ty::Const)],
        ret: Ty::Const,
        doc: "An identical constant stored earlier in the model than the matched one; the match \
              fails if there is none.",
    },
    Builtin {
        name: "take",
        kind: BuiltinKind::Kernel,
        params: &[p("x", Ty::Const), p("indices", INTS_OR_CONST), p("axis", Ty::Int)],
        ret: Ty::Const,
        doc: "The slices of the constant at `indices` along `axis`, in that order (as ONNX \
              `Gather` with constant indices).",
    },
    Builtin {
        name: "transpose",
        kind: BuiltinKind::Kernel,
        params: &[
            p("x", Ty::Const),
            opt(
                "perm",
                Ty::OneOf(&[Ty::Attr, Ty::List(&Ty::Int)]),
                Default::None,
            ),
        ],
        ret: Ty::Const,
        doc: "The constant transposed as ONNX `Transpose` would (`none`: reverse the axes).",
    },
];

/// Looks a function up by name.
pub fn lookup(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The builtins and kernels as a Markdown table (for docs/PASS_LANGUAGE.md).
pub fn markdown_table() -> String {
    let mut out = String::from("| Function | Kind | Description |\n|-|-|-|\n");
    for b in BUILTINS {
        let kind = match b.kind {
            BuiltinKind::Builtin => "built-in",
            BuiltinKind::Kernel => "kernel",
        };
        let sig = b.signature().replace('|', "\\|");
        out.push_str(&format!("| `{sig}` | {kind} | {} |\n", b.doc));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_well_formed() {
        for b in BUILTINS {
            // Defaults come last.
            let first_default = b.params.iter().position(|p| p.default.is_some());
            if let Some(i) = first_default {
                assert!(
                    b.params[i..].iter().all(|p| p.default.is_some()),
                    "{}",
                    b.name
                );
            }
            assert!(!b.doc.is_empty());
            assert_eq!(
                BUILTINS.iter().filter(|c| c.name == b.name).count(),
                1,
                "{}",
                b.name
            );
        }
        assert_eq!(
            lookup("lowrank").map(|b| b.signature()),
            Some(
                "lowrank(w: Const, rank: RankSpec, whiten: Value | none = none) -> (Const, Const)"
                    .to_string()
            )
        );
    }

    #[test]
    fn assignability() {
        assert!(Ty::Value.accepts(&Ty::Const));
        assert!(!Ty::Const.accepts(&Ty::Value));
        assert!(Ty::Float.accepts(&Ty::Int));
        assert!(!Ty::Int.accepts(&Ty::Float));
        assert!(Ty::List(&Ty::Value).accepts(&Ty::List(&Ty::Const)));
        assert!(INTS_OR_CONST.accepts(&Ty::List(&Ty::Int)));
        assert!(!INTS_OR_CONST.accepts(&Ty::None));
        assert!(INTS_OR_CONST_OR_NONE.accepts(&Ty::OneOf(&[Ty::Const, Ty::None])));
        assert!(Ty::Int.accepts(&Ty::Attr));
        assert!(!Ty::Value.accepts(&Ty::Attr));
        assert!(Ty::RankSpec.accepts(&Ty::Int));
    }
}

#[cfg(test)]
mod doc_tests {
    /// docs/PASS_LANGUAGE.md carries this table verbatim: regenerate it from here.
    #[test]
    fn reference_has_the_table() {
        let doc = include_str!("../../docs/PASS_LANGUAGE.md");
        let table = super::markdown_table();
        assert!(
            doc.contains(&table),
            "docs/PASS_LANGUAGE.md lacks the current builtins table; paste:\n{table}"
        );
    }
}
