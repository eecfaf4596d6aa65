//! The rewrite engine: matches a rule's pattern, evaluates its clauses with kernels
//! (memoised per constant and parameters), and applies the result as a patch.

pub mod engine;
pub mod eval;
pub mod kernels;
pub mod matcher;
pub mod prune;
pub mod value;

pub use engine::{
    render_explain, Engine, Progress, ProgressSink, RewriteError, RewriteReport, RuleSource, Site,
    StageReport,
};
