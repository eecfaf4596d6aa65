//! Shape inference: element types and shapes, with symbolic dimensions, for the operators the
//! compression passes meet in transformer models.
//!
//! [`infer_shapes`] walks the graph in topological order and sets [`Value::inferred`] for every
//! value whose type it can compute. Besides types it tracks the *contents* of small integer
//! tensors of rank 0 or 1 (shape vectors) as [`Dim`]s, so that the plumbing exporters emit
//! (`Shape → Gather → Unsqueeze → Concat → Reshape`) yields shapes that keep symbols such as
//! `batch` and `seq`. Products of symbols are written `Dim::Sym("a*b")` with sorted factors.
//!
//! [`Value::inferred`]: crate::ir::Value::inferred

mod dims;
mod ops;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Dim, Graph, Node, NodeId, Shape, Tensor, Type, ValueDef, ValueId, ValueType};

/// What one run of [`infer_shapes`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferStats {
    /// Live values in the graph (inputs, initializers and node outputs).
    pub total: usize,
    /// Live values whose `inferred` type is set after the run.
    pub inferred: usize,
    /// Nodes in the graph.
    pub nodes: usize,
    /// Nodes of operators inference does not know (op type, with domain when not the default
    /// one) and how many of each; their outputs keep only their declared types.
    pub unsupported: BTreeMap<String, usize>,
    /// Values whose inferred type contradicts the declared one (element type, rank, or a known
    /// size); each also has an entry in `warnings`. The inferred type is kept.
    pub conflicts: usize,
    /// Human-readable diagnostics, each naming the node or value and the reason: malformed
    /// nodes (bad attributes, ranks that do not fit the operator) and conflicts with declared
    /// types. Missing information upstream (an unknown input shape) is not a warning.
    pub warnings: Vec<String>,
}

/// The contents of a small integer tensor of rank 0 or 1 (booleans as 0/1).
#[derive(Clone, Debug, PartialEq)]
struct Content {
    /// Rank 0 (one item) rather than rank 1.
    scalar: bool,
    items: Vec<Dim>,
}

/// Largest number of elements whose contents are tracked.
const MAX_CONTENT: usize = 64;

/// Largest rank taken from the length of a shape tensor of unknown contents.
const MAX_RANK: usize = 1024;

/// Why a node's outputs could not be typed.
#[derive(Debug)]
enum Fail {
    /// Information is missing upstream (an untyped input, a shape tensor of unknown contents):
    /// not the node's fault, not reported.
    Missing,
    /// The node is malformed; reported as a warning.
    Bad(String),
}

type R<T> = Result<T, Fail>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(Fail::Bad(msg.into()))
}

/// One output port's result: element type, shape, and contents when tracked.
#[derive(Clone, Debug, Default)]
struct Out {
    elem: Option<super::DType>,
    shape: Option<Shape>,
    content: Option<Content>,
}

impl Out {
    fn new(elem: Option<super::DType>, shape: Option<Shape>) -> Out {
        Out {
            elem,
            shape,
            content: None,
        }
    }

    fn with_content(mut self, c: Option<Content>) -> Out {
        self.content = c;
        self
    }

    fn ty(&self) -> Option<ValueType> {
        if self.elem.is_none() && self.shape.is_none() {
            return None;
        }
        Some(ValueType {
            ty: Type::Tensor {
                elem: self.elem,
                shape: self
                    .shape
                    .clone()
                    .map(|s| s.into_iter().map(dims::public).collect()),
                dim_denotations: Vec::new(),
            },
            denotation: None,
        })
    }
}

/// Infer element types and shapes for `graph` under ONNX operator set `opset` (the version of
/// the default domain).
///
/// Contract:
/// - every `inferred` type is first cleared; graph inputs then get their declared type,
///   initializers the type of their tensor (sparse ones: a dense tensor of their dense shape);
/// - nodes are visited in topological order; each output of a node of a known operator (default
///   domain only) gets the type computed from its inputs' types (`inferred`, else `declared`),
///   with holes (unknown element type, rank or dims) filled from the declared type when there
///   is one. Outputs of unknown operators, and outputs nothing can be said about, keep
///   `inferred == None`;
/// - a node that is malformed (bad attribute, ranks or sizes that do not fit the operator)
///   leaves its outputs uninferred and adds a warning; an inferred type contradicting a
///   declared one is kept and counted in [`InferStats::conflicts`] with a warning;
/// - a cyclic graph gets only its inputs and initializers typed, plus a warning;
/// - it never panics on any graph.
pub fn infer_shapes(graph: &mut Graph, opset: i64) -> InferStats {
    let mut stats = InferStats {
        nodes: graph.node_count(),
        ..InferStats::default()
    };
    let ids: Vec<ValueId> = graph.values().map(|(v, _)| v).collect();
    let graph_inputs: HashSet<ValueId> = graph.inputs.iter().copied().collect();
    let mut contents: HashMap<ValueId, Content> = HashMap::new();
    for &v in &ids {
        let val = graph.value(v);
        let (ty, content) = match &val.def {
            ValueDef::Input => (val.declared.clone(), None),
            ValueDef::Initializer(t) => {
                // An initializer that is also a graph input is only a default: its shape holds,
                // its contents may be overridden.
                let c = if graph_inputs.contains(&v) {
                    None
                } else {
                    tensor_content(t)
                };
                (Some(tensor_type(t)), c)
            }
            ValueDef::SparseInitializer(s) => {
                let shape = s.dims.iter().map(|&d| Dim::Known(d)).collect();
                (Some(ValueType::tensor(s.values.dtype, shape)), None)
            }
            ValueDef::Node(..) | ValueDef::Removed => (None, None),
        };
        if let Some(c) = content {
            contents.insert(v, c);
        }
        graph.value_mut(v).inferred = ty;
    }

    match graph.topo_order() {
        Ok(order) => {
            for n in order {
                infer_node(graph, n, opset, &mut contents, &mut stats);
            }
        }
        Err(e) => stats
            .warnings
            .push(format!("shape inference skipped the nodes: {e}")),
    }

    for (_, val) in graph.values() {
        stats.total += 1;
        if val.inferred.is_some() {
            stats.inferred += 1;
        }
    }
    stats
}

fn infer_node(
    g: &mut Graph,
    n: NodeId,
    opset: i64,
    contents: &mut HashMap<ValueId, Content>,
    stats: &mut InferStats,
) {
    let node = g.node(n);
    let label = format!("node '{}' ({})", node.name, node.op_type);
    let outs = {
        let cx = Cx {
            g,
            node,
            contents,
            opset,
        };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            let key = format!("{}:{}", node.domain, node.op_type);
            *stats.unsupported.entry(key).or_default() += 1;
            return;
        }
        match ops::infer(&cx) {
            None => {
                *stats.unsupported.entry(node.op_type.clone()).or_default() += 1;
                return;
            }
            Some(Ok(outs)) => outs,
            Some(Err(Fail::Missing)) => return,
            Some(Err(Fail::Bad(m))) => {
                stats.warnings.push(format!("{label}: {m}"));
                return;
            }
        }
    };
    let ports: Vec<Option<ValueId>> = g.node(n).outputs().to_vec();
    for (port, out) in outs.into_iter().enumerate() {
        let Some(v) = ports.get(port).copied().flatten() else {
            continue;
        };
        let Some(mut ty) = out.ty() else {
            continue;
        };
        let val = g.value(v);
        if let Some(decl) = &val.declared {
            if let Some(why) = conflict(&ty, decl) {
                stats.conflicts += 1;
                stats
                    .warnings
                    .push(format!("value '{}' of {label}: {why}", val.name));
            } else {
                refine(&mut ty, decl);
            }
        }
        if let Some(c) = out.content {
            if content_fits(&c, &ty) {
                contents.insert(v, c);
            }
        }
        g.value_mut(v).inferred = Some(ty);
    }
}

/// Read-only view of one node and what is known about its inputs.
struct Cx<'a> {
    g: &'a Graph,
    node: &'a Node,
    contents: &'a HashMap<ValueId, Content>,
    opset: i64,
}

impl Cx<'_> {
    /// Whether input `i` is present.
    fn has(&self, i: usize) -> bool {
        self.node.input(i).is_some()
    }

    /// The type of input `i` (Missing if absent or untyped).
    fn vt(&self, i: usize) -> R<&ValueType> {
        let v = self.node.input(i).ok_or(Fail::Missing)?;
        self.g.value(v).ty().ok_or(Fail::Missing)
    }

    /// Element type of input `i`.
    fn elem(&self, i: usize) -> Option<super::DType> {
        self.vt(i).ok().and_then(ValueType::elem)
    }

    /// Shape of input `i` (Missing if absent or of unknown rank).
    fn shape(&self, i: usize) -> R<Shape> {
        self.vt(i)?.shape().cloned().ok_or(Fail::Missing)
    }

    /// Contents of input `i`, when tracked.
    fn content(&self, i: usize) -> Option<&Content> {
        self.contents.get(&self.node.input(i)?)
    }

    /// Contents of input `i` as plain integers, when all are known.
    fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.content(i)?.items.iter().map(Dim::known).collect()
    }

    /// Length of the 1-D input `i` from its type, when known (and plausible as a rank).
    fn len1(&self, i: usize) -> Option<usize> {
        match self.shape(i).ok()?.as_slice() {
            [Dim::Known(k)] => usize::try_from(*k).ok().filter(|&k| k <= MAX_RANK),
            _ => None,
        }
    }

    /// Integer attribute with a default; an attribute of another type is an error.
    fn attr_int(&self, name: &str, default: i64) -> R<i64> {
        match self.node.attr(name) {
            None => Ok(default),
            Some(super::AttrValue::Int(v)) => Ok(*v),
            Some(_) => bad(format!("attribute '{name}' is not an int")),
        }
    }

    /// Integer-list attribute, if present; an attribute of another type is an error.
    fn attr_ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        match self.node.attr(name) {
            None => Ok(None),
            Some(super::AttrValue::Ints(v)) => Ok(Some(v.clone())),
            Some(_) => bad(format!("attribute '{name}' is not a list of ints")),
        }
    }

    /// Number of output ports.
    fn n_out(&self) -> usize {
        self.node.outputs().len()
    }
}

/// The type of a constant tensor.
fn tensor_type(t: &Tensor) -> ValueType {
    ValueType::tensor(t.dtype, t.dims.iter().map(|&d| Dim::Known(d)).collect())
}

/// Contents of a small integer constant of rank ≤ 1.
fn tensor_content(t: &Tensor) -> Option<Content> {
    if t.dims.len() > 1 || t.num_elements() > MAX_CONTENT {
        return None;
    }
    let v = t.to_i64_vec()?;
    if v.len() != t.num_elements() {
        return None;
    }
    Some(Content {
        scalar: t.dims.is_empty(),
        items: v.into_iter().map(Dim::Known).collect(),
    })
}

/// Contents agree with the type they are stored for (defensive: never track inconsistent ones).
fn content_fits(c: &Content, ty: &ValueType) -> bool {
    match ty.shape() {
        Some(s) if s.is_empty() => c.scalar && c.items.len() == 1,
        Some(s) if s.len() == 1 => !c.scalar && s[0] == Dim::Known(c.items.len() as i64),
        _ => false,
    }
}

/// Why `ours` contradicts `decl`, if it does.
fn conflict(ours: &ValueType, decl: &ValueType) -> Option<String> {
    let Type::Tensor {
        elem: de,
        shape: ds,
        ..
    } = &decl.ty
    else {
        return Some(format!("inferred {ours} but declared {decl}"));
    };
    if let (Some(a), Some(b)) = (ours.elem(), de) {
        if a != *b {
            return Some(format!("inferred {ours} but declared {decl}"));
        }
    }
    if let (Some(a), Some(b)) = (ours.shape(), ds) {
        if a.len() != b.len()
            || a.iter()
                .zip(b)
                .any(|(x, y)| matches!((x, y), (Dim::Known(p), Dim::Known(q)) if p != q))
        {
            return Some(format!("inferred {ours} but declared {decl}"));
        }
    }
    None
}

/// Fill what `ours` does not know from a compatible declared type.
fn refine(ours: &mut ValueType, decl: &ValueType) {
    let (
        Type::Tensor { elem, shape, .. },
        Type::Tensor {
            elem: de,
            shape: ds,
            ..
        },
    ) = (&mut ours.ty, &decl.ty)
    else {
        return;
    };
    if elem.is_none() {
        *elem = *de;
    }
    match (shape.as_mut(), ds) {
        (None, Some(d)) => *shape = Some(d.clone()),
        (Some(s), Some(d)) if s.len() == d.len() => {
            for (x, y) in s.iter_mut().zip(d) {
                if *x == Dim::Unknown {
                    *x = y.clone();
                }
            }
        }
        _ => {}
    }
}
