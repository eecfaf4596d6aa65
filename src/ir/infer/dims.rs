//! Arithmetic on dimensions: products of symbols (monomials), broadcasting, merging.

use super::{bad, Fail, R};
use crate::ir::Dim;

/// A dimension as `c * s1 * s2 * ...` with the symbols sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mono {
    c: i64,
    syms: Vec<String>,
}

impl Mono {
    /// The monomial of a dimension; `None` for [`Dim::Unknown`]. A symbol spelled `a*b` (as this
    /// module writes products) is read back as a product.
    pub(super) fn of(d: &Dim) -> Option<Mono> {
        match d {
            Dim::Known(k) => Some(Mono {
                c: *k,
                syms: Vec::new(),
            }),
            Dim::Sym(s) => {
                let mut c = 1i64;
                let mut syms = Vec::new();
                for part in s.split('*') {
                    match part.parse::<i64>() {
                        Ok(k) => c = c.checked_mul(k)?,
                        Err(_) => syms.push(part.to_string()),
                    }
                }
                syms.sort();
                Some(Mono { c, syms })
            }
            Dim::Unknown => None,
        }
    }

    /// Back to a dimension: a number, or a symbol spelling the product (`a*b`, `2*seq`; a
    /// coefficient other than 1 comes first). Shapes never keep coefficients: see [`public`].
    pub(super) fn dim(&self) -> Dim {
        if self.syms.is_empty() || self.c == 0 {
            Dim::Known(self.c)
        } else if self.c == 1 {
            Dim::Sym(self.syms.join("*"))
        } else {
            Dim::Sym(format!("{}*{}", self.c, self.syms.join("*")))
        }
    }

    fn mul(&self, o: &Mono) -> Option<Mono> {
        let mut syms = self.syms.clone();
        syms.extend(o.syms.iter().cloned());
        syms.sort();
        Some(Mono {
            c: self.c.checked_mul(o.c)?,
            syms,
        })
    }

    /// Exact division; `None` unless `o` divides `self`.
    fn div(&self, o: &Mono) -> Option<Mono> {
        if o.c == 0 || self.c.checked_rem(o.c)? != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for s in &o.syms {
            let i = syms.iter().position(|x| x == s)?;
            syms.remove(i);
        }
        Some(Mono {
            c: self.c.checked_div(o.c)?,
            syms,
        })
    }
}

/// A dimension as it may appear in a shape: products of symbols stay, a product with a
/// numeric coefficient (`2*seq`, which shape-tensor contents may carry) becomes unknown.
pub(super) fn public(d: Dim) -> Dim {
    match &d {
        Dim::Sym(s) if s.split('*').any(|p| p.parse::<i64>().is_ok()) => Dim::Unknown,
        _ => d,
    }
}

/// Product of dims as a monomial; `None` if any is unknown or on overflow.
pub(super) fn product(dims: &[Dim]) -> Option<Mono> {
    dims.iter().try_fold(
        Mono {
            c: 1,
            syms: Vec::new(),
        },
        |acc, d| acc.mul(&Mono::of(d)?),
    )
}

/// Product of dims as a dimension.
pub(super) fn product_dim(dims: &[Dim]) -> Dim {
    product(dims).map_or(Dim::Unknown, |m| m.dim())
}

/// `a / b` exactly, as a dimension; `None` when it does not divide (or is unknown).
pub(super) fn div_exact(a: &Mono, b: &Mono) -> Option<Dim> {
    a.div(b).map(|m| m.dim())
}

/// `a + b` on shape-tensor contents.
pub(super) fn add(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_add(*y).map_or(Dim::Unknown, Dim::Known),
        (Dim::Known(0), d) | (d, Dim::Known(0)) => d.clone(),
        _ => Dim::Unknown,
    }
}

/// `a - b` on shape-tensor contents.
pub(super) fn sub(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_sub(*y).map_or(Dim::Unknown, Dim::Known),
        (d, Dim::Known(0)) => d.clone(),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Known(0),
        _ => Dim::Unknown,
    }
}

/// `a * b` on shape-tensor contents.
pub(super) fn mul(a: &Dim, b: &Dim) -> Dim {
    match (Mono::of(a), Mono::of(b)) {
        (Some(x), Some(y)) => x.mul(&y).map_or(Dim::Unknown, |m| m.dim()),
        _ => match (a, b) {
            (Dim::Known(0), _) | (_, Dim::Known(0)) => Dim::Known(0),
            _ => Dim::Unknown,
        },
    }
}

/// `a / b` (integer division, truncating as ONNX runtimes do) on shape-tensor contents.
pub(super) fn div(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x.checked_div(*y).map_or(Dim::Unknown, Dim::Known),
        _ => match (Mono::of(a), Mono::of(b)) {
            (Some(x), Some(y)) => div_exact(&x, &y).unwrap_or(Dim::Unknown),
            _ => Dim::Unknown,
        },
    }
}

/// `a == b` as 1/0 on shape-tensor contents. Symbols stand for sizes, so never negative.
pub(super) fn eq(a: &Dim, b: &Dim) -> Dim {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => Dim::Known(i64::from(x == y)),
        (Dim::Sym(x), Dim::Sym(y)) if x == y => Dim::Known(1),
        (Dim::Sym(_), Dim::Known(k)) | (Dim::Known(k), Dim::Sym(_)) if *k < 0 => Dim::Known(0),
        _ => Dim::Unknown,
    }
}

/// One output dimension of numpy-style broadcasting.
pub(super) fn broadcast_dim(a: &Dim, b: &Dim) -> R<Dim> {
    Ok(match (a, b) {
        _ if a == b && *a != Dim::Unknown => a.clone(),
        (Dim::Known(1), d) | (d, Dim::Known(1)) => d.clone(),
        (Dim::Known(x), Dim::Known(y)) => return bad(format!("cannot broadcast {x} with {y}")),
        (Dim::Known(x), _) | (_, Dim::Known(x)) => Dim::Known(*x),
        _ => Dim::Unknown,
    })
}

/// Numpy-style (multidirectional) broadcasting of shapes.
pub(super) fn broadcast(shapes: &[&[Dim]]) -> R<Vec<Dim>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![Dim::Known(1); rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[off + i] = broadcast_dim(&out[off + i], d).map_err(|e| match e {
                Fail::Bad(m) => Fail::Bad(format!("{m} (shapes {})", fmt_shapes(shapes))),
                Fail::Missing => Fail::Missing,
            })?;
        }
    }
    Ok(out)
}

/// Two dims that must be equal (Concat's other axes, MatMul's inner dimension): the more
/// specific one, or an error when both are known and differ.
pub(super) fn unify(a: &Dim, b: &Dim) -> R<Dim> {
    Ok(match (a, b) {
        (Dim::Known(x), Dim::Known(y)) if x != y => {
            return bad(format!("dimension {x} does not match {y}"))
        }
        (Dim::Known(_), _) => a.clone(),
        (_, Dim::Known(_)) => b.clone(),
        (Dim::Sym(_), _) => a.clone(),
        _ => b.clone(),
    })
}

/// `[a,b]` style rendering of shapes, for messages.
pub(super) fn fmt_shape(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

fn fmt_shapes(shapes: &[&[Dim]]) -> String {
    let parts: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
    parts.join(" and ")
}
