//! The typed computation graph: [`Node`]s on a petgraph `StableGraph`, [`Value`]s in an arena.
//!
//! A node's inputs and outputs are ordered ports holding [`ValueId`]s (or nothing, for an
//! omitted optional port). Every value has exactly one definition: a graph input, an
//! initializer, or one output port of one node. Petgraph edges (producer → consumer, weighted
//! by the value) exist for every node-to-node dependency and are kept in sync by the mutation
//! methods here, which are the only way to change ports.

use std::collections::{BinaryHeap, HashMap};

use bytes::Bytes;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use super::{SparseTensor, Tensor, ValueType};

/// A node's handle; stable across removals of other nodes.
pub type NodeId = NodeIndex<u32>;

/// A value's handle; stable for the life of the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// A named, typed value of the graph.
#[derive(Clone, Debug)]
pub struct Value {
    /// The value's name (unique within the graph).
    pub name: String,
    /// Where the value comes from.
    pub def: ValueDef,
    /// The type the source file declared (graph input/output or `value_info`), if any.
    pub declared: Option<ValueType>,
    /// The type shape inference computed, if any.
    pub inferred: Option<ValueType>,
    /// Whether the source listed this value in `value_info` (the exporter writes it back).
    pub in_value_info: bool,
    /// `doc_string` of the value's `ValueInfoProto`.
    pub doc_string: String,
    /// `metadata_props` of the value's `ValueInfoProto`.
    pub metadata_props: Vec<(String, String)>,
    uses: Vec<(NodeId, Port)>,
}

/// Where a node port reads a value: a numbered input, or an implicit capture by a subgraph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    /// The `i`-th input.
    Input(usize),
    /// The `i`-th outer-scope value a subgraph attribute of the node reads.
    Capture(usize),
}

/// The definition of a value.
#[derive(Clone, Debug)]
pub enum ValueDef {
    /// A graph input without an initializer.
    Input,
    /// A constant (ONNX initializer). It may also be listed among the graph inputs.
    Initializer(Tensor),
    /// A sparse constant (ONNX `sparse_initializer`).
    SparseInitializer(SparseTensor),
    /// Output `port` of `node`.
    Node(NodeId, usize),
    /// The value was removed from the graph.
    Removed,
}

impl Value {
    /// The type to use: inferred if known, else declared.
    pub fn ty(&self) -> Option<&ValueType> {
        self.inferred.as_ref().or(self.declared.as_ref())
    }

    /// The constant behind this value, if it is an initializer.
    pub fn constant(&self) -> Option<&Tensor> {
        match &self.def {
            ValueDef::Initializer(t) => Some(t),
            _ => None,
        }
    }

    /// The nodes and ports that read this value, in the order they were connected.
    pub fn uses(&self) -> &[(NodeId, Port)] {
        &self.uses
    }
}

/// One operation.
#[derive(Clone, Debug)]
pub struct Node {
    /// Node name (may be empty).
    pub name: String,
    /// Operator name (`MatMul`).
    pub op_type: String,
    /// Operator set domain (`""` is the default ONNX domain).
    pub domain: String,
    /// Function overload identifier (IR 10), carried through.
    pub overload: String,
    /// Attributes in source order.
    pub attributes: Vec<Attribute>,
    /// `doc_string`, carried through.
    pub doc_string: String,
    /// `metadata_props`, carried through.
    pub metadata_props: Vec<(String, String)>,
    /// Fields the IR does not model (device configurations), carried through as encoded bytes.
    pub opaque: Vec<Bytes>,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
    captures: Vec<ValueId>,
    seq: u64,
}

impl Node {
    /// A node with no ports yet; ports are set when it is added to a [`Graph`].
    pub fn new(op_type: impl Into<String>, name: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            op_type: op_type.into(),
            domain: String::new(),
            overload: String::new(),
            attributes: Vec::new(),
            doc_string: String::new(),
            metadata_props: Vec::new(),
            opaque: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            captures: Vec::new(),
            seq: 0,
        }
    }

    /// Builder: add an attribute.
    pub fn with_attr(mut self, name: impl Into<String>, value: AttrValue) -> Node {
        self.attributes.push(Attribute::new(name, value));
        self
    }

    /// Input ports (`None`: an omitted optional input).
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }

    /// The `i`-th input, if present.
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    /// Output ports (`None`: an unused optional output).
    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }

    /// The `i`-th output, if present.
    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }

    /// Outer-scope values read by this node's subgraph attributes.
    pub fn captures(&self) -> &[ValueId] {
        &self.captures
    }

    /// The attribute named `name`.
    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    /// An integer attribute.
    pub fn attr_i(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            AttrValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A float attribute.
    pub fn attr_f(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            AttrValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// An integer-list attribute.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// A string attribute, as UTF-8 (lossy).
    pub fn attr_s(&self, name: &str) -> Option<String> {
        match self.attr(name)? {
            AttrValue::String(v) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        }
    }

    /// Order key: nodes from the source keep their file order; new nodes sort after.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A named attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Attribute name.
    pub name: String,
    /// Its value.
    pub value: AttrValue,
    /// `doc_string`, carried through.
    pub doc_string: String,
    /// In functions: the name of the caller's attribute this one refers to (then the value
    /// only carries the type).
    pub ref_attr_name: String,
}

impl Attribute {
    /// An attribute with a value.
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        Attribute {
            name: name.into(),
            value,
            doc_string: String::new(),
            ref_attr_name: String::new(),
        }
    }
}

/// An attribute value, one variant per ONNX attribute type.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Undefined,
    Float(f32),
    Int(i64),
    String(Bytes),
    Tensor(Tensor),
    Graph(Subgraph),
    SparseTensor(SparseTensor),
    Type(ValueType),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Bytes>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<Subgraph>),
    SparseTensors(Vec<SparseTensor>),
    Types(Vec<ValueType>),
}

/// A subgraph (the body of `If`, `Loop`, `Scan`), carried through unchanged as its encoded
/// form, with the outer-scope names it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Subgraph {
    /// The encoded `GraphProto`.
    pub encoded: Bytes,
    /// Names of outer-scope values the subgraph (or its own subgraphs) reads.
    pub captures: Vec<String>,
}

/// Errors from graph mutation and ordering.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    /// Two values with one name.
    #[error("value name '{0}' is defined twice")]
    DuplicateName(String),
    /// The nodes form a cycle.
    #[error("the graph has a cycle through node '{node}' ({op})")]
    Cycle { node: String, op: String },
}

/// A computation graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// `doc_string`, carried through.
    pub doc_string: String,
    /// `metadata_props`, carried through.
    pub metadata_props: Vec<(String, String)>,
    /// Quantization annotations: (tensor name, [(key, value name)]), carried through.
    pub quantization_annotation: Vec<(String, Vec<(String, String)>)>,
    /// Graph inputs, in order (may include initializers, as older IR versions list them).
    pub inputs: Vec<ValueId>,
    /// Graph outputs, in order.
    pub outputs: Vec<ValueId>,
    g: StableGraph<Node, ValueId>,
    values: Vec<Value>,
    by_name: HashMap<String, ValueId>,
    initializers: Vec<ValueId>,
    value_info: Vec<ValueId>,
    next_seq: u64,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    /// The value `v`.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    /// The value `v`, mutably (its name, types and docs; not its uses).
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.0 as usize]
    }

    /// One past the largest value id ever handed out (ids are never reused).
    pub fn value_id_bound(&self) -> u32 {
        self.values.len() as u32
    }

    /// The live value called `name`.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    /// Every live value, in creation order.
    pub fn values(&self) -> impl Iterator<Item = (ValueId, &Value)> {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, v)| !matches!(v.def, ValueDef::Removed))
            .map(|(i, v)| (ValueId(i as u32), v))
    }

    /// The node `n`. Panics on a removed node (a programming error).
    pub fn node(&self, n: NodeId) -> &Node {
        &self.g[n]
    }

    /// The node `n`, mutably: attributes and names. Ports change through [`Graph`] methods.
    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        &mut self.g[n]
    }

    /// Whether `n` names a live node.
    pub fn contains_node(&self, n: NodeId) -> bool {
        self.g.contains_node(n)
    }

    /// Number of live nodes.
    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// Live node ids in source order (order of insertion), not necessarily topological.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.g.node_indices().collect();
        ids.sort_by_key(|&n| self.g[n].seq);
        ids
    }

    /// Initializers (dense and sparse), in stored order.
    pub fn initializers(&self) -> &[ValueId] {
        &self.initializers
    }

    /// Values listed in the source's `value_info`, in order (removed ones skipped).
    pub fn value_info(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.value_info
            .iter()
            .copied()
            .filter(|&v| !matches!(self.value(v).def, ValueDef::Removed))
    }

    /// The producer of `v`: (node, output port).
    pub fn producer(&self, v: ValueId) -> Option<(NodeId, usize)> {
        match self.value(v).def {
            ValueDef::Node(n, p) => Some((n, p)),
            _ => None,
        }
    }

    /// The constant behind `v`, if it is an initializer.
    pub fn constant(&self, v: ValueId) -> Option<&Tensor> {
        self.value(v).constant()
    }

    fn new_value(&mut self, name: String, def: ValueDef) -> Result<ValueId, GraphError> {
        if self.by_name.contains_key(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        let id = ValueId(self.values.len() as u32);
        self.by_name.insert(name.clone(), id);
        self.values.push(Value {
            name,
            def,
            declared: None,
            inferred: None,
            in_value_info: false,
            doc_string: String::new(),
            metadata_props: Vec::new(),
            uses: Vec::new(),
        });
        Ok(id)
    }

    /// A fresh value name starting with `base` that no live value uses.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.by_name.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.by_name.contains_key(n))
            .unwrap_or_default()
    }

    /// Add a graph input (appended to [`Graph::inputs`]).
    pub fn add_input(
        &mut self,
        name: impl Into<String>,
        ty: Option<ValueType>,
    ) -> Result<ValueId, GraphError> {
        let v = self.new_value(name.into(), ValueDef::Input)?;
        self.values[v.0 as usize].declared = ty;
        self.inputs.push(v);
        Ok(v)
    }

    /// Add a constant (appended to the stored initializers).
    pub fn add_initializer(
        &mut self,
        name: impl Into<String>,
        t: Tensor,
    ) -> Result<ValueId, GraphError> {
        let v = self.new_value(name.into(), ValueDef::Initializer(t))?;
        self.initializers.push(v);
        Ok(v)
    }

    /// Add a sparse constant (appended to the stored initializers).
    pub fn add_sparse_initializer(
        &mut self,
        name: impl Into<String>,
        t: SparseTensor,
    ) -> Result<ValueId, GraphError> {
        let v = self.new_value(name.into(), ValueDef::SparseInitializer(t))?;
        self.initializers.push(v);
        Ok(v)
    }

    /// Mark `v` as listed in `value_info` with the given declared type.
    pub fn declare_value_info(&mut self, v: ValueId, ty: Option<ValueType>) {
        let val = &mut self.values[v.0 as usize];
        if ty.is_some() {
            val.declared = ty;
        }
        if !val.in_value_info {
            val.in_value_info = true;
            self.value_info.push(v);
        }
    }

    /// Add `node` reading `inputs` and defining new values named `outputs` (`None`: an unused
    /// optional output). Returns the node and its output values.
    pub fn add_node(
        &mut self,
        mut node: Node,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<Option<String>>,
    ) -> Result<(NodeId, Vec<Option<ValueId>>), GraphError> {
        for name in outputs.iter().flatten() {
            if self.by_name.contains_key(name) {
                return Err(GraphError::DuplicateName(name.clone()));
            }
        }
        node.seq = self.next_seq;
        self.next_seq += 1;
        node.inputs = Vec::new();
        node.outputs = Vec::new();
        node.captures = Vec::new();
        let n = self.g.add_node(node);
        let mut outs = Vec::with_capacity(outputs.len());
        for (port, name) in outputs.into_iter().enumerate() {
            let v = match name {
                Some(name) => Some(self.new_value(name, ValueDef::Node(n, port))?),
                None => None,
            };
            outs.push(v);
        }
        self.g[n].outputs = outs.clone();
        self.g[n].inputs = vec![None; inputs.len()];
        for (port, v) in inputs.into_iter().enumerate() {
            self.set_input(n, port, v);
        }
        Ok((n, outs))
    }

    /// Set input `port` of `n` to `v` (growing the port list if needed), keeping uses and edges
    /// in sync.
    pub fn set_input(&mut self, n: NodeId, port: usize, v: Option<ValueId>) {
        if self.g[n].inputs.len() <= port {
            self.g[n].inputs.resize(port + 1, None);
        }
        if let Some(old) = self.g[n].inputs[port] {
            self.unlink(old, n, Port::Input(port));
        }
        self.g[n].inputs[port] = v;
        if let Some(v) = v {
            self.link(v, n, Port::Input(port));
        }
    }

    /// Set the outer-scope values read by `n`'s subgraphs.
    pub fn set_captures(&mut self, n: NodeId, captures: Vec<ValueId>) {
        let old = std::mem::take(&mut self.g[n].captures);
        for (i, v) in old.into_iter().enumerate() {
            self.unlink(v, n, Port::Capture(i));
        }
        for (i, &v) in captures.iter().enumerate() {
            self.link(v, n, Port::Capture(i));
        }
        self.g[n].captures = captures;
    }

    fn link(&mut self, v: ValueId, n: NodeId, port: Port) {
        self.values[v.0 as usize].uses.push((n, port));
        if let ValueDef::Node(p, _) = self.values[v.0 as usize].def {
            self.g.add_edge(p, n, v);
        }
    }

    fn unlink(&mut self, v: ValueId, n: NodeId, port: Port) {
        let uses = &mut self.values[v.0 as usize].uses;
        if let Some(i) = uses.iter().position(|&u| u == (n, port)) {
            uses.remove(i);
        }
        if let ValueDef::Node(p, _) = self.values[v.0 as usize].def {
            let edge = self
                .g
                .edges_connecting(p, n)
                .find(|e| *e.weight() == v)
                .map(|e| e.id());
            if let Some(e) = edge {
                self.g.remove_edge(e);
            }
        }
    }

    /// Make every reader of `old` (node ports and graph outputs) read `new` instead.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        let uses = self.values[old.0 as usize].uses.clone();
        for (n, port) in uses {
            match port {
                Port::Input(i) => self.set_input(n, i, Some(new)),
                Port::Capture(i) => {
                    let mut caps = self.g[n].captures.clone();
                    caps[i] = new;
                    self.set_captures(n, caps);
                }
            }
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Remove node `n` and the values it defines. Readers of those values are left reading
    /// them, which [`crate::ir::verify`] reports; remove or rewire them first.
    pub fn remove_node(&mut self, n: NodeId) {
        let node = &self.g[n];
        let inputs: Vec<(usize, ValueId)> = node
            .inputs
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .collect();
        let captures = node.captures.clone();
        let outputs: Vec<ValueId> = node.outputs.iter().flatten().copied().collect();
        for (i, v) in inputs {
            self.unlink(v, n, Port::Input(i));
        }
        for (i, v) in captures.into_iter().enumerate() {
            self.unlink(v, n, Port::Capture(i));
        }
        for v in outputs {
            self.remove_value(v);
        }
        self.g.remove_node(n);
    }

    /// Turn the node output `v` into a graph input (appended to [`Graph::inputs`]): its producer
    /// no longer defines it (that output port becomes unused) and its readers read the input.
    /// Used to cut a graph at a value, e.g. to run one block of a model on stored activations.
    /// A value that is not a node output is left as it is.
    pub fn make_input(&mut self, v: ValueId) {
        let ValueDef::Node(p, port) = self.values[v.0 as usize].def else {
            return;
        };
        let edges: Vec<_> = self
            .g
            .edges_directed(p, Direction::Outgoing)
            .filter(|e| *e.weight() == v)
            .map(|e| e.id())
            .collect();
        for e in edges {
            self.g.remove_edge(e);
        }
        self.g[p].outputs[port] = None;
        self.values[v.0 as usize].def = ValueDef::Input;
        self.inputs.push(v);
    }

    /// Remove a value (an initializer or a node output) from the graph. It must have no uses.
    pub fn remove_value(&mut self, v: ValueId) {
        let name = self.values[v.0 as usize].name.clone();
        if self.by_name.get(&name) == Some(&v) {
            self.by_name.remove(&name);
        }
        self.values[v.0 as usize].def = ValueDef::Removed;
        self.initializers.retain(|&i| i != v);
        self.inputs.retain(|&i| i != v);
    }

    /// Rename `v`; fails if the name is taken by another live value.
    pub fn rename_value(&mut self, v: ValueId, name: impl Into<String>) -> Result<(), GraphError> {
        let name = name.into();
        if let Some(&other) = self.by_name.get(&name) {
            if other == v {
                return Ok(());
            }
            return Err(GraphError::DuplicateName(name));
        }
        let old = std::mem::replace(&mut self.values[v.0 as usize].name, name.clone());
        self.by_name.remove(&old);
        self.by_name.insert(name, v);
        Ok(())
    }

    /// Nodes in a topological order; among ready nodes, source order first. An already sorted
    /// source graph therefore keeps its exact node order.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, GraphError> {
        let mut indeg: HashMap<NodeId, usize> = HashMap::with_capacity(self.g.node_count());
        let mut heap = BinaryHeap::new();
        for n in self.g.node_indices() {
            let d = self.g.edges_directed(n, Direction::Incoming).count();
            indeg.insert(n, d);
            if d == 0 {
                heap.push(std::cmp::Reverse((self.g[n].seq, n)));
            }
        }
        let mut order = Vec::with_capacity(self.g.node_count());
        while let Some(std::cmp::Reverse((_, n))) = heap.pop() {
            order.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                if let Some(d) = indeg.get_mut(&t) {
                    *d -= 1;
                    if *d == 0 {
                        heap.push(std::cmp::Reverse((self.g[t].seq, t)));
                    }
                }
            }
        }
        if order.len() != self.g.node_count() {
            let stuck = self
                .node_ids()
                .into_iter()
                .find(|n| indeg.get(n).copied().unwrap_or(0) > 0)
                .unwrap_or_default();
            let node = &self.g[stuck];
            return Err(GraphError::Cycle {
                node: node.name.clone(),
                op: node.op_type.clone(),
            });
        }
        Ok(order)
    }

    /// Remove nodes whose outputs nobody reads and initializers nobody reads, repeatedly.
    /// Graph inputs and outputs are kept. Returns (nodes removed, constants removed).
    pub fn remove_dead(&mut self) -> (usize, usize) {
        let mut nodes = 0;
        let mut consts = 0;
        loop {
            let outputs: std::collections::HashSet<ValueId> =
                self.outputs.iter().copied().collect();
            let dead: Vec<NodeId> =
                self.g
                    .node_indices()
                    .filter(|&n| {
                        self.g[n].outputs.iter().flatten().all(|v| {
                            self.values[v.0 as usize].uses.is_empty() && !outputs.contains(v)
                        })
                    })
                    .collect();
            if dead.is_empty() {
                break;
            }
            for n in dead {
                self.remove_node(n);
                nodes += 1;
            }
        }
        let outputs: std::collections::HashSet<ValueId> = self.outputs.iter().copied().collect();
        let inputs: std::collections::HashSet<ValueId> = self.inputs.iter().copied().collect();
        let dead: Vec<ValueId> = self
            .initializers
            .iter()
            .copied()
            .filter(|v| {
                self.values[v.0 as usize].uses.is_empty()
                    && !outputs.contains(v)
                    && !inputs.contains(v)
            })
            .collect();
        for v in dead {
            self.remove_value(v);
            consts += 1;
        }
        (nodes, consts)
    }
}
