//! Graph verification: the invariants every stage must leave true.

use super::{num_elements, DType, Graph, TensorData, ValueDef};

/// A broken invariant.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerifyError {
    /// A node reads a value that is not defined (or was removed).
    #[error("node '{node}' ({op}) reads value '{value}', which is not defined in the graph")]
    Dangling {
        node: String,
        op: String,
        value: String,
    },
    /// A graph output names a value that is not defined.
    #[error("graph output '{0}' is not defined in the graph")]
    DanglingOutput(String),
    /// The nodes form a cycle.
    #[error(transparent)]
    Graph(#[from] super::GraphError),
    /// A constant's data does not fit its type and shape.
    #[error("tensor '{name}': {dtype}{dims:?} needs {expected} bytes of data, found {found}")]
    DataLength {
        name: String,
        dtype: DType,
        dims: Vec<i64>,
        expected: usize,
        found: usize,
    },
    /// A constant's shape is invalid.
    #[error("tensor '{name}': invalid dims {dims:?}")]
    BadDims { name: String, dims: Vec<i64> },
    /// A string tensor's element count does not match its shape.
    #[error("tensor '{name}': {found} strings for shape {dims:?}")]
    StringCount {
        name: String,
        dims: Vec<i64>,
        found: usize,
    },
}

/// Check that every node input and graph output is defined, that the graph is acyclic, and
/// that every constant's data matches its type and shape.
pub fn verify(graph: &Graph) -> Result<(), VerifyError> {
    for n in graph.node_ids() {
        let node = graph.node(n);
        for v in node.inputs().iter().flatten().chain(node.captures()) {
            if matches!(graph.value(*v).def, ValueDef::Removed) {
                return Err(VerifyError::Dangling {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    value: graph.value(*v).name.clone(),
                });
            }
        }
    }
    for &o in &graph.outputs {
        if matches!(graph.value(o).def, ValueDef::Removed) {
            return Err(VerifyError::DanglingOutput(graph.value(o).name.clone()));
        }
    }
    graph.topo_order()?;
    for &v in graph.initializers() {
        let val = graph.value(v);
        if let ValueDef::Initializer(t) = &val.def {
            check_tensor(&val.name, t)?;
        }
        if let ValueDef::SparseInitializer(s) = &val.def {
            check_tensor(&val.name, &s.values)?;
            check_tensor(&val.name, &s.indices)?;
        }
    }
    Ok(())
}

/// Check one tensor's data length against its dtype and dims.
pub fn check_tensor(name: &str, t: &super::Tensor) -> Result<(), VerifyError> {
    let n = num_elements(&t.dims).ok_or_else(|| VerifyError::BadDims {
        name: name.to_string(),
        dims: t.dims.clone(),
    })?;
    match &t.data {
        TensorData::Raw(b) => {
            let expected = t.dtype.storage_bytes(n).unwrap_or(0);
            if b.len() != expected || t.dtype == DType::String {
                return Err(VerifyError::DataLength {
                    name: name.to_string(),
                    dtype: t.dtype,
                    dims: t.dims.clone(),
                    expected,
                    found: b.len(),
                });
            }
        }
        TensorData::Strings(s) => {
            if s.len() != n {
                return Err(VerifyError::StringCount {
                    name: name.to_string(),
                    dims: t.dims.clone(),
                    found: s.len(),
                });
            }
        }
    }
    Ok(())
}
