//! The ONNX textual syntax (`onnx/docs/Syntax.md`): a printer and a parser.
//!
//! [`print_model`] writes the form `onnx.printer.to_text` (onnx 1.23) writes, byte for byte, for
//! models whose constants are small; [`parse_model`] reads that form back, and everything
//! `onnx.parser.parse_model` reads (comments, attributes before or after the inputs, `Op(,x)`
//! empty operands, initializers in the input list, typed function parameters).
//!
//! # Extensions
//!
//! Two small extensions keep real models printable and round-trippable:
//!
//! - **Elided data.** A tensor with more than [`INLINE_LIMIT`] elements (and any tensor whose
//!   element type `onnx.printer` prints as `...`: the 2- and 4-bit types and the complex types)
//!   prints its type, shape and name and a digest instead of its values:
//!
//!   ```text
//!   float[50257,768] "wte.weight" = @fnv64 "8c3d5e0f12ab7790"
//!   ```
//!
//!   The string is the 16-digit hex of [`crate::ir::Tensor::digest`] of the decoded tensor.
//!   Parsing it yields a `TensorProto` with the type, dims and name, no data,
//!   `data_location = EXTERNAL` and the external-data entries `location = "hcc:elided"` and
//!   `digest = <hex>` ([`ELIDED_LOCATION`], [`DIGEST_KEY`]); printing that tensor prints the same
//!   line again, so print → parse → print is the identity on any model.
//!   Tensors with real external data print in the standard syntax,
//!   `float[2,3] w = ["location": "w.bin", "offset": "0", "length": "24"]`, which both parsers
//!   read back.
//! - **Sparse attribute values.** `onnx.printer` prints nothing after `sp: sparse_tensor =`;
//!   hcc prints `sparse(<values tensor>, <indices tensor>, [<dense dims>])`.
//!
//! Where `onnx.printer` prints text its own parser rejects, hcc prints a readable form instead:
//! an empty `strings` attribute is `[]` (not `]`).
//!
//! Not printed (as in `onnx.printer`): doc strings, node and value metadata, sparse
//! initializers, training info, quantization annotations, function attribute defaults and
//! function value infos.

mod parse;
mod print;

use miette::{NamedSource, SourceSpan};

pub use parse::{parse_graph, parse_model};
pub use print::{print_graph, print_model};

/// Tensors with more elements than this print a digest (`@fnv64 "..."`) instead of their values.
pub const INLINE_LIMIT: usize = 16;

/// The `location` external-data value that marks a tensor whose data was elided by the printer.
pub const ELIDED_LOCATION: &str = "hcc:elided";

/// The external-data key under which an elided tensor keeps its digest (16 hex digits).
pub const DIGEST_KEY: &str = "digest";

/// A syntax or meaning error in ONNX text, with the offending place in the source; render it with
/// miette (`miette::Report::new(e)`) to see the source line and a label under the place.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(transparent)]
#[diagnostic(transparent)]
pub struct TextError(Box<Detail>);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
#[diagnostic(code(hcc::onnx::text))]
struct Detail {
    message: String,
    #[source_code]
    src: NamedSource<String>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
}

impl TextError {
    pub(crate) fn new(
        src: &str,
        origin: &str,
        span: (usize, usize),
        message: String,
        label: String,
    ) -> TextError {
        let start = span.0.min(src.len());
        let len = span.1.min(src.len().saturating_sub(start));
        TextError(Box::new(Detail {
            message,
            src: NamedSource::new(origin, src.to_string()),
            span: SourceSpan::new(start.into(), len),
            label,
            help: None,
        }))
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> TextError {
        self.0.help = Some(help.into());
        self
    }

    /// What went wrong, e.g. "expected a type and a name such as float[N, 4] X, found ')'".
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The byte range of the offending text in the source.
    pub fn span(&self) -> SourceSpan {
        self.0.span
    }
}
