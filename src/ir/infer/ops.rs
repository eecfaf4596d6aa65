//! Per-operator inference rules.

use super::dims::{self, broadcast, fmt_shape, product, product_dim, unify};
use super::{bad, tensor_content, Content, Cx, Fail, Out, MAX_CONTENT, R};
use crate::ir::{AttrValue, DType, Dim, Shape};

/// The rule for the node's operator: `None` when the operator is unknown.
pub(super) fn infer(cx: &Cx) -> Option<R<Vec<Out>>> {
    let op = cx.node.op_type.as_str();
    Some(match op {
        "Identity" => unary(cx, Unary::Keep),
        "Neg" => unary(cx, Unary::Neg),
        "Abs" => unary(cx, Unary::Abs),
        "Erf"
        | "Tanh"
        | "Sigmoid"
        | "Sqrt"
        | "Relu"
        | "Gelu"
        | "Exp"
        | "Log"
        | "Reciprocal"
        | "Floor"
        | "Ceil"
        | "Round"
        | "Sin"
        | "Cos"
        | "Tan"
        | "Asin"
        | "Acos"
        | "Atan"
        | "Sinh"
        | "Cosh"
        | "Asinh"
        | "Acosh"
        | "Atanh"
        | "Softplus"
        | "Softsign"
        | "HardSigmoid"
        | "HardSwish"
        | "LeakyRelu"
        | "Elu"
        | "Selu"
        | "Celu"
        | "Mish"
        | "Sign"
        | "ThresholdedRelu"
        | "Softmax"
        | "LogSoftmax"
        | "Hardmax"
        | "Trilu"
        | "Clip"
        | "CumSum"
        | "BitwiseNot"
        | "Shrink"
        | "LpNormalization"
        | "PRelu"
        | "ScatterND"
        | "ScatterElements"
        | "Scatter"
        | "InstanceNormalization"
        | "BatchNormalization"
        | "MeanVarianceNormalization"
        | "RMSNormalization" => unary(cx, Unary::Other),
        "Not" => unary(cx, Unary::Bool),
        "IsNaN" | "IsInf" => unary(cx, Unary::ToBool),
        "Dropout" => dropout(cx),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Mod" | "Sum" | "Mean"
        | "BitShift" | "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" => elementwise(cx, op),
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            elementwise(cx, op)
        }
        "Where" => where_(cx),
        "MatMul" => matmul(cx),
        "Gemm" => gemm(cx),
        "Gather" => gather(cx),
        "GatherElements" => gather_elements(cx),
        "Transpose" => transpose(cx),
        "Reshape" => reshape(cx),
        "Split" => split(cx),
        "Concat" => concat(cx),
        "Unsqueeze" => unsqueeze(cx),
        "Squeeze" => squeeze(cx),
        "Slice" => slice(cx),
        "LayerNormalization" => layer_norm(cx),
        "Cast" => cast(cx),
        "CastLike" => Ok(vec![Out::new(cx.elem(1), cx.shape(0).ok())]),
        "Shape" => shape_op(cx),
        "Size" => size(cx),
        "Constant" => constant(cx),
        "ConstantOfShape" => constant_of_shape(cx),
        "Expand" => expand(cx),
        "Range" => range(cx),
        "Flatten" => flatten(cx),
        "Tile" => tile(cx),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
        | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare" => reduce(cx, op),
        "ArgMax" | "ArgMin" => argmax(cx),
        _ => return None,
    })
}

fn one(o: Out) -> R<Vec<Out>> {
    Ok(vec![o])
}

/// Normalise `axis` for a tensor of `rank` dims.
fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return bad(format!("axis {axis} is out of range for rank {rank}"));
    }
    Ok((if axis < 0 { axis + r } else { axis }) as usize)
}

/// Normalise a list of distinct axes.
fn norm_axes(axes: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let a = norm_axis(a, rank)?;
        if out.contains(&a) {
            return bad(format!("axis {a} is repeated"));
        }
        out.push(a);
    }
    Ok(out)
}

fn known_items(items: &[i64]) -> Vec<Dim> {
    items.iter().map(|&v| Dim::Known(v)).collect()
}

/// Tracked contents that fit the size limit.
fn content(scalar: bool, items: Vec<Dim>) -> Option<Content> {
    (items.len() <= MAX_CONTENT).then_some(Content { scalar, items })
}

#[derive(Clone, Copy, PartialEq)]
enum Unary {
    /// Identity: contents carried through.
    Keep,
    Neg,
    Abs,
    /// Same type as the input.
    Other,
    /// Bool in, bool out.
    Bool,
    /// Bool out.
    ToBool,
}

fn unary(cx: &Cx, kind: Unary) -> R<Vec<Out>> {
    let elem = match kind {
        Unary::ToBool | Unary::Bool => Some(DType::Bool),
        _ => cx.elem(0),
    };
    let shape = cx.shape(0).ok();
    if elem.is_none() && shape.is_none() {
        return Err(Fail::Missing);
    }
    let c = cx.content(0).and_then(|c| {
        let items = match kind {
            Unary::Keep => c.items.clone(),
            Unary::Neg => c
                .items
                .iter()
                .map(|d| dims::sub(&Dim::Known(0), d))
                .collect(),
            Unary::Abs => c
                .items
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => k.checked_abs().map_or(Dim::Unknown, Dim::Known),
                    Dim::Sym(_) => d.clone(),
                    Dim::Unknown => Dim::Unknown,
                })
                .collect(),
            _ => return None,
        };
        content(c.scalar, items)
    });
    let mut outs = vec![Out::new(elem, shape).with_content(c)];
    // Clip, Trilu and the like have one output; extra ports (none in the spec) stay untyped.
    outs.truncate(cx.n_out().max(1));
    Ok(outs)
}

fn dropout(cx: &Cx) -> R<Vec<Out>> {
    let shape = cx.shape(0).ok();
    Ok(vec![
        Out::new(cx.elem(0), shape.clone()),
        Out::new(Some(DType::Bool), shape),
    ])
}

/// Broadcasting binary and variadic ops, with contents for the integer arithmetic.
fn elementwise(cx: &Cx, op: &str) -> R<Vec<Out>> {
    let present: Vec<usize> = (0..cx.node.inputs().len()).filter(|&i| cx.has(i)).collect();
    if present.is_empty() {
        return bad("no inputs");
    }
    let elem = match op {
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            Some(DType::Bool)
        }
        "Pow" => cx.elem(0),
        _ => present.iter().find_map(|&i| cx.elem(i)),
    };
    let shapes: Option<Vec<Shape>> = present.iter().map(|&i| cx.shape(i).ok()).collect();
    let shape = match &shapes {
        Some(s) => {
            let refs: Vec<&[Dim]> = s.iter().map(Vec::as_slice).collect();
            Some(broadcast(&refs)?)
        }
        None => None,
    };
    if elem.is_none() && shape.is_none() {
        return Err(Fail::Missing);
    }
    let f: Option<fn(&Dim, &Dim) -> Dim> = match op {
        "Add" | "Sum" => Some(dims::add),
        "Sub" => Some(dims::sub),
        "Mul" => Some(dims::mul),
        "Div" => Some(dims::div),
        "Equal" => Some(dims::eq),
        "Max" => Some(|a, b| match (a, b) {
            (Dim::Known(x), Dim::Known(y)) => Dim::Known(*x.max(y)),
            _ if a == b => a.clone(),
            _ => Dim::Unknown,
        }),
        "Min" => Some(|a, b| match (a, b) {
            (Dim::Known(x), Dim::Known(y)) => Dim::Known(*x.min(y)),
            _ if a == b => a.clone(),
            _ => Dim::Unknown,
        }),
        _ => None,
    };
    let c = match f {
        Some(f) => {
            let cs: Option<Vec<&Content>> = present.iter().map(|&i| cx.content(i)).collect();
            cs.and_then(|cs| {
                let mut it = cs.into_iter();
                let first = it.next()?.clone();
                it.try_fold(first, |acc, c| zip_content(&acc, c, f))
            })
        }
        None => None,
    };
    one(Out::new(elem, shape).with_content(c))
}

/// Elementwise `f` over two contents with broadcasting.
fn zip_content(a: &Content, b: &Content, f: impl Fn(&Dim, &Dim) -> Dim) -> Option<Content> {
    let (la, lb) = (a.items.len(), b.items.len());
    let n = if la == lb || lb == 1 {
        la
    } else if la == 1 {
        lb
    } else {
        return None;
    };
    let items = (0..n)
        .map(|i| {
            f(
                &a.items[if la == 1 { 0 } else { i }],
                &b.items[if lb == 1 { 0 } else { i }],
            )
        })
        .collect();
    content(a.scalar && b.scalar, items)
}

fn where_(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(1).or_else(|| cx.elem(2));
    let shapes: Option<Vec<Shape>> = (0..3).map(|i| cx.shape(i).ok()).collect();
    let shape = match &shapes {
        Some(s) => Some(broadcast(&[&s[0], &s[1], &s[2]])?),
        None => None,
    };
    if elem.is_none() && shape.is_none() {
        return Err(Fail::Missing);
    }
    let c = match (cx.content(0), cx.content(1), cx.content(2)) {
        (Some(c), Some(x), Some(y)) => where_content(c, x, y),
        _ => None,
    };
    one(Out::new(elem, shape).with_content(c))
}

/// `Where` over tracked contents, with broadcasting.
fn where_content(c: &Content, x: &Content, y: &Content) -> Option<Content> {
    let n = c.items.len().max(x.items.len()).max(y.items.len());
    let at = |v: &Content, i: usize| -> Option<Dim> {
        match v.items.len() {
            1 => v.items.first().cloned(),
            l if l == n => v.items.get(i).cloned(),
            _ => None,
        }
    };
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let (ci, xi, yi) = (at(c, i)?, at(x, i)?, at(y, i)?);
        items.push(match ci {
            Dim::Known(0) => yi,
            Dim::Known(_) => xi,
            _ if xi == yi => xi,
            _ => Dim::Unknown,
        });
    }
    content(c.scalar && x.scalar && y.scalar, items)
}

fn matmul(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let (mut a, mut b) = match (cx.shape(0), cx.shape(1)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return one(Out::new(elem, None)),
    };
    if a.is_empty() || b.is_empty() {
        return bad("MatMul input is a scalar");
    }
    let a_vec = a.len() == 1;
    if a_vec {
        a.insert(0, Dim::Known(1));
    }
    let b_vec = b.len() == 1;
    if b_vec {
        b.push(Dim::Known(1));
    }
    let (ra, rb) = (a.len(), b.len());
    unify(&a[ra - 1], &b[rb - 2]).map_err(|_| {
        Fail::Bad(format!(
            "inner dimensions differ: {} times {}",
            fmt_shape(&a),
            fmt_shape(&b)
        ))
    })?;
    let mut out = broadcast(&[&a[..ra - 2], &b[..rb - 2]])?;
    if !a_vec {
        out.push(a[ra - 2].clone());
    }
    if !b_vec {
        out.push(b[rb - 1].clone());
    }
    one(Out::new(elem, Some(out)))
}

fn gemm(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let (a, b) = match (cx.shape(0), cx.shape(1)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return one(Out::new(elem, None)),
    };
    if a.len() != 2 || b.len() != 2 {
        return bad(format!(
            "Gemm needs 2-D inputs, got {} and {}",
            fmt_shape(&a),
            fmt_shape(&b)
        ));
    }
    let ta = cx.attr_int("transA", 0)? != 0;
    let tb = cx.attr_int("transB", 0)? != 0;
    let (m, ka) = if ta { (&a[1], &a[0]) } else { (&a[0], &a[1]) };
    let (kb, n) = if tb { (&b[1], &b[0]) } else { (&b[0], &b[1]) };
    unify(ka, kb).map_err(|_| {
        Fail::Bad(format!(
            "inner dimensions differ: {} times {}",
            fmt_shape(&a),
            fmt_shape(&b)
        ))
    })?;
    let out = vec![m.clone(), n.clone()];
    if let Ok(c) = cx.shape(2) {
        broadcast(&[&c, &out])?;
    }
    one(Out::new(elem, Some(out)))
}

fn gather(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let (data, idx) = match (cx.shape(0), cx.shape(1)) {
        (Ok(d), Ok(i)) => (d, i),
        _ => return one(Out::new(elem, None)),
    };
    let ax = norm_axis(cx.attr_int("axis", 0)?, data.len())?;
    let mut out: Shape = data[..ax].to_vec();
    out.extend(idx.iter().cloned());
    out.extend(data[ax + 1..].iter().cloned());
    let mut c = None;
    if let (Some(dc), Some(ix)) = (cx.content(0), cx.ints(1)) {
        if !dc.scalar {
            let len = dc.items.len() as i64;
            let mut items = Vec::with_capacity(ix.len());
            for i in ix {
                let j = if i < 0 { i + len } else { i };
                if j < 0 || j >= len {
                    return bad(format!("index {i} is out of range for {len} elements"));
                }
                items.push(dc.items[j as usize].clone());
            }
            c = content(idx.is_empty(), items);
        }
    }
    one(Out::new(elem, Some(out)).with_content(c))
}

fn gather_elements(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let idx = cx.shape(1).ok();
    if let (Ok(d), Some(i)) = (cx.shape(0), &idx) {
        if d.len() != i.len() {
            return bad(format!(
                "data {} and indices {} differ in rank",
                fmt_shape(&d),
                fmt_shape(i)
            ));
        }
        norm_axis(cx.attr_int("axis", 0)?, d.len())?;
    }
    one(Out::new(elem, idx))
}

fn transpose(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, None));
    };
    let perm = match cx.attr_ints("perm")? {
        Some(p) => {
            if p.len() != x.len() {
                return bad(format!("perm {p:?} does not fit rank {}", x.len()));
            }
            norm_axes(&p, x.len())?
        }
        None => (0..x.len()).rev().collect(),
    };
    one(Out::new(
        elem,
        Some(perm.iter().map(|&i| x[i].clone()).collect()),
    ))
}

fn reshape(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let data = cx.shape(0).ok();
    let Some(target) = cx.content(1) else {
        let shape = cx.len1(1).map(|k| vec![Dim::Unknown; k]);
        return one(Out::new(elem, shape));
    };
    if target.scalar {
        return bad("the shape input is a scalar");
    }
    let allowzero = cx.opset >= 14 && cx.attr_int("allowzero", 0)? != 0;
    let mut out = Vec::with_capacity(target.items.len());
    let mut infer_at = None;
    for (i, d) in target.items.iter().enumerate() {
        match d {
            Dim::Known(0) if !allowzero => match &data {
                Some(x) => match x.get(i) {
                    Some(d) => out.push(d.clone()),
                    None => {
                        return bad(format!(
                            "shape entry {i} copies a dim the input (rank {}) lacks",
                            x.len()
                        ))
                    }
                },
                None => out.push(Dim::Unknown),
            },
            Dim::Known(-1) => {
                if infer_at.is_some() {
                    return bad("more than one -1 in the shape");
                }
                infer_at = Some(i);
                out.push(Dim::Unknown);
            }
            Dim::Known(k) if *k < -1 => return bad(format!("invalid shape entry {k}")),
            d => out.push(d.clone()),
        }
    }
    let total = data.as_deref().and_then(product);
    if let Some(i) = infer_at {
        let mut rest = out.clone();
        rest.remove(i);
        if let (Some(t), Some(r)) = (&total, product(&rest)) {
            out[i] = match dims::div_exact(t, &r) {
                Some(d) => d,
                None => {
                    if let (Dim::Known(_), Dim::Known(b)) = (t.dim(), r.dim()) {
                        if b != 0 {
                            return bad(format!(
                                "cannot reshape {} into {}",
                                fmt_shape(data.as_deref().unwrap_or(&[])),
                                fmt_shape(&target.items)
                            ));
                        }
                    }
                    Dim::Unknown
                }
            };
        }
    } else if let (Some(Dim::Known(a)), Some(Dim::Known(b))) =
        (total.map(|t| t.dim()), product(&out).map(|p| p.dim()))
    {
        if a != b {
            return bad(format!(
                "cannot reshape {} into {}",
                fmt_shape(data.as_deref().unwrap_or(&[])),
                fmt_shape(&target.items)
            ));
        }
    }
    let c = match cx.content(0) {
        Some(dc) if out.len() <= 1 => content(out.is_empty(), dc.items.clone()),
        _ => None,
    };
    one(Out::new(elem, Some(out)).with_content(c))
}

fn split(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let n = cx.n_out();
    let Ok(data) = cx.shape(0) else {
        return Ok(vec![Out::new(elem, None); n]);
    };
    let ax = norm_axis(cx.attr_int("axis", 0)?, data.len())?;
    let d = data[ax].clone();
    let sizes: Option<Vec<Dim>> = if cx.opset >= 13 && cx.has(1) {
        cx.content(1).map(|c| c.items.clone())
    } else if let (true, Some(s)) = (cx.opset < 13, cx.attr_ints("split")?) {
        Some(known_items(&s))
    } else {
        let parts = if cx.opset >= 18 {
            match cx.node.attr("num_outputs") {
                Some(AttrValue::Int(k)) => *k,
                Some(_) => return bad("attribute 'num_outputs' is not an int"),
                None => n as i64,
            }
        } else {
            n as i64
        };
        if parts <= 0 || parts as usize != n {
            return bad(format!("{parts} parts for {n} outputs"));
        }
        match d {
            Dim::Known(k) => {
                if k % parts == 0 {
                    Some(vec![Dim::Known(k / parts); n])
                } else if cx.opset >= 18 && cx.node.attr("num_outputs").is_some() {
                    let chunk = (k + parts - 1) / parts;
                    let last = k - chunk * (parts - 1);
                    if last < 0 {
                        return bad(format!("cannot split {k} into {parts} parts"));
                    }
                    let mut v = vec![Dim::Known(chunk); n - 1];
                    v.push(Dim::Known(last));
                    Some(v)
                } else {
                    return bad(format!("cannot split {k} into {parts} equal parts"));
                }
            }
            _ if n == 1 => Some(vec![d.clone()]),
            _ => None,
        }
    };
    let Some(sizes) = sizes else {
        let mut s = data.clone();
        s[ax] = Dim::Unknown;
        return Ok(vec![Out::new(elem, Some(s)); n]);
    };
    if sizes.len() != n {
        return bad(format!("{} split sizes for {n} outputs", sizes.len()));
    }
    let sum = sizes
        .iter()
        .try_fold(0i64, |acc, s| acc.checked_add(s.known()?));
    if let (Dim::Known(k), Some(sum)) = (&d, sum) {
        if sum != *k {
            return bad(format!("split sizes sum to {sum}, the axis has {k}"));
        }
    }
    let src = cx.content(0).filter(|c| !c.scalar);
    let mut start = 0usize;
    let mut outs = Vec::with_capacity(n);
    for s in sizes {
        if let Dim::Known(k) = s {
            if k < 0 {
                return bad(format!("negative split size {k}"));
            }
        }
        let mut shape = data.clone();
        shape[ax] = s.clone();
        let c = match (src, s.known()) {
            (Some(c), Some(k)) => {
                let end = start.saturating_add(k as usize);
                let items = c.items.get(start..end).map(<[Dim]>::to_vec);
                start = end;
                items.and_then(|i| content(false, i))
            }
            _ => None,
        };
        outs.push(Out::new(elem, Some(shape)).with_content(c));
    }
    Ok(outs)
}

fn concat(cx: &Cx) -> R<Vec<Out>> {
    let present: Vec<usize> = (0..cx.node.inputs().len()).filter(|&i| cx.has(i)).collect();
    let elem = present.iter().find_map(|&i| cx.elem(i));
    let Some(axis) = cx.node.attr("axis") else {
        return bad("attribute 'axis' is missing");
    };
    let AttrValue::Int(axis) = *axis else {
        return bad("attribute 'axis' is not an int");
    };
    if present.is_empty() {
        return bad("no inputs");
    }
    let shapes: Option<Vec<Shape>> = present.iter().map(|&i| cx.shape(i).ok()).collect();
    let Some(shapes) = shapes else {
        // The rank is that of any input whose rank is known.
        let rank = present
            .iter()
            .find_map(|&i| cx.shape(i).ok())
            .map(|s| s.len());
        return one(Out::new(elem, rank.map(|r| vec![Dim::Unknown; r])));
    };
    let rank = shapes[0].len();
    if let Some(s) = shapes.iter().find(|s| s.len() != rank) {
        return bad(format!(
            "inputs differ in rank: {} and {}",
            fmt_shape(&shapes[0]),
            fmt_shape(s)
        ));
    }
    let ax = norm_axis(axis, rank)?;
    let mut out = shapes[0].clone();
    for s in &shapes[1..] {
        for (j, d) in s.iter().enumerate() {
            if j != ax {
                out[j] = unify(&out[j], d).map_err(|_| {
                    Fail::Bad(format!(
                        "inputs differ off the axis: {} and {}",
                        fmt_shape(&shapes[0]),
                        fmt_shape(s)
                    ))
                })?;
            }
        }
    }
    let along: Vec<&Dim> = shapes.iter().map(|s| &s[ax]).collect();
    out[ax] = along
        .iter()
        .skip(1)
        .fold(along[0].clone(), |acc, d| dims::add(&acc, d));
    let cs: Option<Vec<&Content>> = present.iter().map(|&i| cx.content(i)).collect();
    let c = cs.filter(|cs| cs.iter().all(|c| !c.scalar)).and_then(|cs| {
        let items: Vec<Dim> = cs.iter().flat_map(|c| c.items.iter().cloned()).collect();
        content(false, items)
    });
    one(Out::new(elem, Some(out)).with_content(c))
}

/// Axes from the attribute (before `input_from`) or from input 1 (from `input_from` on).
/// `Ok(None)`: not given. `Err(Missing)`: given as an input of unknown contents.
fn axes_arg(cx: &Cx, input_from: i64) -> R<Option<Vec<i64>>> {
    if cx.opset >= input_from {
        if !cx.has(1) {
            return Ok(None);
        }
        cx.ints(1).map(Some).ok_or(Fail::Missing)
    } else {
        cx.attr_ints("axes")
    }
}

fn unsqueeze(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let axes = match axes_arg(cx, 13) {
        Ok(Some(a)) => a,
        Ok(None) => return bad("axes are missing"),
        Err(Fail::Missing) => return one(Out::new(elem, None)),
        Err(e) => return Err(e),
    };
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, None));
    };
    let r_out = x.len() + axes.len();
    let axes = norm_axes(&axes, r_out)?;
    let mut it = x.iter();
    let out: Shape = (0..r_out)
        .map(|i| {
            if axes.contains(&i) {
                Dim::Known(1)
            } else {
                it.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect();
    let c = match cx.content(0) {
        Some(c) if c.scalar && r_out == 1 => content(false, c.items.clone()),
        _ => None,
    };
    one(Out::new(elem, Some(out)).with_content(c))
}

fn squeeze(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let axes = match axes_arg(cx, 13) {
        Ok(a) => a,
        Err(Fail::Missing) => return one(Out::new(elem, None)),
        Err(e) => return Err(e),
    };
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, None));
    };
    let out: Shape = match axes {
        Some(a) => {
            let a = norm_axes(&a, x.len())?;
            for &i in &a {
                if let Dim::Known(k) = x[i] {
                    if k != 1 {
                        return bad(format!("cannot squeeze axis {i} of size {k}"));
                    }
                }
            }
            x.iter()
                .enumerate()
                .filter(|(i, _)| !a.contains(i))
                .map(|(_, d)| d.clone())
                .collect()
        }
        None => {
            if x.iter().any(|d| d.known().is_none()) {
                return one(Out::new(elem, None));
            }
            x.iter().filter(|d| **d != Dim::Known(1)).cloned().collect()
        }
    };
    let c = match cx.content(0) {
        Some(c) if out.is_empty() && c.items.len() == 1 => content(true, c.items.clone()),
        Some(c) if out.len() == 1 => content(false, c.items.clone()),
        _ => None,
    };
    one(Out::new(elem, Some(out)).with_content(c))
}

/// Length of `x[start:end:step]` along a dim; `Unknown` when it cannot be told.
///
/// One assumption: `x[0:s]` with a symbolic `s` over a static extent `d` has length `s`, not
/// `min(s, d)`. Exporters emit this to cut position tables (`[1, 512]`) down to the sequence
/// length, and the model is only meaningful when `s <= d`.
fn slice_len(d: &Dim, start: &Dim, end: &Dim, step: i64) -> Dim {
    /// Ends at or beyond this are "to the end" whatever the (sane) dimension.
    const BIG: i64 = i32::MAX as i64;
    match (d, start, end) {
        (Dim::Known(d), _, _) if *d <= 0 => {
            if *d == 0 {
                Dim::Known(0)
            } else {
                Dim::Unknown
            }
        }
        (Dim::Known(d), Dim::Known(s), Dim::Known(e)) => {
            let (d, s, e, step) = (*d as i128, *s as i128, *e as i128, step as i128);
            let s = if s < 0 { s + d } else { s };
            let e = if e < 0 { e + d } else { e };
            let len = if step > 0 {
                let (s, e) = (s.clamp(0, d), e.clamp(0, d));
                (e - s + step - 1).div_euclid(step)
            } else {
                let (s, e) = (s.clamp(0, d - 1), e.clamp(-1, d - 1));
                (s - e + (-step) - 1).div_euclid(-step)
            };
            Dim::Known(len.max(0) as i64)
        }
        (_, Dim::Known(0), Dim::Known(e)) if step == 1 && *e >= BIG => d.clone(),
        (_, Dim::Known(0), e) if step == 1 && e == d => d.clone(),
        (Dim::Known(_), Dim::Known(0), Dim::Sym(_)) if step == 1 => end.clone(),
        (_, Dim::Known(-1), Dim::Known(e)) if step == -1 && *e <= -BIG => d.clone(),
        _ => Dim::Unknown,
    }
}

/// Slice's starts and ends (contents, when known), axes and steps (`Err(Missing)`: given but
/// unknown; `Ok(None)`: not given).
type SliceArgs = (
    Option<Vec<Dim>>,
    Option<Vec<Dim>>,
    R<Option<Vec<i64>>>,
    R<Option<Vec<i64>>>,
);

fn slice(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, None));
    };
    let from_inputs = cx.opset >= 10;
    let (starts, ends, axes, steps): SliceArgs = if from_inputs {
        let opt = |i: usize| {
            if cx.has(i) {
                cx.ints(i).map(Some).ok_or(Fail::Missing)
            } else {
                Ok(None)
            }
        };
        (
            cx.content(1).map(|c| c.items.clone()),
            cx.content(2).map(|c| c.items.clone()),
            opt(3),
            opt(4),
        )
    } else {
        let s = cx
            .attr_ints("starts")?
            .ok_or_else(|| Fail::Bad("attribute 'starts' is missing".into()))?;
        let e = cx
            .attr_ints("ends")?
            .ok_or_else(|| Fail::Bad("attribute 'ends' is missing".into()))?;
        (
            Some(known_items(&s)),
            Some(known_items(&e)),
            cx.attr_ints("axes"),
            Ok(None),
        )
    };
    let axes = match axes {
        Ok(a) => a,
        Err(Fail::Missing) => return one(Out::new(elem, Some(vec![Dim::Unknown; x.len()]))),
        Err(e) => return Err(e),
    };
    let (Some(starts), Some(ends)) = (starts, ends) else {
        // Unknown bounds: the sliced axes (all, if unknown) lose their size.
        let mut out = x.clone();
        match &axes {
            Some(a) => {
                for i in norm_axes(a, x.len())? {
                    out[i] = Dim::Unknown;
                }
            }
            None => out.iter_mut().for_each(|d| *d = Dim::Unknown),
        }
        return one(Out::new(elem, Some(out)));
    };
    if starts.len() != ends.len() {
        return bad(format!("{} starts but {} ends", starts.len(), ends.len()));
    }
    let axes = match axes {
        Some(a) => norm_axes(&a, x.len())?,
        None => (0..starts.len()).collect(),
    };
    if axes.len() != starts.len() || axes.iter().any(|&a| a >= x.len()) {
        return bad(format!(
            "{} axes for {} starts on rank {}",
            axes.len(),
            starts.len(),
            x.len()
        ));
    }
    let steps = match steps {
        Ok(Some(s)) => s,
        Ok(None) => vec![1; axes.len()],
        Err(Fail::Missing) => {
            let mut out = x.clone();
            for &a in &axes {
                out[a] = Dim::Unknown;
            }
            return one(Out::new(elem, Some(out)));
        }
        Err(e) => return Err(e),
    };
    if steps.len() != axes.len() {
        return bad(format!("{} steps for {} axes", steps.len(), axes.len()));
    }
    let mut out = x.clone();
    for (k, &a) in axes.iter().enumerate() {
        if steps[k] == 0 {
            return bad("step 0");
        }
        out[a] = slice_len(&x[a], &starts[k], &ends[k], steps[k]);
    }
    // Contents of a sliced 1-D shape vector.
    let mut c = None;
    if let Some(src) = cx.content(0).filter(|c| !c.scalar && !c.items.is_empty()) {
        if let ([0], [Dim::Known(s)], [Dim::Known(e)], [step]) =
            (&axes[..], &starts[..], &ends[..], &steps[..])
        {
            let (n, s, e, step) = (
                src.items.len() as i128,
                *s as i128,
                *e as i128,
                *step as i128,
            );
            let s = if s < 0 { s + n } else { s };
            let e = if e < 0 { e + n } else { e };
            let mut items = Vec::new();
            if step > 0 {
                let (mut i, e) = (s.clamp(0, n), e.clamp(0, n));
                while i < e {
                    items.push(src.items[i as usize].clone());
                    i += step;
                }
            } else {
                let (mut i, e) = (s.clamp(0, n - 1), e.clamp(-1, n - 1));
                while i > e {
                    items.push(src.items[i as usize].clone());
                    i += step;
                }
            }
            c = content(false, items);
        }
    }
    one(Out::new(elem, Some(out)).with_content(c))
}

fn layer_norm(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let stash = cx.attr_int("stash_type", 1)?;
    let stash = i32::try_from(stash)
        .ok()
        .and_then(DType::from_onnx)
        .ok_or_else(|| Fail::Bad(format!("invalid stash_type {stash}")))?;
    let axis = cx.attr_int("axis", -1)?;
    let x = cx.shape(0).ok();
    let stat = match &x {
        Some(x) => {
            let ax = norm_axis(axis, x.len())?;
            let mut s = x[..ax].to_vec();
            s.extend(std::iter::repeat_n(Dim::Known(1), x.len() - ax));
            Some(s)
        }
        None => None,
    };
    Ok(vec![
        Out::new(elem, x),
        Out::new(Some(stash), stat.clone()),
        Out::new(Some(stash), stat),
    ])
}

fn cast(cx: &Cx) -> R<Vec<Out>> {
    let to = match cx.node.attr("to") {
        Some(AttrValue::Int(t)) => *t,
        Some(_) => return bad("attribute 'to' is not an int"),
        None => return bad("attribute 'to' is missing"),
    };
    let dt = i32::try_from(to)
        .ok()
        .and_then(DType::from_onnx)
        .ok_or_else(|| Fail::Bad(format!("invalid target type {to}")))?;
    let integer = matches!(
        dt,
        DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64
    );
    let c = cx.content(0).and_then(|c| {
        if integer {
            Some(c.clone())
        } else if dt == DType::Bool {
            let items = c
                .items
                .iter()
                .map(|d| match d {
                    Dim::Known(k) => Dim::Known(i64::from(*k != 0)),
                    _ => Dim::Unknown,
                })
                .collect();
            content(c.scalar, items)
        } else {
            None
        }
    });
    one(Out::new(Some(dt), cx.shape(0).ok()).with_content(c))
}

fn shape_op(cx: &Cx) -> R<Vec<Out>> {
    let Ok(x) = cx.shape(0) else {
        if cx.vt(0).is_err() && !cx.has(0) {
            return bad("no input");
        }
        return one(Out::new(Some(DType::I64), Some(vec![Dim::Unknown])));
    };
    let r = x.len() as i64;
    let clampi = |v: i64| (if v < 0 { v.saturating_add(r) } else { v }).clamp(0, r) as usize;
    let start = clampi(cx.attr_int("start", 0)?);
    let end = match cx.node.attr("end") {
        None => x.len(),
        Some(AttrValue::Int(e)) => clampi(*e),
        Some(_) => return bad("attribute 'end' is not an int"),
    };
    let items: Vec<Dim> = if start < end {
        x[start..end].to_vec()
    } else {
        Vec::new()
    };
    let n = items.len() as i64;
    one(Out::new(Some(DType::I64), Some(vec![Dim::Known(n)])).with_content(content(false, items)))
}

fn size(cx: &Cx) -> R<Vec<Out>> {
    let c = cx.shape(0).ok().map(|x| Content {
        scalar: true,
        items: vec![product_dim(&x)],
    });
    one(Out::new(Some(DType::I64), Some(Vec::new())).with_content(c))
}

fn constant(cx: &Cx) -> R<Vec<Out>> {
    let a = &cx.node.attributes;
    let Some(attr) = a.first() else {
        return bad("no value attribute");
    };
    if a.len() > 1 {
        return bad("more than one value attribute");
    }
    let out = match (attr.name.as_str(), &attr.value) {
        ("value", AttrValue::Tensor(t)) => {
            Out::new(Some(t.dtype), Some(known_items(&t.dims))).with_content(tensor_content(t))
        }
        ("sparse_value", AttrValue::SparseTensor(s)) => {
            Out::new(Some(s.values.dtype), Some(known_items(&s.dims)))
        }
        ("value_float", AttrValue::Float(_)) => Out::new(Some(DType::F32), Some(Vec::new())),
        ("value_floats", AttrValue::Floats(v)) => {
            Out::new(Some(DType::F32), Some(vec![Dim::Known(v.len() as i64)]))
        }
        ("value_int", AttrValue::Int(v)) => Out::new(Some(DType::I64), Some(Vec::new()))
            .with_content(content(true, vec![Dim::Known(*v)])),
        ("value_ints", AttrValue::Ints(v)) => {
            Out::new(Some(DType::I64), Some(vec![Dim::Known(v.len() as i64)]))
                .with_content(content(false, known_items(v)))
        }
        ("value_string", AttrValue::String(_)) => Out::new(Some(DType::String), Some(Vec::new())),
        ("value_strings", AttrValue::Strings(v)) => {
            Out::new(Some(DType::String), Some(vec![Dim::Known(v.len() as i64)]))
        }
        (name, _) => {
            return bad(format!(
                "attribute '{name}' is not a constant value of the right type"
            ))
        }
    };
    one(out)
}

fn constant_of_shape(cx: &Cx) -> R<Vec<Out>> {
    let (elem, fill) = match cx.node.attr("value") {
        None => (DType::F32, None),
        Some(AttrValue::Tensor(t)) => {
            if t.num_elements() != 1 {
                return bad(format!("value has {} elements, not 1", t.num_elements()));
            }
            (t.dtype, t.to_i64_vec().and_then(|v| v.first().copied()))
        }
        Some(_) => return bad("attribute 'value' is not a tensor"),
    };
    let Some(target) = cx.content(0) else {
        return one(Out::new(
            Some(elem),
            cx.len1(0).map(|k| vec![Dim::Unknown; k]),
        ));
    };
    if target.scalar {
        return bad("the shape input is a scalar");
    }
    if let Some(k) = target
        .items
        .iter()
        .find_map(|d| d.known().filter(|&k| k < 0))
    {
        return bad(format!("negative dimension {k}"));
    }
    let shape = target.items.clone();
    let c = match (fill, shape.as_slice()) {
        (Some(v), []) => content(true, vec![Dim::Known(v)]),
        (Some(v), [Dim::Known(n)]) if (*n as usize) <= MAX_CONTENT => {
            content(false, vec![Dim::Known(v); *n as usize])
        }
        _ => None,
    };
    one(Out::new(Some(elem), Some(shape)).with_content(c))
}

fn expand(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let x = cx.shape(0).ok();
    let Some(target) = cx.content(1) else {
        let shape = match (&x, cx.len1(1)) {
            (Some(x), Some(k)) => Some(vec![Dim::Unknown; x.len().max(k)]),
            _ => None,
        };
        return one(Out::new(elem, shape));
    };
    let Some(x) = x else {
        return one(Out::new(elem, None));
    };
    one(Out::new(elem, Some(broadcast(&[&x, &target.items])?)))
}

fn range(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    for i in 0..3 {
        if let Ok(s) = cx.shape(i) {
            if !s.is_empty() {
                return bad(format!("input {i} is not a scalar ({})", fmt_shape(&s)));
            }
        }
    }
    let scalar = |i: usize| cx.content(i).and_then(|c| c.items.first().cloned());
    let (start, limit, delta) = (scalar(0), scalar(1), scalar(2));
    let mut c = None;
    let len = match (&start, &limit, &delta) {
        (_, _, Some(Dim::Known(0))) => return bad("delta is 0"),
        (Some(Dim::Known(s)), Some(Dim::Known(l)), Some(Dim::Known(d))) => {
            let (s, l, d) = (*s as i128, *l as i128, *d as i128);
            let n = ((l - s + d - d.signum()) / d).max(0);
            let n = i64::try_from(n).map_err(|_| Fail::Bad("range too long".into()))?;
            if n as usize <= MAX_CONTENT {
                let items = (0..n)
                    .map(|k| Dim::Known((s + k as i128 * d) as i64))
                    .collect();
                c = content(false, items);
            }
            Dim::Known(n)
        }
        (Some(s), Some(l), Some(Dim::Known(1))) => dims::sub(l, s),
        _ => Dim::Unknown,
    };
    one(Out::new(elem, Some(vec![len])).with_content(c))
}

fn flatten(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, Some(vec![Dim::Unknown, Dim::Unknown])));
    };
    let r = x.len() as i64;
    let axis = cx.attr_int("axis", 1)?;
    if axis < -r || axis > r {
        return bad(format!("axis {axis} is out of range for rank {r}"));
    }
    let axis = (if axis < 0 { axis + r } else { axis }) as usize;
    one(Out::new(
        elem,
        Some(vec![product_dim(&x[..axis]), product_dim(&x[axis..])]),
    ))
}

fn tile(cx: &Cx) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(elem, None));
    };
    let Some(rep) = cx.content(1) else {
        return one(Out::new(elem, Some(vec![Dim::Unknown; x.len()])));
    };
    if rep.items.len() != x.len() {
        return bad(format!("{} repeats for rank {}", rep.items.len(), x.len()));
    }
    let out = x
        .iter()
        .zip(&rep.items)
        .map(|(d, r)| dims::mul(d, r))
        .collect();
    one(Out::new(elem, Some(out)))
}

fn reduce(cx: &Cx, op: &str) -> R<Vec<Out>> {
    let elem = cx.elem(0);
    let keep = cx.attr_int("keepdims", 1)? != 0;
    let from_input = if op == "ReduceSum" { 13 } else { 18 };
    let noop = cx.opset >= from_input && cx.attr_int("noop_with_empty_axes", 0)? != 0;
    let x = cx.shape(0).ok();
    let axes = match axes_arg(cx, from_input) {
        Ok(a) => a,
        Err(Fail::Missing) => {
            let shape = match (&x, keep) {
                (Some(x), true) => Some(vec![Dim::Unknown; x.len()]),
                (Some(x), false) => cx
                    .len1(1)
                    .and_then(|k| x.len().checked_sub(k))
                    .map(|r| vec![Dim::Unknown; r]),
                _ => None,
            };
            return one(Out::new(elem, shape));
        }
        Err(e) => return Err(e),
    };
    let Some(x) = x else {
        return one(Out::new(elem, None));
    };
    let axes = match axes {
        Some(a) if !a.is_empty() => norm_axes(&a, x.len())?,
        _ if noop => return one(Out::new(elem, Some(x))),
        _ => (0..x.len()).collect(),
    };
    let mut out = Vec::with_capacity(x.len());
    for (i, d) in x.iter().enumerate() {
        if !axes.contains(&i) {
            out.push(d.clone());
        } else if keep {
            out.push(Dim::Known(1));
        }
    }
    one(Out::new(elem, Some(out)))
}

fn argmax(cx: &Cx) -> R<Vec<Out>> {
    let Ok(x) = cx.shape(0) else {
        return one(Out::new(Some(DType::I64), None));
    };
    let ax = norm_axis(cx.attr_int("axis", 0)?, x.len())?;
    let keep = cx.attr_int("keepdims", 1)? != 0;
    let mut out = x.clone();
    if keep {
        out[ax] = Dim::Known(1);
    } else {
        out.remove(ax);
    }
    one(Out::new(Some(DType::I64), Some(out)))
}
