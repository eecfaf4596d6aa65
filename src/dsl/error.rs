//! [`DslError`]: one or more problems found in `.hcp` sources, each pointing at the offending
//! text. Rendered with miette, a problem shows `file:line:col`, the source line with the text
//! underlined, what was expected, and a help line where one is useful.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};

use super::ast::Span;
use super::Sources;

/// What sort of problem a [`Problem`] is; also its miette code (`hcc::dsl::<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// The text does not follow the grammar.
    Syntax,
    /// A `use` that cannot be followed: a missing file, a cycle.
    Use,
    /// An unknown or misplaced name: unbound variable, unknown function, op or rule.
    Name,
    /// A name defined twice.
    Duplicate,
    /// Wrong number of arguments, operands or outputs.
    Arity,
    /// A value of the wrong type.
    Type,
    /// A literal out of range (`repeat max 0`, `budget ratio 0`, a bad size suffix).
    Value,
    /// A problem found while running a rule on a model (reported by the engine).
    Runtime,
}

impl ProblemKind {
    fn code(self) -> &'static str {
        match self {
            ProblemKind::Syntax => "hcc::dsl::syntax",
            ProblemKind::Use => "hcc::dsl::use",
            ProblemKind::Name => "hcc::dsl::name",
            ProblemKind::Duplicate => "hcc::dsl::duplicate",
            ProblemKind::Arity => "hcc::dsl::arity",
            ProblemKind::Type => "hcc::dsl::type",
            ProblemKind::Value => "hcc::dsl::value",
            ProblemKind::Runtime => "hcc::dsl::runtime",
        }
    }
}

/// One problem at one place.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Problem {
    kind: ProblemKind,
    message: String,
    span: Option<Span>,
    label: String,
    help: Option<String>,
    /// Secondary places in the same file ("first defined here").
    notes: Vec<(Span, String)>,
    src_code: Option<NamedSource<Arc<str>>>,
}

impl Problem {
    /// A problem at `span` (in `sources`), with a label under the offending text.
    pub fn new(
        kind: ProblemKind,
        sources: &Sources,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        let source = sources
            .get(span.file)
            .map(|f| NamedSource::new(&f.name, f.text.clone()));
        Problem::with_source(kind, source, span, message, label)
    }

    /// A problem at `span` in a source given by name and text.
    pub(crate) fn in_text(
        kind: ProblemKind,
        name: &str,
        text: &Arc<str>,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        let source = Some(NamedSource::new(name, text.clone()));
        Problem::with_source(kind, source, span, message, label)
    }

    fn with_source(
        kind: ProblemKind,
        src_code: Option<NamedSource<Arc<str>>>,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem {
            kind,
            message: message.into(),
            span: Some(span),
            label: label.into(),
            help: None,
            notes: Vec::new(),
            src_code,
        }
    }

    /// A problem with no place in any source (e.g. the root file cannot be read).
    pub fn nowhere(kind: ProblemKind, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            message: message.into(),
            span: None,
            label: String::new(),
            help: None,
            notes: Vec::new(),
            src_code: None,
        }
    }

    /// Adds a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Sets the help line in place.
    pub(crate) fn set_help(&mut self, help: impl Into<String>) {
        self.help = Some(help.into());
    }

    /// Adds a secondary label at another place in the same file.
    pub fn with_note(mut self, span: Span, label: impl Into<String>) -> Problem {
        if self.span.is_some_and(|s| s.file == span.file) {
            self.notes.push((span, label.into()));
        }
        self
    }

    /// What sort of problem this is.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The one-line description, e.g. "unknown function `numell`".
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where the problem is, if it has a place.
    pub fn span(&self) -> Option<Span> {
        self.span
    }

    /// The help line, if any.
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    fn source_span(&self, span: Span) -> SourceSpan {
        let len = self
            .src_code
            .as_ref()
            .map_or(0, |s| s.inner().len())
            .saturating_sub(span.start);
        SourceSpan::new(
            span.start.into(),
            span.end.saturating_sub(span.start).min(len),
        )
    }
}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.src_code.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        self.src_code.as_ref()?;
        let primary = LabeledSpan::new_primary_with_span(
            Some(self.label.clone()).filter(|l| !l.is_empty()),
            self.source_span(span),
        );
        let notes = self
            .notes
            .iter()
            .map(|(s, l)| LabeledSpan::new_with_span(Some(l.clone()), self.source_span(*s)));
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

/// Errors in `.hcp` sources: always at least one [`Problem`]; several problems found in one pass
/// over the sources are reported together (the first as the main diagnostic, the rest as
/// related ones).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{first}")]
pub struct DslError {
    first: Box<Problem>,
    rest: Vec<Problem>,
}

impl DslError {
    /// An error of several problems; `None` if `problems` is empty.
    pub fn from_problems(problems: Vec<Problem>) -> Option<DslError> {
        let mut it = problems.into_iter();
        let first = it.next()?;
        Some(DslError {
            first: Box::new(first),
            rest: it.collect(),
        })
    }

    /// All problems, in source order.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        std::iter::once(&*self.first).chain(self.rest.iter())
    }

    /// The number of problems.
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Always false: a `DslError` holds at least one problem.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl From<Problem> for DslError {
    fn from(p: Problem) -> DslError {
        DslError {
            first: Box::new(p),
            rest: Vec::new(),
        }
    }
}

impl Diagnostic for DslError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.first.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.first.help()
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.first.source_code()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.first.labels()
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(Box::new(self.rest.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// The candidate closest to `name` (edit distance, ignoring case), if close enough to be a likely
/// typo: "did you mean `numel`?".
pub(crate) fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let limit = match name.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    };
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let d = edit_distance(&lower, &c.to_ascii_lowercase());
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Edit distance where inserting, deleting, replacing a character or swapping two neighbours
/// each count one (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 0..a.len() {
        let mut cur = vec![i + 1; b.len() + 1];
        for j in 0..b.len() {
            let sub = prev[j] + usize::from(a[i] != b[j]);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                cur[j + 1] = cur[j + 1].min(before[j - 1] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("numell", ["numel", "rank"]), Some("numel"));
        assert_eq!(
            did_you_mean("Tranpose", ["Transpose", "MatMul"]),
            Some("Transpose")
        );
        assert_eq!(did_you_mean("matmul", ["MatMul"]), Some("MatMul"));
        assert_eq!(did_you_mean("xyz", ["numel", "rank"]), None);
        assert_eq!(did_you_mean("prem", ["perm", "y"]), Some("perm"));
        assert_eq!(did_you_mean("C", ["y", "A"]), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }
}
