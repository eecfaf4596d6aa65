//! The ONNX textual syntax against real models, against the reference implementation
//! (`onnx.printer.to_text`, `onnx.parser.parse_model`, `onnx.checker` in the models venv), and its
//! diagnostics (insta snapshots).

use std::path::{Path, PathBuf};
use std::process::Command;

use hcc::onnx::proto::ModelProto;
use hcc::onnx::text::{parse_graph, parse_model, print_model, TextError};
use prost::Message;

fn models_dir() -> PathBuf {
    match std::env::var_os("HCC_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hcc-models")
        }
    }
}

fn python() -> PathBuf {
    let py = models_dir().join("venv/bin/python");
    assert!(
        py.exists(),
        "the reference Python ({}) is missing: set HCC_MODELS to the folder holding the models and \
         their venv (with onnx 1.23), or create it",
        py.display()
    );
    py
}

fn real_models() -> Vec<PathBuf> {
    let dir = models_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the models folder {}: {e}; set HCC_MODELS to the folder holding the *.onnx test models",
            dir.display()
        )
    });
    let mut models: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    assert!(
        !models.is_empty(),
        "no *.onnx models in {}: set HCC_MODELS to the folder holding the test models",
        dir.display()
    );
    models
}

fn decode(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelProto::decode(bytes::Bytes::from(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first line where two texts differ, for readable failures.
fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            let cut = |s: &str| s.chars().take(400).collect::<String>();
            return format!("line {}:\n  left:  {}\n  right: {}", i + 1, cut(x), cut(y));
        }
    }
    format!(
        "one text is a prefix of the other ({} vs {} lines, {} vs {} bytes)",
        a.lines().count(),
        b.lines().count(),
        a.len(),
        b.len()
    )
}

#[test]
fn print_parse_print_is_identity_on_real_models() {
    for path in real_models() {
        let model = decode(&path);
        let text = print_model(&model);
        let origin = path.display().to_string();
        let parsed = match parse_model(&text, &origin) {
            Ok(m) => m,
            Err(e) => panic!(
                "{origin}: our own output does not parse: {:?}",
                miette::Report::new(e)
            ),
        };
        let again = print_model(&parsed);
        assert!(
            text == again,
            "{origin}: print → parse → print differs at {}",
            first_difference(&text, &again)
        );
        // Large constants are elided, so the text stays small.
        assert!(
            text.len() < 2_000_000,
            "{origin}: the text is {} bytes",
            text.len()
        );
    }
}

fn case_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/text");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnxtxt"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no test cases in {}", dir.display());
    v
}

/// Python: parse each `*.txt` in `dir`, check the model, write `to_text` of it to `*.ref` and the
/// serialized model to `*.onnx`.
const PY_PARSE: &str = r#"
import glob, os, sys
import onnx, onnx.parser, onnx.printer, onnx.checker
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.txt"))):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        m = onnx.parser.parse_model(text)
        onnx.checker.check_model(m)
    except Exception as e:
        print(f"{os.path.basename(path)}: {type(e).__name__}: {e}")
        sys.exit(1)
    with open(path[:-4] + ".ref", "w", encoding="utf-8") as f:
        f.write(onnx.printer.to_text(m))
    with open(path[:-4] + ".onnx", "wb") as f:
        f.write(m.SerializeToString())
"#;

fn run_python(script: &str, dir: &Path) {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("cannot run the reference Python");
    assert!(
        out.status.success(),
        "the reference Python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hand-written cases: we parse and print them; Python parses what we print, checks it, and
/// prints it again; all three texts agree (and the file is already in printed form).
#[test]
fn python_accepts_and_agrees_on_hand_written_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = case_files();
    let mut printed = Vec::new();
    for path in &cases {
        let src = std::fs::read_to_string(path).unwrap();
        let origin = path.display().to_string();
        let model =
            parse_model(&src, &origin).unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)));
        let text = print_model(&model);
        assert!(
            src.trim_end() == text,
            "{origin} is not in printed form: {}",
            first_difference(&src, &text)
        );
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        std::fs::write(tmp.path().join(format!("{stem}.txt")), &text).unwrap();
        printed.push((stem, text));
    }
    run_python(PY_PARSE, tmp.path());
    for (stem, text) in printed {
        let reference = std::fs::read_to_string(tmp.path().join(format!("{stem}.ref"))).unwrap();
        assert!(
            reference == text,
            "{stem}: onnx.printer.to_text differs at {}",
            first_difference(&reference, &text)
        );
        // The proto Python's parser made prints the same through our printer.
        let theirs = print_model(&decode(&tmp.path().join(format!("{stem}.onnx"))));
        assert!(
            theirs == text,
            "{stem}: Python's proto prints differently at {}",
            first_difference(&theirs, &text)
        );
    }
}

/// Models built with onnx.helper/numpy_helper (raw_data and typed tensors of every printable
/// type, subgraphs, functions, every attribute kind, odd names): our printer matches
/// `onnx.printer.to_text` byte for byte.
const PY_BUILD: &str = r#"
import os, sys
import numpy as np
import onnx
from onnx import helper as h, numpy_helper as nh, TensorProto as T
out = sys.argv[1]
def save(name, m):
    with open(os.path.join(out, name + ".onnx"), "wb") as f:
        f.write(m.SerializeToString())
    with open(os.path.join(out, name + ".ref"), "w", encoding="utf-8") as f:
        f.write(onnx.printer.to_text(m))

# Every printable element type, as raw_data (numpy_helper) and as typed fields (helper).
inits = []
for dt, np_dt in [(T.FLOAT, np.float32), (T.DOUBLE, np.float64), (T.INT8, np.int8), (T.UINT8, np.uint8),
                  (T.INT16, np.int16), (T.UINT16, np.uint16), (T.INT32, np.int32), (T.UINT32, np.uint32),
                  (T.INT64, np.int64), (T.UINT64, np.uint64), (T.BOOL, np.bool_), (T.FLOAT16, np.float16)]:
    name = onnx.helper.tensor_dtype_to_string(dt).split(".")[-1].lower()
    vals = np.array([1, 0, 3, 7], dtype=np_dt) if dt == T.BOOL else np.array([1, -2, 3, 100], dtype=np.int64).astype(np_dt)
    inits.append(nh.from_array(vals.reshape(2, 2), "raw_" + name))
    inits.append(h.make_tensor("typed_" + name, dt, [4], vals.tolist()))
inits.append(h.make_tensor("bf16", T.BFLOAT16, [2], [1.0, -2.5]))
inits.append(h.make_tensor("f8", T.FLOAT8E4M3FN, [2], [1.0, 2.0]))
inits.append(h.make_tensor("f8b", T.FLOAT8E5M2, [2], [1.0, 2.0]))
inits.append(h.make_tensor("strs", T.STRING, [3], [b"a", b"q\"uote", b"back\\slash"]))
inits.append(nh.from_array(np.array([0.1, 1/3, 1e-7, 3e20, 1e6, 100, float("nan"), float("inf"), -float("inf"), -0.0, 123456789, 2.0**60], np.float32), "floats"))
inits.append(nh.from_array(np.array([0.1, 1/3, 5e-324, 1.7976931348623157e308, 2.0**60], np.float64), "doubles"))
inits.append(nh.from_array(np.array(2.5, np.float32), "scalar"))
inits.append(nh.from_array(np.zeros((0, 3), np.float32), "empty"))
inits.append(nh.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "sixteen"))
ins = [h.make_tensor_value_info("X", T.FLOAT, ["N", 4]), h.make_tensor_value_info("any rank", T.FLOAT, None),
       h.make_tensor_value_info("dims", T.FLOAT, [None, "a b", 3, "_x"]), h.make_tensor_value_info("s", T.INT64, []),
       h.make_tensor_value_info("cond", T.BOOL, [])]
seq = h.make_tensor_sequence_value_info("seq", T.FLOAT, [2])
mp = onnx.ValueInfoProto(name="map"); mp.type.CopyFrom(h.make_map_type_proto(T.STRING, h.make_tensor_type_proto(T.FLOAT, [])))
opt = onnx.ValueInfoProto(name="opt"); opt.type.CopyFrom(h.make_optional_type_proto(h.make_tensor_type_proto(T.INT32, ["K"])))
sp = h.make_sparse_tensor_value_info("sp", T.FLOAT, [3, 4])
then_g = h.make_graph([h.make_node("Add", ["X", "one"], ["t_out"])], "then_body", [],
                      [h.make_tensor_value_info("t_out", T.FLOAT, ["N", 4])],
                      [nh.from_array(np.array([1.0], np.float32), "one")])
else_g = h.make_graph([h.make_node("Neg", ["X"], ["e_out"])], "else_body", [], [h.make_tensor_value_info("e_out", T.FLOAT, ["N", 4])])
inner_if = h.make_node("If", ["cond"], ["deep"], then_branch=then_g, else_branch=else_g)
loop_body = h.make_graph([h.make_node("Identity", ["cond_in"], ["cond_out"]), inner_if,
                          h.make_node("Identity", ["deep"], ["acc_out"])], "loop body",
                         [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []),
                          h.make_tensor_value_info("acc", T.FLOAT, ["N", 4])],
                         [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, ["N", 4])])
nodes = [
    h.make_node("If", ["cond"], ["Z"], then_branch=then_g, else_branch=else_g, name="the if"),
    h.make_node("Loop", ["s", "", "Z"], ["L"], body=loop_body),
    h.make_node("Relu", ["L"], ["R"], name="relu.1", doc_string="ignored"),
    h.make_node("Custom", ["R", ""], ["C", ""], domain="com.example", f=0.5, fs=[1.0, 2.5, -0.0], i=3, ii=[1, -2], s="hi\"there",
                ss=["a", "b"], t=nh.from_array(np.array([1, 2], np.int64), "tt"),
                ts=[nh.from_array(np.array([1.0], np.float32)), h.make_tensor("", T.STRING, [1], [b"x"])],
                tp=h.make_tensor_type_proto(T.FLOAT, [2, "N"]),
                tps=[h.make_sequence_type_proto(h.make_tensor_type_proto(T.INT64, None)),
                     h.make_optional_type_proto(h.make_tensor_type_proto(T.FLOAT, [1]))],
                big=nh.from_array(np.arange(16, dtype=np.int32), "big"), gs=[then_g, else_g]),
    h.make_node("Sub", ["R", "X"], ["W"]),
    h.make_node("MyFn", ["W", "X"], ["F"], domain="local", alpha=2.0),
]
g = h.make_graph(nodes, "main graph", ins + [seq, mp, opt, sp], [h.make_tensor_value_info("F", T.FLOAT, ["N", 4])], inits,
                 value_info=[h.make_tensor_value_info("Z", T.FLOAT, ["N", 4]), onnx.ValueInfoProto(name="untyped")])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.example", 1), h.make_opsetid("local", 1)],
                 producer_name="hcc \"test\"", producer_version="0.1", domain="ai.hcc", model_version=7, doc_string="a doc\nstring")
h.set_model_props(m, {"k": "v", "quote\"key": "x\\y"})
alpha_ref = onnx.AttributeProto(name="alpha", type=onnx.AttributeProto.FLOAT, ref_attr_name="alpha")
fn_node = h.make_node("Mul", ["a", "b"], ["c0"])
fn_node2 = h.make_node("LeakyRelu", ["c0"], ["c"]); fn_node2.attribute.append(alpha_ref)
m.functions.append(h.make_function("local", "MyFn", ["a", "b"], ["c"], [fn_node, fn_node2], [h.make_opsetid("", 17)], attributes=["alpha"]))
f2 = h.make_function("local", "Plain", ["x"], ["y"], [h.make_node("Identity", ["x"], ["y"])], [h.make_opsetid("", 17), h.make_opsetid("com.example", 1)])
f2.overload = "v2"
m.functions.append(f2)
save("everything", m)

# Graph without initializers, ir_version only, a node with no outputs, named empty node.
g2 = h.make_graph([h.make_node("Foo", [], [], domain="x.y"), h.make_node("Relu", ["a"], ["b"], name="")], "", [h.make_tensor_value_info("a", T.FLOAT, [1])],
                  [h.make_tensor_value_info("b", T.FLOAT, [1])])
g2.node[1].name = ""
m2 = onnx.ModelProto(ir_version=9, graph=g2)
save("bare", m2)
"#;

#[test]
fn printer_matches_onnx_printer_on_built_models() {
    let tmp = tempfile::tempdir().unwrap();
    run_python(PY_BUILD, tmp.path());
    for name in ["everything", "bare"] {
        let model = decode(&tmp.path().join(format!("{name}.onnx")));
        let reference = std::fs::read_to_string(tmp.path().join(format!("{name}.ref"))).unwrap();
        let ours = print_model(&model);
        assert!(
            ours == reference,
            "{name}: differs from onnx.printer.to_text at {}",
            first_difference(&reference, &ours)
        );
        // And it reads back to the same text.
        let again = print_model(
            &parse_model(&ours, name).unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e))),
        );
        assert!(
            again == ours,
            "{name}: print → parse → print differs at {}",
            first_difference(&ours, &again)
        );
    }
}

fn render(e: TextError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &e)
        .unwrap();
    out
}

fn model_error(src: &str) -> String {
    match parse_model(src, "case.onnxtxt") {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => render(e),
    }
}

fn graph_error(src: &str) -> String {
    match parse_graph(src, "case.onnxtxt") {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => render(e),
    }
}

#[test]
fn diagnostic_missing_type() {
    insta::assert_snapshot!(graph_error(
        "main (float[N, 4] X, ) => (float[N] Y) {\n   Y = Relu (X)\n}\n"
    ));
}

#[test]
fn diagnostic_unknown_type() {
    insta::assert_snapshot!(graph_error(
        "main (flaot[N, 4] X) => (float[N] Y) {\n   Y = Relu (X)\n}\n"
    ));
}

#[test]
fn diagnostic_missing_arrow() {
    insta::assert_snapshot!(graph_error(
        "main (float[N] X) (float[N] Y) {\n   Y = Relu (X)\n}\n"
    ));
}

#[test]
fn diagnostic_unterminated_string() {
    insta::assert_snapshot!(model_error(
        "<ir_version: 8, opset_import: [\"\" : 17], producer_name: \"hcc>\nmain (float X) => (float Y) {\n   Y = Relu (X)\n}\n"
    ));
}

#[test]
fn diagnostic_truncated_node_list() {
    insta::assert_snapshot!(graph_error(
        "main (float[N] X) => (float[N] Y) {\n   T = Relu (X)\n   Y = Neg (T"
    ));
}

#[test]
fn diagnostic_attribute_type_mismatch() {
    insta::assert_snapshot!(graph_error(
        "main (float[N, 4] X) => (float[N, 4] Y) {\n   Y = Softmax <axis: int = 1.5> (X)\n}\n"
    ));
}

#[test]
fn diagnostic_symbolic_constant_shape() {
    insta::assert_snapshot!(graph_error(
        "main (float[N] X) => (float[N] Y)\n   <float[N] B = {1, 2}>\n{\n   Y = Add (X, B)\n}\n"
    ));
}

#[test]
fn diagnostic_unknown_model_property() {
    insta::assert_snapshot!(model_error(
        "<\n   ir_version: 8,\n   opset: [\"\" : 17]\n>\nmain (float X) => (float Y) {\n   Y = Relu (X)\n}\n"
    ));
}

#[test]
fn diagnostic_bad_tensor_value() {
    insta::assert_snapshot!(graph_error(
        "main (int64[2] X) => (int64[2] Y)\n   <int64[2] B =  {1, 2.5}>\n{\n   Y = Add (X, B)\n}\n"
    ));
}

#[test]
fn diagnostic_two_attribute_lists() {
    insta::assert_snapshot!(graph_error(
        "main (float[N] X) => (float[N] Y) {\n   Y = LeakyRelu <alpha: float = 0.1> (X) <beta: int = 2>\n}\n"
    ));
}

/// No input makes the parser panic: every prefix of a real model's text, and garbled copies.
#[test]
fn truncated_and_garbled_inputs_are_errors() {
    let src = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/text/control_flow.onnxtxt"),
    )
    .unwrap();
    let mut ok = 0;
    for end in 0..src.trim_end().len() {
        if src.is_char_boundary(end) && parse_model(&src[..end], "t").is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 0, "a strict prefix of a model parsed");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let junk = b"<>()[]{}\",:=@#-.?x9 \n\\";
    for _ in 0..3000 {
        let mut v = src.as_bytes().to_vec();
        for _ in 0..3 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = (state % v.len() as u64) as usize;
            v[i] = junk[((state >> 32) % junk.len() as u64) as usize];
        }
        if let Ok(s) = String::from_utf8(v) {
            let _ = parse_model(&s, "t");
        }
    }
}
