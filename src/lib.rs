//! hcc: a model-compression compiler. ONNX in, a typed graph, declarative compression passes,
//! a smaller ONNX model out, with an honest report.

pub mod compute;
pub mod config;
pub mod dsl;
pub mod eval;
pub mod ir;
pub mod onnx;
pub mod plan;
pub mod report;
pub mod rewrite;
