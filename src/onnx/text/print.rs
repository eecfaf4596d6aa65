//! The printer: `onnx.printer.to_text`'s layout, plus the elided-data and sparse extensions.

use std::fmt::Write;

use super::{DIGEST_KEY, ELIDED_LOCATION, INLINE_LIMIT};
use crate::ir::{num_elements, DType, Tensor};
use crate::onnx::proto::{
    self, attribute_type as at, data_location, data_type as dt, tensor_shape_proto::dimension,
    type_proto, AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TypeProto, ValueInfoProto,
};
use crate::onnx::tensor::{tensor_from_proto, NoExternal};

/// Print a model in the ONNX textual syntax (the form `onnx.printer.to_text` prints).
pub fn print_model(m: &ModelProto) -> String {
    let mut p = Printer::default();
    p.model(m);
    p.out
}

/// Print a graph in the ONNX textual syntax (the form `onnx.printer.to_text` prints).
pub fn print_graph(g: &GraphProto) -> String {
    let mut p = Printer::default();
    p.graph(g);
    p.out
}

struct Printer {
    out: String,
    indent: usize,
}

impl Default for Printer {
    fn default() -> Self {
        Printer {
            out: String::new(),
            indent: 3,
        }
    }
}

/// True for the identifiers the syntax takes unquoted: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The textual name of an element type code; `undefined` for 0 and unknown codes.
pub(super) fn dtype_name(code: i32) -> &'static str {
    DType::from_onnx(code).map_or("undefined", DType::name)
}

fn attr_type_name(code: i32) -> &'static str {
    match code {
        at::FLOAT => "float",
        at::INT => "int",
        at::STRING => "string",
        at::TENSOR => "tensor",
        at::GRAPH => "graph",
        at::FLOATS => "floats",
        at::INTS => "ints",
        at::STRINGS => "strings",
        at::TENSORS => "tensors",
        at::GRAPHS => "graphs",
        at::SPARSE_TENSOR => "sparse_tensor",
        at::SPARSE_TENSORS => "sparse_tensors",
        at::TYPE_PROTO => "type_proto",
        at::TYPE_PROTOS => "type_protos",
        _ => "undefined",
    }
}

/// Format a float as C++ `std::to_chars` does without a format: the shortest text that reads back
/// to the same value, fixed or scientific, whichever is shorter (fixed on a tie).
pub(super) fn fmt_f32(x: f32) -> String {
    fmt_float(x as f64, format!("{x:e}"), x.is_nan(), x.is_sign_negative())
}

/// [`fmt_f32`] for doubles.
pub(super) fn fmt_f64(x: f64) -> String {
    fmt_float(x, format!("{x:e}"), x.is_nan(), x.is_sign_negative())
}

fn fmt_float(x: f64, sci: String, nan: bool, negative: bool) -> String {
    if nan {
        return if negative {
            "-nan".into()
        } else {
            "nan".into()
        };
    }
    if x.is_infinite() {
        return if negative {
            "-inf".into()
        } else {
            "inf".into()
        };
    }
    // `sci` is Rust's shortest round-trip form: -?D(.DDD)?e-?X
    let body = sci.strip_prefix('-').unwrap_or(&sci);
    let sign = if negative { "-" } else { "" };
    let (mantissa, exp) = body.split_once('e').unwrap_or((body, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let n = digits.len() as i64;
    let mut s = String::new();
    s.push_str(&digits[..1]);
    if n > 1 {
        s.push('.');
        s.push_str(&digits[1..]);
    }
    let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    let fixed = if exp >= 0 {
        if n - 1 <= exp {
            // An integer: to_chars prints its exact digits.
            if exp < 38 {
                Some(format!("{}", x.abs() as u128))
            } else {
                None
            }
        } else {
            let e = exp as usize;
            Some(format!("{}.{}", &digits[..=e], &digits[e + 1..]))
        }
    } else {
        Some(format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits))
    };
    match fixed {
        Some(f) if f.len() <= s.len() => format!("{sign}{f}"),
        _ => format!("{sign}{s}"),
    }
}

fn lossy(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Bytes as the syntax's quoted string: `"`, with `\` and `"` escaped.
pub(super) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '\\' || c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn id(s: &str) -> String {
    if is_identifier(s) {
        s.to_string()
    } else {
        quoted(s)
    }
}

fn join<T>(items: &[T], sep: &str, f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(sep)
}

/// How a tensor's data prints.
enum Body {
    /// `{1,2,3}` (already formatted, without the leading space).
    Values(String),
    /// `{"a", "b"}` for strings: `onnx.printer` writes these without a leading space.
    Strings(String),
    /// Standard external data `["location": "...", ...]`.
    External(String),
    /// hcc's extension: `@fnv64 "<hex>"`.
    Elided(String),
}

fn entry_value<'a>(entries: &'a [StringStringEntryProto], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e.key.as_deref() == Some(key))
        .and_then(|e| e.value.as_deref())
}

fn kv_list(entries: &[StringStringEntryProto]) -> String {
    format!(
        "[{}]",
        join(entries, ", ", |e| format!(
            "{}: {}",
            quoted(e.key.as_deref().unwrap_or("")),
            quoted(e.value.as_deref().unwrap_or(""))
        ))
    )
}

/// The hex digest of a tensor's content: [`Tensor::digest`] of the decoded tensor, or, for a
/// tensor that does not decode, of its raw bytes as they stand.
pub(super) fn digest_hex(t: &TensorProto) -> String {
    let d = match tensor_from_proto(t, &NoExternal) {
        Ok(x) => x.digest(),
        Err(_) => {
            let dtype = DType::from_onnx(t.data_type.unwrap_or(0)).unwrap_or(DType::U8);
            let raw = t.raw_data.clone().unwrap_or_default();
            Tensor::from_raw(dtype, t.dims.clone(), raw).digest()
        }
    };
    format!("{d:016x}")
}

fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    a
}

fn fmt_list<T>(items: impl Iterator<Item = T>, f: impl Fn(T) -> String) -> String {
    items.map(f).collect::<Vec<_>>().join(",")
}

/// The values of a tensor as `onnx.printer` prints them (`1,2,3`), or `None` where it prints
/// `...` (or where the tensor is too large to print inline).
fn inline_values(t: &TensorProto) -> Option<Body> {
    let code = t.data_type.unwrap_or(0);
    let n = num_elements(&t.dims)?;
    if n > INLINE_LIMIT {
        return None;
    }
    let small = |len: usize| len <= INLINE_LIMIT;
    if let Some(raw) = &t.raw_data {
        let b: &[u8] = raw;
        let s = match code {
            dt::INT8 if small(b.len()) => fmt_list(b.iter(), |&v| (v as i8).to_string()),
            dt::UINT8
            | dt::BOOL
            | dt::FLOAT8E4M3FN
            | dt::FLOAT8E4M3FNUZ
            | dt::FLOAT8E5M2
            | dt::FLOAT8E5M2FNUZ
            | dt::FLOAT8E8M0
                if small(b.len()) =>
            {
                fmt_list(b.iter(), |&v| v.to_string())
            }
            dt::INT16 if small(b.len() / 2) => {
                fmt_list(b.chunks_exact(2), |c| i16::from_le_bytes(le(c)).to_string())
            }
            dt::UINT16 | dt::FLOAT16 | dt::BFLOAT16 if small(b.len() / 2) => {
                fmt_list(b.chunks_exact(2), |c| u16::from_le_bytes(le(c)).to_string())
            }
            dt::INT32 if small(b.len() / 4) => {
                fmt_list(b.chunks_exact(4), |c| i32::from_le_bytes(le(c)).to_string())
            }
            dt::UINT32 if small(b.len() / 4) => {
                fmt_list(b.chunks_exact(4), |c| u32::from_le_bytes(le(c)).to_string())
            }
            dt::INT64 if small(b.len() / 8) => {
                fmt_list(b.chunks_exact(8), |c| i64::from_le_bytes(le(c)).to_string())
            }
            dt::UINT64 if small(b.len() / 8) => {
                fmt_list(b.chunks_exact(8), |c| u64::from_le_bytes(le(c)).to_string())
            }
            dt::FLOAT if small(b.len() / 4) => {
                fmt_list(b.chunks_exact(4), |c| fmt_f32(f32::from_le_bytes(le(c))))
            }
            dt::DOUBLE if small(b.len() / 8) => {
                fmt_list(b.chunks_exact(8), |c| fmt_f64(f64::from_le_bytes(le(c))))
            }
            _ => return None,
        };
        return Some(Body::Values(s));
    }
    let s = match code {
        dt::INT8
        | dt::INT16
        | dt::INT32
        | dt::UINT8
        | dt::UINT16
        | dt::BOOL
        | dt::FLOAT16
        | dt::BFLOAT16
        | dt::FLOAT8E4M3FN
        | dt::FLOAT8E4M3FNUZ
        | dt::FLOAT8E5M2
        | dt::FLOAT8E5M2FNUZ
        | dt::FLOAT8E8M0
            if small(t.int32_data.len()) =>
        {
            fmt_list(t.int32_data.iter(), |v| v.to_string())
        }
        dt::INT64 if small(t.int64_data.len()) => fmt_list(t.int64_data.iter(), |v| v.to_string()),
        dt::UINT32 | dt::UINT64 if small(t.uint64_data.len()) => {
            fmt_list(t.uint64_data.iter(), |v| v.to_string())
        }
        dt::FLOAT if small(t.float_data.len()) => fmt_list(t.float_data.iter(), |&v| fmt_f32(v)),
        dt::DOUBLE if small(t.double_data.len()) => fmt_list(t.double_data.iter(), |&v| fmt_f64(v)),
        dt::STRING if small(t.string_data.len()) => {
            return Some(Body::Strings(format!(
                "{{{}}}",
                join(&t.string_data, ", ", |s| quoted(&lossy(s)))
            )))
        }
        _ => return None,
    };
    Some(Body::Values(s))
}

fn tensor_body(t: &TensorProto) -> Body {
    if t.data_location == Some(data_location::EXTERNAL) {
        if entry_value(&t.external_data, "location") == Some(ELIDED_LOCATION) {
            if let Some(d) = entry_value(&t.external_data, DIGEST_KEY) {
                return Body::Elided(d.to_string());
            }
        }
        return Body::External(kv_list(&t.external_data));
    }
    inline_values(t).unwrap_or_else(|| Body::Elided(digest_hex(t)))
}

impl Printer {
    fn pad(&mut self, n: usize) {
        for _ in 0..n {
            self.out.push(' ');
        }
    }

    fn model(&mut self, m: &ModelProto) {
        self.out.push_str("<\n");
        let _ = write!(self.out, "   ir_version: {}", m.ir_version.unwrap_or(0));
        let _ = write!(
            self.out,
            ",\n   opset_import: [{}]",
            join(&m.opset_import, ", ", opset)
        );
        let mut kv = |key: &str, value: String| {
            let _ = write!(self.out, ",\n   {key}: {value}");
        };
        if let Some(v) = &m.producer_name {
            kv("producer_name", quoted(v));
        }
        if let Some(v) = &m.producer_version {
            kv("producer_version", quoted(v));
        }
        if let Some(v) = &m.domain {
            kv("domain", quoted(v));
        }
        if let Some(v) = m.model_version {
            kv("model_version", v.to_string());
        }
        if let Some(v) = &m.doc_string {
            kv("doc_string", quoted(v));
        }
        if !m.metadata_props.is_empty() {
            kv("metadata_props", kv_list(&m.metadata_props));
        }
        self.out.push_str("\n>\n");
        match &m.graph {
            Some(g) => self.graph(g),
            None => self.graph(&GraphProto::default()),
        }
        for f in &m.functions {
            self.out.push('\n');
            self.function(f);
        }
    }

    fn graph(&mut self, g: &GraphProto) {
        self.out.push_str(&id(g.name.as_deref().unwrap_or("")));
        self.out.push_str(" (");
        self.value_infos(&g.input);
        self.out.push_str(") => (");
        self.value_infos(&g.output);
        self.out.push_str(") ");
        if !g.initializer.is_empty() || !g.value_info.is_empty() {
            self.out.push('\n');
            self.pad(self.indent);
            self.out.push('<');
            let mut sep = "";
            for t in &g.initializer {
                self.out.push_str(sep);
                self.tensor(t, true);
                sep = ", ";
            }
            for v in &g.value_info {
                self.out.push_str(sep);
                self.value_info(v);
                sep = ", ";
            }
            self.out.push_str(">\n");
        }
        self.nodes(&g.node);
    }

    fn nodes(&mut self, nodes: &[NodeProto]) {
        self.out.push_str("{\n");
        for n in nodes {
            self.node(n);
        }
        if self.indent > 3 {
            self.pad((self.indent - 3).max(3));
        }
        self.out.push('}');
    }

    fn node(&mut self, n: &NodeProto) {
        self.pad(self.indent);
        if let Some(name) = &n.name {
            let _ = write!(self.out, "[{}] ", id(name));
        }
        self.out.push_str(&join(&n.output, ", ", |s| id(s)));
        self.out.push_str(" = ");
        if let Some(d) = n.domain.as_deref().filter(|d| !d.is_empty()) {
            self.out.push_str(d);
            self.out.push('.');
        }
        self.out.push_str(n.op_type.as_deref().unwrap_or(""));
        if let Some(o) = n.overload.as_deref().filter(|o| !o.is_empty()) {
            self.out.push(':');
            self.out.push_str(o);
        }
        let has_subgraph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        if !has_subgraph && !n.attribute.is_empty() {
            self.attributes(&n.attribute);
        }
        let _ = write!(self.out, " ({})", join(&n.input, ", ", |s| id(s)));
        if has_subgraph {
            self.attributes(&n.attribute);
        }
        self.out.push('\n');
    }

    fn attributes(&mut self, attrs: &[AttributeProto]) {
        self.out.push_str(" <");
        for (i, a) in attrs.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.attribute(a);
        }
        self.out.push('>');
    }

    fn attribute(&mut self, a: &AttributeProto) {
        let ty = a.r#type.unwrap_or(0);
        let _ = write!(
            self.out,
            "{}: {} = ",
            a.name.as_deref().unwrap_or(""),
            attr_type_name(ty)
        );
        if let Some(r) = &a.ref_attr_name {
            self.out.push('@');
            self.out.push_str(r);
            return;
        }
        match ty {
            at::INT => self.out.push_str(&a.i.unwrap_or(0).to_string()),
            at::INTS => {
                let s = join(&a.ints, ", ", |v| v.to_string());
                let _ = write!(self.out, "[{s}]");
            }
            at::FLOAT => self.out.push_str(&fmt_f32(a.f.unwrap_or(0.0))),
            at::FLOATS => {
                let s = join(&a.floats, ", ", |&v| fmt_f32(v));
                let _ = write!(self.out, "[{s}]");
            }
            at::STRING => self
                .out
                .push_str(&quoted(&lossy(a.s.as_deref().unwrap_or(b"")))),
            at::STRINGS => {
                let s = join(&a.strings, ", ", |v| quoted(&lossy(v)));
                let _ = write!(self.out, "[{s}]");
            }
            at::GRAPH => {
                self.indent += 3;
                match &a.g {
                    Some(g) => self.graph(g),
                    None => self.graph(&GraphProto::default()),
                }
                self.indent -= 3;
            }
            at::GRAPHS => {
                self.indent += 3;
                self.out.push('[');
                for (i, g) in a.graphs.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.graph(g);
                }
                self.out.push(']');
                self.indent -= 3;
            }
            at::TENSOR => match &a.t {
                Some(t) => self.tensor(t, false),
                None => self.tensor(&TensorProto::default(), false),
            },
            at::TENSORS => {
                self.out.push('[');
                for (i, t) in a.tensors.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.tensor(t, false);
                }
                self.out.push(']');
            }
            at::SPARSE_TENSOR => match &a.sparse_tensor {
                Some(s) => self.sparse(s),
                None => self.sparse(&proto::SparseTensorProto::default()),
            },
            at::SPARSE_TENSORS => {
                self.out.push('[');
                for (i, s) in a.sparse_tensors.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.sparse(s);
                }
                self.out.push(']');
            }
            at::TYPE_PROTO => match &a.tp {
                Some(t) => self.type_proto(t),
                None => self.type_proto(&TypeProto::default()),
            },
            at::TYPE_PROTOS => {
                self.out.push('[');
                for (i, t) in a.type_protos.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.type_proto(t);
                }
                self.out.push(']');
            }
            _ => {}
        }
    }

    fn sparse(&mut self, s: &proto::SparseTensorProto) {
        self.out.push_str("sparse(");
        match &s.values {
            Some(t) => self.tensor(t, false),
            None => self.tensor(&TensorProto::default(), false),
        }
        self.out.push_str(", ");
        match &s.indices {
            Some(t) => self.tensor(t, false),
            None => self.tensor(&TensorProto::default(), false),
        }
        let _ = write!(self.out, ", [{}])", join(&s.dims, ", ", |v| v.to_string()));
    }

    fn tensor(&mut self, t: &TensorProto, is_initializer: bool) {
        self.out.push_str(dtype_name(t.data_type.unwrap_or(0)));
        if !t.dims.is_empty() {
            let _ = write!(self.out, "[{}]", join(&t.dims, ",", |v| v.to_string()));
        }
        let name = t.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            self.out.push(' ');
            self.out.push_str(&id(name));
        }
        if is_initializer {
            self.out.push_str(" = ");
        }
        match tensor_body(t) {
            Body::Values(v) => {
                let _ = write!(self.out, " {{{v}}}");
            }
            Body::Strings(s) | Body::External(s) => self.out.push_str(&s),
            Body::Elided(d) => {
                if !is_initializer {
                    self.out.push(' ');
                }
                let _ = write!(self.out, "@fnv64 {}", quoted(&d));
            }
        }
    }

    fn value_infos(&mut self, vis: &[ValueInfoProto]) {
        for (i, v) in vis.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            self.value_info(v);
        }
    }

    fn value_info(&mut self, v: &ValueInfoProto) {
        if let Some(t) = &v.r#type {
            self.type_proto(t);
        }
        self.out.push(' ');
        self.out.push_str(&id(v.name.as_deref().unwrap_or("")));
    }

    fn shape(&mut self, shape: &Option<proto::TensorShapeProto>) {
        match shape {
            None => self.out.push_str("[]"),
            Some(s) if s.dim.is_empty() => {}
            Some(s) => {
                let dims = join(&s.dim, ",", |d| match &d.value {
                    Some(dimension::Value::DimValue(v)) => v.to_string(),
                    Some(dimension::Value::DimParam(p)) => id(p),
                    None => "?".to_string(),
                });
                let _ = write!(self.out, "[{dims}]");
            }
        }
    }

    fn type_proto(&mut self, t: &TypeProto) {
        match &t.value {
            Some(type_proto::Value::TensorType(tt)) => {
                self.out.push_str(dtype_name(tt.elem_type.unwrap_or(0)));
                self.shape(&tt.shape);
            }
            Some(type_proto::Value::SequenceType(s)) => {
                self.out.push_str("seq(");
                self.boxed_type(&s.elem_type);
                self.out.push(')');
            }
            Some(type_proto::Value::MapType(m)) => {
                let _ = write!(self.out, "map({}, ", dtype_name(m.key_type.unwrap_or(0)));
                self.boxed_type(&m.value_type);
                self.out.push(')');
            }
            Some(type_proto::Value::OptionalType(o)) => {
                self.out.push_str("optional(");
                self.boxed_type(&o.elem_type);
                self.out.push(')');
            }
            Some(type_proto::Value::SparseTensorType(s)) => {
                let _ = write!(
                    self.out,
                    "sparse_tensor({}",
                    dtype_name(s.elem_type.unwrap_or(0))
                );
                self.shape(&s.shape);
                self.out.push(')');
            }
            Some(type_proto::Value::OpaqueType(o)) => {
                self.out.push_str("opaque(");
                if let Some(d) = o.domain.as_deref().filter(|d| !d.is_empty()) {
                    self.out.push_str(d);
                    self.out.push(',');
                }
                if let Some(n) = o.name.as_deref().filter(|n| !n.is_empty()) {
                    self.out.push_str(n);
                }
                self.out.push(')');
            }
            None => {}
        }
    }

    fn boxed_type(&mut self, t: &Option<Box<TypeProto>>) {
        match t {
            Some(t) => self.type_proto(t),
            None => self.type_proto(&TypeProto::default()),
        }
    }

    fn function(&mut self, f: &FunctionProto) {
        let _ = write!(
            self.out,
            "<\n  domain: {},\n",
            quoted(f.domain.as_deref().unwrap_or(""))
        );
        if let Some(o) = f.overload.as_deref().filter(|o| !o.is_empty()) {
            let _ = writeln!(self.out, "  overload: {},", quoted(o));
        }
        let _ = write!(
            self.out,
            "  opset_import: [{}]\n>\n",
            join(&f.opset_import, ",", opset)
        );
        self.out.push_str(&id(f.name.as_deref().unwrap_or("")));
        self.out.push(' ');
        if !f.attribute.is_empty() {
            let _ = write!(self.out, "<{}>", f.attribute.join(","));
        }
        let _ = writeln!(
            self.out,
            "({}) => ({})",
            join(&f.input, ", ", |s| id(s)),
            join(&f.output, ", ", |s| id(s))
        );
        self.nodes(&f.node);
    }
}

fn opset(o: &OperatorSetIdProto) -> String {
    format!(
        "{} : {}",
        quoted(o.domain.as_deref().unwrap_or("")),
        o.version.unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_to_chars() {
        let cases: &[(f32, &str)] = &[
            (0.25, "0.25"),
            (1.0, "1"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e-5, "1e-05"),
            (-1e9, "-1e+09"),
            (1e6, "1e+06"),
            (1e5, "1e+05"),
            (100.0, "100"),
            (123456789.0, "123456792"),
            (1e-4, "1e-04"),
            (0.001, "0.001"),
            (0.7978846, "0.7978846"),
            (-8.908266e-05, "-8.908266e-05"),
            (1152921504606846976.0, "1.1529215e+18"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
            (f32::NAN, "nan"),
            (3e20, "3e+20"),
        ];
        for &(x, s) in cases {
            assert_eq!(fmt_f32(x), s, "{x:?}");
        }
        assert_eq!(fmt_f64(1152921504606846976.0), "1152921504606846976");
        assert_eq!(fmt_f64(5e-324), "5e-324");
        assert_eq!(fmt_f64(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(fmt_f64(1.0 / 3.0), "0.3333333333333333");
    }

    #[test]
    fn inline_limit() {
        let values: Vec<f32> = (0..17).map(|i| i as f32).collect();
        let mut t = TensorProto {
            dims: vec![17],
            data_type: Some(dt::FLOAT),
            name: Some("w".into()),
            float_data: values[..16].to_vec(),
            ..TensorProto::default()
        };
        t.dims = vec![16];
        let g = GraphProto {
            initializer: vec![t.clone()],
            ..GraphProto::default()
        };
        assert!(print_graph(&g).contains("float[16] w =  {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}"));
        t.dims = vec![17];
        t.float_data = values;
        let digest = tensor_from_proto(&t, &NoExternal).unwrap().digest();
        let g = GraphProto {
            initializer: vec![t],
            ..GraphProto::default()
        };
        assert!(print_graph(&g).contains(&format!("float[17] w = @fnv64 \"{digest:016x}\"")));
        // 4-bit and complex types have no inline form in onnx.printer: always a digest.
        let t = TensorProto {
            dims: vec![2],
            data_type: Some(dt::INT4),
            raw_data: Some(bytes::Bytes::from_static(&[0x21])),
            ..TensorProto::default()
        };
        let g = GraphProto {
            initializer: vec![t],
            ..GraphProto::default()
        };
        assert!(print_graph(&g).contains("int4[2] = @fnv64 \""));
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("_a1"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier(""));
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
