//! The pass language: `.hcp` files of rules and pipelines (docs/PASS_LANGUAGE.md).
//!
//! [`parse::parse_module`] turns one file into an [`ast::Module`]; [`check::load`] (and
//! [`load_str`], [`builtin_std`]) follows `use` imports, checks names, arities and types of every
//! rule and pipeline, and returns a [`Program`]. Every problem is a [`DslError`] that renders with
//! miette at `file:line:col`.

pub mod ast;
pub mod builtins;
pub mod check;
mod error;
pub mod onnx_ops;
pub mod parse;

use std::path::PathBuf;
use std::sync::Arc;

pub use check::{builtin_std, load, load_str, Program};
pub use error::{DslError, Problem, ProblemKind};
pub use parse::parse_module;

use ast::Span;

/// The text of the built-in standard library (`passes/std.hcp`), found by `use "std.hcp"` when no
/// `std.hcp` exists next to the importing file.
pub const STD_HCP: &str = include_str!("../../passes/std.hcp");

/// The display name of the built-in standard library.
pub const STD_NAME: &str = "<built-in>/std.hcp";

/// One loaded source file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The name shown in diagnostics (the path as given, or [`STD_NAME`]).
    pub name: String,
    /// Where it was read from; `None` for the built-in library and [`load_str`] sources.
    pub path: Option<PathBuf>,
    /// The text.
    pub text: Arc<str>,
}

/// The source files of a [`Program`]; a [`Span`]'s `file` indexes into this.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

/// A place in a source, for messages: `name:line:col` (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file's display name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

impl Sources {
    /// Adds a file; returns its index.
    pub fn add(&mut self, file: SourceFile) -> u32 {
        self.files.push(file);
        u32::try_from(self.files.len() - 1).unwrap_or(u32::MAX)
    }

    /// The file with this index.
    pub fn get(&self, file: u32) -> Option<&SourceFile> {
        self.files.get(file as usize)
    }

    /// All files, in load order.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The text a span covers (empty if the span is out of range).
    pub fn text(&self, span: Span) -> &str {
        self.get(span.file)
            .and_then(|f| f.text.get(span.start..span.end))
            .unwrap_or("")
    }

    /// `file:line:col` of a span's start.
    pub fn locate(&self, span: Span) -> Location {
        let Some(f) = self.get(span.file) else {
            return Location {
                file: "<unknown>".into(),
                line: 0,
                col: 0,
            };
        };
        let before = f.text.get(..span.start.min(f.text.len())).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: f.name.clone(),
            line,
            col,
        }
    }

    /// A problem at `span` (for the engine's messages about a rule, e.g. a kernel failure).
    pub fn problem(
        &self,
        kind: ProblemKind,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem::new(kind, self, span, message, label)
    }
}
