//! Errors of reading and writing ONNX.

use std::path::PathBuf;

/// Why a model could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or mapped.
    #[error("cannot read '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid protobuf `ModelProto` (truncated, or not ONNX at all).
    #[error("'{path}' is not a valid ONNX model (protobuf decoding failed: {reason}); is the file truncated or of another format?")]
    Decode { path: PathBuf, reason: String },
    /// The model has no graph.
    #[error("'{0}' holds no graph: it is not an ONNX model, or an empty one")]
    NoGraph(PathBuf),
    /// A model in the ONNX textual syntax did not parse.
    #[error("{0}")]
    Text(#[from] super::text::TextError),
    /// A tensor names a data type code this version does not know.
    #[error("tensor '{tensor}': unknown data type code {code}")]
    UnknownDType { tensor: String, code: i32 },
    /// A value's declared type names an unknown element type code.
    #[error("value '{value}': unknown element type code {code} in its declared type")]
    UnknownElemType { value: String, code: i32 },
    /// A tensor's data does not fit its type and shape.
    #[error("tensor '{tensor}': {detail}")]
    BadTensor { tensor: String, detail: String },
    /// External data is missing, escapes the model's folder, or is too short.
    #[error("tensor '{tensor}': external data {detail}")]
    ExternalData { tensor: String, detail: String },
    /// A node reads a value nothing defines.
    #[error(
        "node '{node}' ({op}) reads '{value}', which no graph input, initializer or node defines"
    )]
    Undefined {
        node: String,
        op: String,
        value: String,
    },
    /// A graph output names a value nothing defines.
    #[error("graph output '{0}' is not defined by any input, initializer or node")]
    UndefinedOutput(String),
    /// Two definitions of one value name.
    #[error("value '{0}' is defined more than once")]
    Duplicate(String),
    /// An attribute is malformed.
    #[error("node '{node}': attribute '{attr}': {detail}")]
    BadAttribute {
        node: String,
        attr: String,
        detail: String,
    },
    /// The graph is not a DAG.
    #[error("{0}")]
    Graph(#[from] crate::ir::GraphError),
}

/// Why a model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing failed.
    #[error("cannot write '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The graph does not verify.
    #[error("the graph is not valid: {0}")]
    Verify(#[from] crate::ir::verify::VerifyError),
    /// The model needs external data (over 2 GiB) but no file path was given to put it next to.
    #[error("the model is {0} bytes, over protobuf's 2 GiB limit: write it with external data")]
    TooLarge(u64),
}
