//! The intermediate representation: a typed SSA graph of ONNX operations.
//!
//! Vocabulary: a [`Graph`] holds [`Node`]s (operations) that read and define [`Value`]s; a
//! constant value is backed by a [`Tensor`]. The IR knows nothing of protobuf, files or GPUs.

mod dtype;
mod graph;
pub mod infer;
mod tensor;
mod types;
pub mod verify;

use bytes::Bytes;

pub use dtype::DType;
pub use graph::{
    AttrValue, Attribute, Graph, GraphError, Node, NodeId, Port, Subgraph, Value, ValueDef, ValueId,
};
pub use tensor::{num_elements, Encoding, SparseTensor, Tensor, TensorData};
pub use types::{Dim, Shape, Type, ValueType};

/// An operator set the model imports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OpsetImport {
    /// Domain (`""` or `ai.onnx` is the default domain).
    pub domain: String,
    /// Version.
    pub version: i64,
    /// Whether the source wrote an empty domain explicitly (kept for a byte-faithful export).
    pub domain_written: bool,
}

/// A whole model: the main graph plus model-level metadata.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// ONNX IR version.
    pub ir_version: i64,
    /// Operator sets, in source order.
    pub opset_import: Vec<OpsetImport>,
    /// `producer_name`.
    pub producer_name: String,
    /// `producer_version`.
    pub producer_version: String,
    /// `domain`.
    pub domain: String,
    /// `model_version`.
    pub model_version: i64,
    /// `doc_string`.
    pub doc_string: String,
    /// `metadata_props`, in order.
    pub metadata_props: Vec<(String, String)>,
    /// The main graph.
    pub graph: Graph,
    /// Model-local functions, carried through as encoded `FunctionProto`s.
    pub functions: Vec<Bytes>,
    /// Training information, carried through as encoded `TrainingInfoProto`s.
    pub training_info: Vec<Bytes>,
    /// Device configurations, carried through as encoded `DeviceConfigurationProto`s.
    pub configuration: Vec<Bytes>,
}

impl Model {
    /// The version of the default ONNX operator set, if imported.
    pub fn onnx_opset(&self) -> Option<i64> {
        self.opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }
}
