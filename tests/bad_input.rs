//! Bad input gives a clear error naming the tensor, node or file, a non-zero exit, no panic,
//! and no output file (not even a partial or temporary one).
mod common;

use std::path::{Path, PathBuf};

use hcc::onnx::proto::{self, ModelProto};
use prost::Message;

const TINY: &str = r#"<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,4] X) => (float[N,2] Y) <float[4,2] W = {1,2,3,4,5,6,7,8}> {
   [mm] H = MatMul (X, W)
   [act] Y = Relu (H)
}"#;

fn tiny() -> ModelProto {
    hcc::onnx::text::parse_model(TINY, "tiny").unwrap()
}

fn write(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    p
}

/// Run `hcc convert` on `input`; it must fail, mention every needle, leave no file behind.
fn expect_failure(input: &Path, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let r = common::hcc()
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "expected failure for {}",
        input.display()
    );
    assert_eq!(r.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn the_valid_base_case_converts() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.onnx", &tiny());
    let out = dir.path().join("out.onnx");
    let r = common::hcc()
        .arg("convert")
        .arg(&p)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let a = hcc::onnx::to_text(&hcc::onnx::load(&p).unwrap()).unwrap();
    let b = hcc::onnx::to_text(&hcc::onnx::load(&out).unwrap()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(common::model("gpt2-tiny-random.onnx")).unwrap();
    for cut in [bytes.len() / 2, bytes.len() - 1, 7] {
        let p = dir.path().join("cut.onnx");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        expect_failure(&p, &["cut.onnx", "not a valid ONNX model"]);
    }
}

#[test]
fn not_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("text.onnx", b"this is a text file, not a model\n".to_vec()),
        ("empty.onnx", Vec::new()),
        ("png.onnx", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        expect_failure(&p, &[name]);
    }
}

#[test]
fn missing_input_file() {
    expect_failure(
        Path::new("/nonexistent/model.onnx"),
        &["/nonexistent/model.onnx", "cannot read"],
    );
}

#[test]
fn raw_data_length_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.float_data.clear();
    w.raw_data = Some(bytes::Bytes::from(vec![0u8; 30]));
    let p = write(dir.path(), "short.onnx", &m);
    expect_failure(&p, &["tensor 'W'", "32 bytes", "30"]);
}

#[test]
fn unknown_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    m.graph.as_mut().unwrap().initializer[0].data_type = Some(77);
    let p = write(dir.path(), "dtype.onnx", &m);
    expect_failure(&p, &["tensor 'W'", "unknown data type code 77"]);

    let mut m = tiny();
    if let Some(proto::type_proto::Value::TensorType(t)) = &mut m.graph.as_mut().unwrap().input[0]
        .r#type
        .as_mut()
        .unwrap()
        .value
    {
        t.elem_type = Some(99);
    }
    let p = write(dir.path(), "elem.onnx", &m);
    expect_failure(&p, &["value 'X'", "unknown element type code 99"]);
}

fn externalize(m: &mut ModelProto, location: &str, offset: &str, length: &str) {
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.float_data.clear();
    w.raw_data = None;
    w.data_location = Some(proto::data_location::EXTERNAL);
    w.external_data = [
        ("location", location),
        ("offset", offset),
        ("length", length),
    ]
    .iter()
    .map(|(k, v)| proto::StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v.to_string()),
    })
    .collect();
}

#[test]
fn external_data_missing_escaping_or_short() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("model");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(dir.path().join("outside.bin"), vec![0u8; 64]).unwrap();
    std::fs::write(sub.join("short.bin"), vec![0u8; 16]).unwrap();
    std::fs::write(sub.join("ok.bin"), vec![0u8; 64]).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.bin"), sub.join("link.bin")).unwrap();

    let cases: [(&str, &str, &str, &[&str]); 6] = [
        (
            "missing.bin",
            "0",
            "32",
            &["tensor 'W'", "missing.bin", "does not exist"],
        ),
        (
            "../outside.bin",
            "0",
            "32",
            &["tensor 'W'", "escapes the model's folder"],
        ),
        (
            "/etc/passwd",
            "0",
            "32",
            &["tensor 'W'", "escapes the model's folder"],
        ),
        (
            "link.bin",
            "0",
            "32",
            &["tensor 'W'", "outside the model's folder"],
        ),
        (
            "short.bin",
            "0",
            "32",
            &["tensor 'W'", "short.bin", "too short"],
        ),
        (
            "ok.bin",
            "48",
            "32",
            &["tensor 'W'", "too short for offset 48"],
        ),
    ];
    for (loc, off, len, needles) in cases {
        let mut m = tiny();
        externalize(&mut m, loc, off, len);
        let p = write(&sub, "ext.onnx", &m);
        expect_failure(&p, needles);
    }
    // The same reference, well within the file, loads.
    let mut m = tiny();
    externalize(&mut m, "ok.bin", "0", "32");
    let p = write(&sub, "ext.onnx", &m);
    let model = hcc::onnx::load(&p).unwrap();
    assert_eq!(model.graph.initializers().len(), 1);
}

#[test]
fn node_reading_an_undefined_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    m.graph.as_mut().unwrap().node[1].input[0] = "nowhere".into();
    let p = write(dir.path(), "undef.onnx", &m);
    expect_failure(&p, &["node 'act' (Relu)", "'nowhere'"]);
}

#[test]
fn undefined_graph_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    m.graph.as_mut().unwrap().output[0].name = Some("ghost".into());
    let p = write(dir.path(), "out.onnx", &m);
    expect_failure(&p, &["graph output 'ghost'"]);
}

#[test]
fn cycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    // H = MatMul(X, W) now reads Y, which Relu computes from H.
    m.graph.as_mut().unwrap().node[0].input[0] = "Y".into();
    let p = write(dir.path(), "cycle.onnx", &m);
    expect_failure(&p, &["cycle", "node 'mm' (MatMul)"]);
}

#[test]
fn duplicate_definition() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    m.graph.as_mut().unwrap().node[1].output[0] = "H".into();
    let p = write(dir.path(), "dup.onnx", &m);
    expect_failure(&p, &["'H'", "more than once"]);
}

#[test]
fn text_syntax_errors_point_at_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.onnxtxt");
    std::fs::write(&p, TINY.replace("Relu (H)", "Relu (H")).unwrap();
    expect_failure(&p, &["bad.onnxtxt:5:1", "expected ',' or ')'"]);
}

#[test]
fn writing_over_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "same.onnx", &tiny());
    let before = std::fs::read(&p).unwrap();
    let r = common::hcc()
        .arg("convert")
        .arg(&p)
        .arg("-o")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("is the input file"));
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

#[test]
fn unwritable_output_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "ok.onnx", &tiny());
    let r = common::hcc()
        .arg("convert")
        .arg(&p)
        .arg("-o")
        .arg("/nonexistent-dir/out.onnx")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent-dir/out.onnx"));
}

/// Every prefix of a small valid model and every single-byte corruption of it either loads or
/// fails with an error: never a panic.
#[test]
fn corrupted_bytes_never_panic() {
    let bytes = tiny().encode_to_vec();
    let path = Path::new("fuzz.onnx");
    for cut in 0..bytes.len() {
        let _ = hcc::onnx::import::decode(bytes::Bytes::copy_from_slice(&bytes[..cut]), path)
            .and_then(|p| hcc::onnx::import::import(p, &hcc::onnx::tensor::NoExternal, path));
    }
    for i in 0..bytes.len() {
        for x in [0x00u8, 0xff, 0x80, 0x7f, 0x12] {
            let mut b = bytes.clone();
            b[i] ^= x;
            if let Ok(p) = hcc::onnx::import::decode(bytes::Bytes::from(b), path) {
                if let Ok(m) = hcc::onnx::import::import(p, &hcc::onnx::tensor::NoExternal, path) {
                    let _ = hcc::onnx::export::to_bytes(&m);
                    let _ = hcc::report::inspect::inspect(&m, 5);
                }
            }
        }
    }
}
