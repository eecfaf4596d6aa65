//! Import: ONNX file → protobuf (zero-copy over a memory map) → [`ir::Model`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use super::error::ImportError;
use super::proto::{self, attribute_type as at, ModelProto};
use super::tensor::{
    is_confined, kv_from_proto, sparse_from_proto, tensor_from_proto, ExternalResolver,
};
use crate::ir::{
    AttrValue, Attribute, DType, Dim, Graph, GraphError, Model, Node, OpsetImport, Subgraph, Type,
    ValueId, ValueType,
};

/// Map a file read-only and wrap it as [`Bytes`] (no copy). Empty files give empty bytes.
pub fn map_file(path: &Path) -> Result<Bytes, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only. hcc never writes to its inputs; another process truncating
    // the file while we run is outside what any reader of a mapped file can defend against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    Ok(Bytes::from_owner(super::source::Mapped::new(map, file)))
}

/// Decode a `ModelProto` from bytes; `path` names the source in errors.
pub fn decode(bytes: Bytes, path: &Path) -> Result<ModelProto, ImportError> {
    ModelProto::decode(bytes).map_err(|e| ImportError::Decode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Load an ONNX model file into the IR. Weights (raw and external) stay in memory maps.
/// A file named `*.onnxtxt` is read in the ONNX textual syntax.
pub fn load(path: &Path) -> Result<Model, ImportError> {
    if path.extension().is_some_and(|e| e == "onnxtxt") {
        let src = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        return from_text(&src, &path.display().to_string());
    }
    let bytes = map_file(path)?;
    let proto = decode(bytes, path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let resolver = FileResolver::new(base);
    import(proto, &resolver, path)
}

/// Read a model written in the ONNX textual syntax; `origin` names it in diagnostics.
pub fn from_text(src: &str, origin: &str) -> Result<Model, ImportError> {
    let proto = super::text::parse_model(src, origin)?;
    import(proto, &super::tensor::NoExternal, Path::new(origin))
}

/// Resolves external data relative to a model's folder, mapping each file once.
pub struct FileResolver {
    base: PathBuf,
    maps: RefCell<HashMap<String, Bytes>>,
}

impl FileResolver {
    /// A resolver for a model stored in the folder `base`.
    pub fn new(base: PathBuf) -> FileResolver {
        FileResolver {
            base,
            maps: RefCell::new(HashMap::new()),
        }
    }
}

impl ExternalResolver for FileResolver {
    fn read(
        &self,
        tensor: &str,
        location: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Bytes, ImportError> {
        let err = |detail: String| ImportError::ExternalData {
            tensor: tensor.to_string(),
            detail,
        };
        if !is_confined(location) {
            return Err(err(format!(
                "location '{location}' escapes the model's folder"
            )));
        }
        let cached = self.maps.borrow().get(location).cloned();
        let data = match cached {
            Some(d) => d,
            None => {
                let path = self.base.join(location);
                if !path.exists() {
                    return Err(err(format!("file '{}' does not exist", path.display())));
                }
                // Reject symlinks that lead outside the model's folder.
                let canon_base = self
                    .base
                    .canonicalize()
                    .unwrap_or_else(|_| self.base.clone());
                let canon = path
                    .canonicalize()
                    .map_err(|e| err(format!("file '{}': {e}", path.display())))?;
                if !canon.starts_with(&canon_base) {
                    return Err(err(format!(
                        "location '{location}' resolves outside the model's folder"
                    )));
                }
                let d = map_file(&path).map_err(|e| err(e.to_string()))?;
                self.maps
                    .borrow_mut()
                    .insert(location.to_string(), d.clone());
                d
            }
        };
        let size = data.len() as u64;
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(size),
        };
        match end {
            Some(end) if offset <= size && end <= size && offset <= end => {
                Ok(data.slice(offset as usize..end as usize))
            }
            _ => Err(err(format!(
                "'{location}' is {size} bytes, too short for offset {offset} and length {}",
                length.map_or("(rest)".to_string(), |l| l.to_string())
            ))),
        }
    }
}

/// Convert a decoded `ModelProto` into the IR. `path` names the source in errors.
pub fn import(
    p: ModelProto,
    resolver: &dyn ExternalResolver,
    path: &Path,
) -> Result<Model, ImportError> {
    let graph = p
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::NoGraph(path.to_path_buf()))?;
    let mut graph = import_graph(graph, resolver)?;
    let opset = p
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(1);
    let stats = crate::ir::infer::infer_shapes(&mut graph, opset);
    for w in &stats.warnings {
        tracing::debug!("shape inference: {w}");
    }
    Ok(Model {
        ir_version: p.ir_version.unwrap_or(0),
        opset_import: p
            .opset_import
            .iter()
            .map(|o| OpsetImport {
                domain: o.domain.clone().unwrap_or_default(),
                version: o.version.unwrap_or(0),
                domain_written: o.domain.is_some(),
            })
            .collect(),
        producer_name: p.producer_name.clone().unwrap_or_default(),
        producer_version: p.producer_version.clone().unwrap_or_default(),
        domain: p.domain.clone().unwrap_or_default(),
        model_version: p.model_version.unwrap_or(0),
        doc_string: p.doc_string.clone().unwrap_or_default(),
        metadata_props: kv_from_proto(&p.metadata_props),
        graph,
        functions: p
            .functions
            .iter()
            .map(|f| Bytes::from(f.encode_to_vec()))
            .collect(),
        training_info: p
            .training_info
            .iter()
            .map(|t| Bytes::from(t.encode_to_vec()))
            .collect(),
        configuration: p
            .configuration
            .iter()
            .map(|c| Bytes::from(c.encode_to_vec()))
            .collect(),
    })
}

fn dup(e: GraphError) -> ImportError {
    match e {
        GraphError::DuplicateName(n) => ImportError::Duplicate(n),
        other => ImportError::Graph(other),
    }
}

/// Convert a top-level `GraphProto`.
pub fn import_graph(
    g: &proto::GraphProto,
    resolver: &dyn ExternalResolver,
) -> Result<Graph, ImportError> {
    let mut graph = Graph::new(g.name.clone().unwrap_or_default());
    graph.doc_string = g.doc_string.clone().unwrap_or_default();
    graph.metadata_props = kv_from_proto(&g.metadata_props);
    graph.quantization_annotation = g
        .quantization_annotation
        .iter()
        .map(|a| {
            (
                a.tensor_name.clone().unwrap_or_default(),
                kv_from_proto(&a.quant_parameter_tensor_names),
            )
        })
        .collect();

    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        let tensor = tensor_from_proto(t, resolver)?;
        graph.add_initializer(name, tensor).map_err(dup)?;
    }
    for s in &g.sparse_initializer {
        let name = s
            .values
            .as_ref()
            .and_then(|v| v.name.clone())
            .unwrap_or_default();
        let tensor = sparse_from_proto(s, resolver)?;
        graph.add_sparse_initializer(name, tensor).map_err(dup)?;
    }
    for vi in &g.input {
        let name = vi.name.clone().unwrap_or_default();
        let ty = value_type(vi, &name)?;
        let v = match graph.value_by_name(&name) {
            Some(v) => {
                graph.inputs.push(v);
                graph.value_mut(v).declared = ty;
                v
            }
            None => graph.add_input(name, ty).map_err(dup)?,
        };
        set_info(&mut graph, v, vi);
    }

    // Nodes: first every node with its outputs, then connect inputs, so that a graph whose
    // nodes are out of order (or cyclic) is read and then reported precisely.
    let mut created = Vec::with_capacity(g.node.len());
    for np in &g.node {
        let node = import_node(np, resolver)?;
        let outputs = np
            .output
            .iter()
            .map(|o| (!o.is_empty()).then(|| o.clone()))
            .collect();
        let (n, _) = graph.add_node(node, Vec::new(), outputs).map_err(dup)?;
        created.push(n);
    }
    for (np, &n) in g.node.iter().zip(&created) {
        let undefined = |value: &str| ImportError::Undefined {
            node: np.name.clone().unwrap_or_default(),
            op: np.op_type.clone().unwrap_or_default(),
            value: value.to_string(),
        };
        for (port, name) in np.input.iter().enumerate() {
            let v = if name.is_empty() {
                None
            } else {
                Some(graph.value_by_name(name).ok_or_else(|| undefined(name))?)
            };
            graph.set_input(n, port, v);
        }
        let mut captures = Vec::new();
        let mut seen = HashSet::new();
        for a in &np.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                for name in free_names(sub) {
                    if seen.insert(name.clone()) {
                        captures.push(graph.value_by_name(&name).ok_or_else(|| undefined(&name))?);
                    }
                }
            }
        }
        if !captures.is_empty() {
            graph.set_captures(n, captures);
        }
    }

    for vi in &g.value_info {
        let name = vi.name.clone().unwrap_or_default();
        let ty = value_type(vi, &name)?;
        match graph.value_by_name(&name) {
            Some(v) => {
                graph.declare_value_info(v, ty);
                set_info(&mut graph, v, vi);
            }
            None => {
                tracing::warn!("value_info for '{name}', which the graph does not define, dropped")
            }
        }
    }
    for vi in &g.output {
        let name = vi.name.clone().unwrap_or_default();
        let ty = value_type(vi, &name)?;
        let v = graph
            .value_by_name(&name)
            .ok_or_else(|| ImportError::UndefinedOutput(name.clone()))?;
        graph.outputs.push(v);
        if ty.is_some() {
            graph.value_mut(v).declared = ty;
        }
        set_info(&mut graph, v, vi);
    }
    graph.topo_order()?;
    Ok(graph)
}

fn set_info(graph: &mut Graph, v: ValueId, vi: &proto::ValueInfoProto) {
    let val = graph.value_mut(v);
    if let Some(d) = &vi.doc_string {
        val.doc_string = d.clone();
    }
    if !vi.metadata_props.is_empty() {
        val.metadata_props = kv_from_proto(&vi.metadata_props);
    }
}

/// Names a subgraph reads from enclosing scopes (recursively through nested subgraphs).
fn free_names(g: &proto::GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = HashSet::new();
    for i in &g.input {
        defined.insert(i.name.as_deref().unwrap_or(""));
    }
    for t in &g.initializer {
        defined.insert(t.name.as_deref().unwrap_or(""));
    }
    for s in &g.sparse_initializer {
        if let Some(v) = &s.values {
            defined.insert(v.name.as_deref().unwrap_or(""));
        }
    }
    for n in &g.node {
        for o in &n.output {
            defined.insert(o);
        }
    }
    let mut free = Vec::new();
    let mut seen = HashSet::new();
    let mut note = |name: &str, free: &mut Vec<String>| {
        if !name.is_empty() && !defined.contains(name) && seen.insert(name.to_string()) {
            free.push(name.to_string());
        }
    };
    for n in &g.node {
        for i in &n.input {
            note(i, &mut free);
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                for name in free_names(sub) {
                    note(&name, &mut free);
                }
            }
        }
    }
    for o in &g.output {
        note(o.name.as_deref().unwrap_or(""), &mut free);
    }
    free
}

fn import_node(
    np: &proto::NodeProto,
    resolver: &dyn ExternalResolver,
) -> Result<Node, ImportError> {
    let mut node = Node::new(
        np.op_type.clone().unwrap_or_default(),
        np.name.clone().unwrap_or_default(),
    );
    node.domain = np.domain.clone().unwrap_or_default();
    node.overload = np.overload.clone().unwrap_or_default();
    node.doc_string = np.doc_string.clone().unwrap_or_default();
    node.metadata_props = kv_from_proto(&np.metadata_props);
    node.opaque = np
        .device_configurations
        .iter()
        .map(|d| Bytes::from(d.encode_to_vec()))
        .collect();
    for a in &np.attribute {
        node.attributes
            .push(import_attribute(a, &node.name, resolver)?);
    }
    Ok(node)
}

/// Convert an attribute. Its kind comes from the `type` field; files from before IR version 2
/// (no `type`) are read by which field is set.
pub fn import_attribute(
    a: &proto::AttributeProto,
    node: &str,
    resolver: &dyn ExternalResolver,
) -> Result<Attribute, ImportError> {
    let name = a.name.clone().unwrap_or_default();
    let bad = |detail: String| ImportError::BadAttribute {
        node: node.to_string(),
        attr: name.clone(),
        detail,
    };
    let kind = a.r#type.unwrap_or_else(|| infer_attr_kind(a));
    let tensors = |ts: &[proto::TensorProto]| -> Result<Vec<_>, ImportError> {
        ts.iter().map(|t| tensor_from_proto(t, resolver)).collect()
    };
    let value = match kind {
        at::UNDEFINED => AttrValue::Undefined,
        at::FLOAT => AttrValue::Float(a.f.unwrap_or(0.0)),
        at::INT => AttrValue::Int(a.i.unwrap_or(0)),
        at::STRING => AttrValue::String(a.s.clone().unwrap_or_default()),
        at::TENSOR => match &a.t {
            Some(t) => AttrValue::Tensor(tensor_from_proto(t, resolver)?),
            None if a.ref_attr_name.is_some() => AttrValue::Undefined,
            None => return Err(bad("TENSOR attribute without a tensor".into())),
        },
        at::GRAPH => match &a.g {
            Some(g) => AttrValue::Graph(subgraph(g, resolver)?),
            None if a.ref_attr_name.is_some() => AttrValue::Undefined,
            None => return Err(bad("GRAPH attribute without a graph".into())),
        },
        at::SPARSE_TENSOR => match &a.sparse_tensor {
            Some(s) => AttrValue::SparseTensor(sparse_from_proto(s, resolver)?),
            None if a.ref_attr_name.is_some() => AttrValue::Undefined,
            None => return Err(bad("SPARSE_TENSOR attribute without a tensor".into())),
        },
        at::TYPE_PROTO => match &a.tp {
            Some(t) => AttrValue::Type(convert_type(t, &name)?),
            None if a.ref_attr_name.is_some() => AttrValue::Undefined,
            None => return Err(bad("TYPE_PROTO attribute without a type".into())),
        },
        at::FLOATS => AttrValue::Floats(a.floats.clone()),
        at::INTS => AttrValue::Ints(a.ints.clone()),
        at::STRINGS => AttrValue::Strings(a.strings.clone()),
        at::TENSORS => AttrValue::Tensors(tensors(&a.tensors)?),
        at::GRAPHS => AttrValue::Graphs(
            a.graphs
                .iter()
                .map(|g| subgraph(g, resolver))
                .collect::<Result<_, _>>()?,
        ),
        at::SPARSE_TENSORS => AttrValue::SparseTensors(
            a.sparse_tensors
                .iter()
                .map(|s| sparse_from_proto(s, resolver))
                .collect::<Result<_, _>>()?,
        ),
        at::TYPE_PROTOS => AttrValue::Types(
            a.type_protos
                .iter()
                .map(|t| convert_type(t, &name))
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(bad(format!("unknown attribute type {other}"))),
    };
    Ok(Attribute {
        name: name.clone(),
        value,
        doc_string: a.doc_string.clone().unwrap_or_default(),
        ref_attr_name: a.ref_attr_name.clone().unwrap_or_default(),
    })
}

fn infer_attr_kind(a: &proto::AttributeProto) -> i32 {
    if a.f.is_some() {
        at::FLOAT
    } else if a.i.is_some() {
        at::INT
    } else if a.s.is_some() {
        at::STRING
    } else if a.t.is_some() {
        at::TENSOR
    } else if a.g.is_some() {
        at::GRAPH
    } else if a.sparse_tensor.is_some() {
        at::SPARSE_TENSOR
    } else if a.tp.is_some() {
        at::TYPE_PROTO
    } else if !a.floats.is_empty() {
        at::FLOATS
    } else if !a.ints.is_empty() {
        at::INTS
    } else if !a.strings.is_empty() {
        at::STRINGS
    } else if !a.tensors.is_empty() {
        at::TENSORS
    } else if !a.graphs.is_empty() {
        at::GRAPHS
    } else if !a.sparse_tensors.is_empty() {
        at::SPARSE_TENSORS
    } else if !a.type_protos.is_empty() {
        at::TYPE_PROTOS
    } else {
        at::UNDEFINED
    }
}

/// A subgraph, kept encoded. External data inside it is loaded inline first, so the encoded
/// form does not depend on files next to the source model.
fn subgraph(
    g: &proto::GraphProto,
    resolver: &dyn ExternalResolver,
) -> Result<Subgraph, ImportError> {
    let mut g = g.clone();
    inline_external(&mut g, resolver)?;
    Ok(Subgraph {
        encoded: Bytes::from(g.encode_to_vec()),
        captures: free_names(&g),
    })
}

fn inline_external(
    g: &mut proto::GraphProto,
    resolver: &dyn ExternalResolver,
) -> Result<(), ImportError> {
    fn fix(t: &mut proto::TensorProto, resolver: &dyn ExternalResolver) -> Result<(), ImportError> {
        if t.data_location == Some(proto::data_location::EXTERNAL) {
            let tensor = tensor_from_proto(t, resolver)?;
            t.raw_data = tensor.raw().cloned();
            t.external_data.clear();
            t.data_location = None;
        }
        Ok(())
    }
    for t in &mut g.initializer {
        fix(t, resolver)?;
    }
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = &mut a.t {
                fix(t, resolver)?;
            }
            for t in &mut a.tensors {
                fix(t, resolver)?;
            }
            if let Some(sg) = &mut a.g {
                inline_external(sg, resolver)?;
            }
            for sg in &mut a.graphs {
                inline_external(sg, resolver)?;
            }
        }
    }
    Ok(())
}

fn value_type(vi: &proto::ValueInfoProto, name: &str) -> Result<Option<ValueType>, ImportError> {
    vi.r#type
        .as_ref()
        .map(|t| convert_type(t, name))
        .transpose()
}

fn elem(code: Option<i32>, name: &str) -> Result<Option<DType>, ImportError> {
    match code {
        None | Some(0) => Ok(None),
        Some(c) => DType::from_onnx(c)
            .map(Some)
            .ok_or_else(|| ImportError::UnknownElemType {
                value: name.to_string(),
                code: c,
            }),
    }
}

fn shape(s: &Option<proto::TensorShapeProto>) -> (Option<Vec<Dim>>, Vec<(usize, String)>) {
    use proto::tensor_shape_proto::dimension::Value as D;
    match s {
        None => (None, Vec::new()),
        Some(s) => {
            let dims = s
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(D::DimValue(v)) => Dim::Known(*v),
                    Some(D::DimParam(p)) => Dim::Sym(p.clone()),
                    None => Dim::Unknown,
                })
                .collect();
            let den = s
                .dim
                .iter()
                .enumerate()
                .filter_map(|(i, d)| d.denotation.clone().map(|x| (i, x)))
                .collect();
            (Some(dims), den)
        }
    }
}

/// Convert a `TypeProto`; `name` names the value in errors.
pub fn convert_type(t: &proto::TypeProto, name: &str) -> Result<ValueType, ImportError> {
    use proto::type_proto::Value as V;
    let boxed = |t: &Option<Box<proto::TypeProto>>| -> Result<Option<Box<ValueType>>, ImportError> {
        t.as_ref()
            .map(|t| convert_type(t, name).map(Box::new))
            .transpose()
    };
    let ty = match &t.value {
        None => Type::Undefined,
        Some(V::TensorType(tt)) => {
            let (shape, dim_denotations) = shape(&tt.shape);
            Type::Tensor {
                elem: elem(tt.elem_type, name)?,
                shape,
                dim_denotations,
            }
        }
        Some(V::SparseTensorType(tt)) => {
            let (shape, dim_denotations) = shape(&tt.shape);
            Type::SparseTensor {
                elem: elem(tt.elem_type, name)?,
                shape,
                dim_denotations,
            }
        }
        Some(V::SequenceType(s)) => Type::Sequence(boxed(&s.elem_type)?),
        Some(V::OptionalType(s)) => Type::Optional(boxed(&s.elem_type)?),
        Some(V::MapType(m)) => Type::Map {
            key: elem(m.key_type, name)?,
            value: boxed(&m.value_type)?,
        },
        Some(V::OpaqueType(o)) => Type::Opaque {
            domain: o.domain.clone().unwrap_or_default(),
            name: o.name.clone().unwrap_or_default(),
        },
    };
    Ok(ValueType {
        ty,
        denotation: t.denotation.clone(),
    })
}
