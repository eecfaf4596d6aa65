//! ONNX: the wire format (prost), import into the IR, export from it, and the textual syntax.
//! The only module that sees protobuf types.

pub mod error;
pub mod proto;
pub mod source;
pub mod tensor;
pub mod text;

pub use error::{ExportError, ImportError};
pub mod export;
pub mod import;

pub use export::{save, ExternalData, SaveOptions, SaveStats};
pub use import::{from_text, load};

/// The model in the ONNX textual syntax (constants over [`text::INLINE_LIMIT`] elements as
/// digests): what snapshot tests compare.
pub fn to_text(model: &crate::ir::Model) -> Result<String, ExportError> {
    Ok(text::print_model(&export::to_proto(model)?))
}
