//! Pattern matching: a rule's `match` clause against the graph, producing bindings.

use std::collections::HashMap;

use super::value::Val;
use crate::dsl::ast::{
    AttrPattern, AttrPatternValue, DimPattern, Literal, OpPattern, Operand, Outputs, Pattern,
    TypePattern,
};
use crate::ir::{AttrValue, Dim, Graph, NodeId, Tensor, ValueDef, ValueId};

/// Names bound by a match (and later by `let`), in binding order.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    map: HashMap<String, Val>,
}

impl Bindings {
    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&Val> {
        self.map.get(name)
    }

    /// Bind `name`; `false` if it was bound to a different value (unification failed).
    pub fn bind(&mut self, name: &str, v: Val) -> bool {
        match self.map.get(name) {
            Some(old) => same(old, &v),
            None => {
                self.map.insert(name.to_string(), v);
                true
            }
        }
    }

    /// Bind or overwrite (for `let`).
    pub fn set(&mut self, name: &str, v: Val) {
        self.map.insert(name.to_string(), v);
    }
}

fn same(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Value(x), Val::Value(y)) => x == y,
        (Val::None, Val::None) => true,
        (Val::Attr(x), Val::Attr(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        _ => false,
    }
}

/// A successful match: the bindings and the nodes the pattern covered (root first).
#[derive(Clone, Debug)]
pub struct Match {
    pub bindings: Bindings,
    pub nodes: Vec<NodeId>,
    /// The matched root: the node for operation patterns, the constant for constant patterns.
    pub root: Root,
}

/// What a match is rooted at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Node(NodeId),
    Const(ValueId),
}

/// The tensor behind `v` if it is a stored constant: an initializer that is not a graph input
/// (graph inputs can be overridden at run time), or the output of a `Constant` node holding a
/// tensor.
pub fn const_tensor(g: &Graph, v: ValueId) -> Option<&Tensor> {
    let val = g.value(v);
    match &val.def {
        ValueDef::Initializer(t) if !g.inputs.contains(&v) => Some(t),
        ValueDef::Node(n, 0) => {
            let node = g.node(*n);
            if node.op_type == "Constant" && node.domain.is_empty() {
                match node.attr("value") {
                    Some(AttrValue::Tensor(t)) => Some(t),
                    _ => None,
                }
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether node `n` is the operation `op` names (`MatMul`, or `com.microsoft.Attention`).
pub fn op_matches(g: &Graph, n: NodeId, op: &str) -> bool {
    let node = g.node(n);
    match op.rsplit_once('.') {
        Some((domain, name)) => node.op_type == name && node.domain == domain,
        None => node.op_type == op && (node.domain.is_empty() || node.domain == "ai.onnx"),
    }
}

/// Why a pattern did not match at a root.
#[derive(Clone, Debug)]
pub struct Miss {
    /// The root itself did not fit (a constant of another type): not worth reporting as a near
    /// miss. Failures after the root fitted are near misses.
    pub at_root: bool,
    /// The reason.
    pub reason: String,
}

/// Match `pattern` at a root; `Err` says why it did not match (for near-miss reports).
pub fn match_at(
    g: &Graph,
    pattern: &Pattern,
    root: Root,
    params: &Bindings,
) -> Result<Match, Miss> {
    let near = |reason: String| Miss {
        at_root: false,
        reason,
    };
    let mut m = Matcher {
        g,
        b: params.clone(),
        nodes: Vec::new(),
    };
    match (pattern, root) {
        (Pattern::Op { outputs, op, .. }, Root::Node(n)) => {
            if !op_matches(g, n, &op.op.name) {
                return Err(Miss {
                    at_root: true,
                    reason: format!("not {}", op.op.name),
                });
            }
            m.op(op, n).map_err(near)?;
            m.outputs(outputs, n).map_err(near)?;
        }
        (Pattern::Const { name, ty, .. }, Root::Const(v)) => {
            let at_root = |reason: String| Miss {
                at_root: true,
                reason,
            };
            if const_tensor(g, v).is_none() {
                return Err(at_root("not a stored constant".into()));
            }
            m.typed(ty, v, &name.name).map_err(at_root)?;
            m.bind(&name.name, Val::Value(v)).map_err(near)?;
        }
        _ => {
            return Err(Miss {
                at_root: true,
                reason: "pattern and root kinds differ".into(),
            })
        }
    }
    Ok(Match {
        bindings: m.b,
        nodes: m.nodes,
        root,
    })
}

struct Matcher<'g> {
    g: &'g Graph,
    b: Bindings,
    nodes: Vec<NodeId>,
}

impl Matcher<'_> {
    fn bind(&mut self, name: &str, v: Val) -> Result<(), String> {
        if self.b.bind(name, v) {
            Ok(())
        } else {
            Err(format!("'{name}' would be bound to two different things"))
        }
    }

    fn describe(&self, n: NodeId) -> String {
        let node = self.g.node(n);
        if node.name.is_empty() {
            node.op_type.clone()
        } else {
            format!("'{}' ({})", node.name, node.op_type)
        }
    }

    fn op(&mut self, p: &OpPattern, n: NodeId) -> Result<(), String> {
        if !op_matches(self.g, n, &p.op.name) {
            return Err(format!("{} is not {}", self.describe(n), p.op.name));
        }
        if self.nodes.contains(&n) {
            return Err("the pattern would use one node twice".into());
        }
        self.nodes.push(n);
        let node = self.g.node(n);
        for a in &p.attrs {
            self.attr(a, node.attr(&a.name.name), n)?;
        }
        let inputs = node.inputs();
        let variadic = matches!(
            p.operands.last(),
            Some(Operand::Value { variadic: true, .. })
        );
        let fixed = if variadic {
            p.operands.len() - 1
        } else {
            p.operands.len()
        };
        let present = inputs
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        if !variadic && present > fixed {
            return Err(format!(
                "{} has {present} inputs, the pattern lists {fixed}",
                self.describe(n)
            ));
        }
        for (i, operand) in p.operands.iter().enumerate() {
            match operand {
                Operand::Value {
                    variadic: true,
                    name,
                    ty,
                    ..
                } => {
                    let mut list = Vec::new();
                    for (k, v) in inputs.iter().enumerate().skip(i) {
                        let v = v.ok_or_else(|| {
                            format!("input {k} of {} is absent", self.describe(n))
                        })?;
                        if let Some(ty) = ty {
                            let label = name.as_ref().map_or("_", |x| x.name.as_str());
                            self.typed(ty, v, &format!("{label}[{}]", k - i))?;
                        }
                        list.push(Val::Value(v));
                    }
                    if let Some(name) = name {
                        self.bind(&name.name, Val::List(list))?;
                    }
                }
                Operand::Value {
                    name, ty, optional, ..
                } => match inputs.get(i).copied().flatten() {
                    None if *optional => {
                        if let Some(name) = name {
                            self.bind(&name.name, Val::None)?;
                        }
                    }
                    None => return Err(format!("input {i} of {} is absent", self.describe(n))),
                    Some(v) => {
                        let label = name.as_ref().map_or("_".to_string(), |x| x.name.clone());
                        if let Some(ty) = ty {
                            self.typed(ty, v, &label)?;
                        }
                        if let Some(name) = name {
                            self.bind(&name.name, Val::Value(v))?;
                        }
                    }
                },
                Operand::Op(inner) => {
                    let v =
                        inputs.get(i).copied().flatten().ok_or_else(|| {
                            format!("input {i} of {} is absent", self.describe(n))
                        })?;
                    let (producer, _) = self.g.producer(v).ok_or_else(|| {
                        format!(
                            "input {i} of {} ('{}') is not computed by {}",
                            self.describe(n),
                            self.g.value(v).name,
                            inner.op.name
                        )
                    })?;
                    self.op(inner, producer)?;
                }
            }
        }
        Ok(())
    }

    fn attr(
        &mut self,
        a: &AttrPattern,
        value: Option<&AttrValue>,
        n: NodeId,
    ) -> Result<(), String> {
        match &a.value {
            AttrPatternValue::Bind(name) => {
                let v = value.map_or(Val::None, |v| Val::Attr(Box::new(v.clone())));
                self.bind(&name.name, v)
            }
            AttrPatternValue::Literal(lit) => {
                let ok = match (lit, value) {
                    (Literal::Int(x), Some(AttrValue::Int(y))) => x == y,
                    (Literal::Float(x), Some(AttrValue::Float(y))) => (*x as f32) == *y,
                    (Literal::Int(x), Some(AttrValue::Float(y))) => (*x as f32) == *y,
                    (Literal::Str(x), Some(AttrValue::String(y))) => x.as_bytes() == &y[..],
                    (Literal::Ints(x), Some(AttrValue::Ints(y))) => x == y,
                    (Literal::Bool(x), Some(AttrValue::Int(y))) => (*y != 0) == *x,
                    _ => false,
                };
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "attribute {} of {} is {}, the pattern wants {}",
                        a.name.name,
                        self.describe(n),
                        value.map_or("absent".to_string(), show_attr),
                        show_lit(lit)
                    ))
                }
            }
        }
    }

    fn typed(&mut self, ty: &TypePattern, v: ValueId, label: &str) -> Result<(), String> {
        let val = self.g.value(v);
        if ty.is_const && const_tensor(self.g, v).is_none() {
            return Err(format!("{label} ('{}') is not a stored constant", val.name));
        }
        let vt = val.ty();
        if let Some((dt, _)) = ty.dtype {
            let actual = vt
                .and_then(|t| t.elem())
                .or_else(|| const_tensor(self.g, v).map(|t| t.dtype));
            if actual != Some(dt) {
                return Err(format!(
                    "{label} ('{}') is {}, the pattern wants {}",
                    val.name,
                    actual.map_or("of unknown type".to_string(), |d| d.to_string()),
                    dt
                ));
            }
        }
        if let Some(dims) = &ty.shape {
            let shape: Vec<Dim> = match const_tensor(self.g, v) {
                Some(t) => t.dims.iter().map(|&d| Dim::Known(d)).collect(),
                None => match vt.and_then(|t| t.shape()) {
                    Some(s) => s.clone(),
                    None => return Err(format!("{label} ('{}') has an unknown shape", val.name)),
                },
            };
            if shape.len() != dims.len() {
                return Err(format!(
                    "{label} ('{}') has rank {}, the pattern wants {}",
                    val.name,
                    shape.len(),
                    dims.len()
                ));
            }
            for (i, (d, p)) in shape.iter().zip(dims).enumerate() {
                match p {
                    DimPattern::Any(_) => {}
                    DimPattern::Lit(x, _) => {
                        if d.known() != Some(*x) {
                            return Err(format!(
                                "dim {i} of {label} ('{}') is {d}, the pattern wants {x}",
                                val.name
                            ));
                        }
                    }
                    DimPattern::Sym(s) => match d.known() {
                        Some(k) => {
                            if !self.b.bind(&s.name, Val::Int(k)) {
                                let prev = self.b.get(&s.name).and_then(Val::as_int).unwrap_or(-1);
                                return Err(format!(
                                    "dim {i} of {label} ('{}') is {k}, but {} = {prev}",
                                    val.name, s.name
                                ));
                            }
                        }
                        None => {
                            return Err(format!(
                                "dim {i} of {label} ('{}') is not a known number ({d})",
                                val.name
                            ))
                        }
                    },
                }
            }
        }
        Ok(())
    }

    fn outputs(&mut self, outputs: &Outputs, n: NodeId) -> Result<(), String> {
        let outs = self.g.node(n).outputs().to_vec();
        match outputs {
            Outputs::Variadic(name) => {
                let list = outs
                    .iter()
                    .map(|o| o.map_or(Val::None, Val::Value))
                    .collect();
                self.bind(&name.name, Val::List(list))
            }
            Outputs::Fixed(names) => {
                if names.len() > outs.len() {
                    return Err(format!(
                        "{} has {} outputs, the pattern names {}",
                        self.describe(n),
                        outs.len(),
                        names.len()
                    ));
                }
                for (k, extra) in outs.iter().enumerate().skip(names.len()) {
                    if let Some(v) = extra {
                        if !self.g.value(*v).uses().is_empty() || self.g.outputs.contains(v) {
                            return Err(format!(
                                "output {k} of {} is used, the pattern does not name it",
                                self.describe(n)
                            ));
                        }
                    }
                }
                for (name, o) in names.iter().zip(&outs) {
                    self.bind(&name.name, o.map_or(Val::None, Val::Value))?;
                }
                Ok(())
            }
        }
    }
}

fn show_attr(a: &AttrValue) -> String {
    match a {
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(f) => f.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Ints(v) => format!("{v:?}"),
        AttrValue::Floats(v) => format!("{v:?}"),
        _ => "a non-scalar value".into(),
    }
}

fn show_lit(l: &Literal) -> String {
    match l {
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => f.to_string(),
        Literal::Str(s) => format!("{s:?}"),
        Literal::Bool(b) => b.to_string(),
        Literal::Ints(v) => format!("{v:?}"),
    }
}
