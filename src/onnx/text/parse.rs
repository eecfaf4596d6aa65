//! The parser: a pest grammar (`grammar/onnx_text.pest`) and a walker from its tree to protos.

use bytes::Bytes;
use pest::iterators::Pair;
use pest::Parser as _;

use super::{TextError, DIGEST_KEY, ELIDED_LOCATION};
use crate::ir::DType;
use crate::onnx::proto::{
    attribute_type as at, data_location, data_type as dt, tensor_shape_proto, type_proto,
    AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    SparseTensorProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/onnx_text.pest"]
struct OnnxText;

/// How deeply types and graphs may nest before the parser gives up (protects the stack).
const MAX_DEPTH: usize = 64;

/// Parse a model in the ONNX textual syntax. `origin` names the source in diagnostics.
pub fn parse_model(src: &str, origin: &str) -> Result<ModelProto, TextError> {
    let cx = Cx { src, origin };
    let file = cx.parse(Rule::model_file)?;
    let mut m = ModelProto::default();
    for p in file.into_inner() {
        match p.as_rule() {
            Rule::header => {
                for (key, value) in cx.header(p)? {
                    cx.model_property(&mut m, key, value)?;
                }
            }
            Rule::graph => m.graph = Some(cx.graph(p, 0)?),
            Rule::function => m.functions.push(cx.function(p)?),
            _ => {}
        }
    }
    Ok(m)
}

/// Parse a graph in the ONNX textual syntax. `origin` names the source in diagnostics.
pub fn parse_graph(src: &str, origin: &str) -> Result<GraphProto, TextError> {
    let cx = Cx { src, origin };
    let file = cx.parse(Rule::graph_file)?;
    for p in file.into_inner() {
        if p.as_rule() == Rule::graph {
            return cx.graph(p, 0);
        }
    }
    Err(cx.error((0, 0), "expected a graph".into(), "here".into()))
}

/// What a rule stands for, in an "expected ..." message.
fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::comma => "','",
        Rule::colon => "':'",
        Rule::equals => "'='",
        Rule::arrow => "'=>'",
        Rule::lparen => "'('",
        Rule::rparen => "')'",
        Rule::lbrack => "'['",
        Rule::rbrack => "']'",
        Rule::lbrace => "'{'",
        Rule::rbrace => "'}'",
        Rule::langle => "'<'",
        Rule::rangle => "'>'",
        Rule::ident | Rule::quotable_id | Rule::id_slot | Rule::id_list => "a name",
        Rule::string => "a quoted string",
        Rule::literal => "a number or a string",
        Rule::float_lit => "a number",
        Rule::int_lit | Rule::dim_value => "an integer",
        Rule::prim_type | Rule::tensor_type | Rule::r#type => "a type such as float[N, 4]",
        Rule::value_info | Rule::vi_or_init => "a type and a name such as float[N, 4] X",
        Rule::dim | Rule::dim_unknown => "a dimension (an integer, a name or ?)",
        Rule::shape => "a shape such as [N, 4]",
        Rule::qualified_id => "a name such as ai.onnx",
        Rule::values | Rule::tensor_data => "tensor data such as {1, 2}",
        Rule::external | Rule::str_str | Rule::kv_item | Rule::kv_list => {
            "a list of \"key\": \"value\" pairs"
        }
        Rule::elided => "@fnv64 \"<hex digest>\"",
        Rule::graph => "a graph such as g (float[N] X) => (float[N] Y) { ... }",
        Rule::graph_inputs | Rule::graph_outputs | Rule::fn_params => {
            "a parenthesised list of values"
        }
        Rule::graph_inits => "a list of initializers",
        Rule::node_list => "a node list { ... }",
        Rule::node => "a node such as Y = Relu (X)",
        Rule::node_label => "a node name [name]",
        Rule::op | Rule::op_ident | Rule::overload => {
            "an operator name such as Relu or com.microsoft.Attention"
        }
        Rule::attr_list => "an attribute list <...>",
        Rule::attr | Rule::fn_attr | Rule::fn_attrs => "an attribute such as axis: int = 1",
        Rule::attr_type => {
            "an attribute type (int, float, string, tensor, graph, type_proto, ints, ...)"
        }
        Rule::attr_value | Rule::single_value | Rule::attr_values => "an attribute value",
        Rule::attr_ref => "an attribute reference @name",
        Rule::tensor_constant => "a tensor constant such as float[2] {1, 2}",
        Rule::sparse_value | Rule::int_list => "a sparse tensor value",
        Rule::header | Rule::header_entry => {
            "a header such as <ir_version: 8, opset_import: [\"\" : 17]>"
        }
        Rule::function => "a function",
        Rule::fn_value_infos => "a list of value types",
        Rule::seq_type
        | Rule::map_type
        | Rule::optional_type
        | Rule::sparse_type
        | Rule::opaque_type => "a type",
        Rule::EOI => "end of input",
        Rule::model_file | Rule::graph_file => "a model",
        _ => "something else",
    }
}

/// The token at `pos`, for "found ...": a word, a quoted string, one character or end of input.
fn token_at(src: &str, pos: usize) -> (usize, String) {
    let rest = src.get(pos..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return (0, "end of input".into());
    };
    let len = if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
        1 + rest[1..]
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .map_or(rest.len() - 1, |(i, _)| i)
    } else if c == '"' {
        let mut esc = false;
        let mut end = None;
        for (i, ch) in rest.char_indices().skip(1) {
            if esc {
                esc = false;
            } else if ch == '\\' {
                esc = true;
            } else if ch == '"' {
                end = Some(i + 1);
                break;
            } else if ch == '\n' {
                break;
            }
        }
        end.unwrap_or_else(|| rest.find('\n').unwrap_or(rest.len()))
    } else {
        c.len_utf8()
    };
    let text = &rest[..len];
    let shown = if text.chars().count() > 24 {
        format!("{}...", text.chars().take(24).collect::<String>())
    } else {
        text.to_string()
    };
    (len, format!("'{shown}'"))
}

/// The element type name nearest to `word` (edit distance at most 2).
fn closest_type(word: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    DType::ALL
        .iter()
        .map(|d| d.name())
        .map(|n| (distance(word, n), n))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, n)| n)
}

fn join_alternatives(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

struct Cx<'s> {
    src: &'s str,
    origin: &'s str,
}

type Res<T> = Result<T, TextError>;

fn span_of(p: &Pair<'_, Rule>) -> (usize, usize) {
    let s = p.as_span();
    (s.start(), s.end() - s.start())
}

/// The children of a pair, without punctuation.
fn kids<'i>(p: Pair<'i, Rule>) -> impl Iterator<Item = Pair<'i, Rule>> {
    p.into_inner().filter(|c| {
        !matches!(
            c.as_rule(),
            Rule::comma
                | Rule::colon
                | Rule::equals
                | Rule::arrow
                | Rule::lparen
                | Rule::rparen
                | Rule::lbrack
                | Rule::rbrack
                | Rule::lbrace
                | Rule::rbrace
                | Rule::langle
                | Rule::rangle
        )
    })
}

/// A header entry: its key and its value.
type HeaderEntry<'i> = (Pair<'i, Rule>, HeaderValue<'i>);

/// The value of a header entry.
enum HeaderValue<'i> {
    Literal(Pair<'i, Rule>),
    List(Pair<'i, Rule>),
}

/// A scalar attribute value before its type is settled.
enum Single {
    Int(i64),
    Float(f32),
    Str(Bytes),
    Tensor(Box<TensorProto>),
    Graph(Box<GraphProto>),
    Type(Box<TypeProto>),
    Sparse(Box<SparseTensorProto>),
    Ref(String),
}

impl Single {
    fn kind(&self) -> (i32, &'static str) {
        match self {
            Single::Int(_) => (at::INT, "an integer"),
            Single::Float(_) => (at::FLOAT, "a float"),
            Single::Str(_) => (at::STRING, "a string"),
            Single::Tensor(_) => (at::TENSOR, "a tensor"),
            Single::Graph(_) => (at::GRAPH, "a graph"),
            Single::Type(_) => (at::TYPE_PROTO, "a type"),
            Single::Sparse(_) => (at::SPARSE_TENSOR, "a sparse tensor"),
            Single::Ref(_) => (at::UNDEFINED, "an attribute reference"),
        }
    }
}

fn list_of(single: i32) -> i32 {
    match single {
        at::INT => at::INTS,
        at::FLOAT => at::FLOATS,
        at::STRING => at::STRINGS,
        at::TENSOR => at::TENSORS,
        at::GRAPH => at::GRAPHS,
        at::SPARSE_TENSOR => at::SPARSE_TENSORS,
        at::TYPE_PROTO => at::TYPE_PROTOS,
        other => other,
    }
}

fn single_of(list: i32) -> Option<i32> {
    match list {
        at::INTS => Some(at::INT),
        at::FLOATS => Some(at::FLOAT),
        at::STRINGS => Some(at::STRING),
        at::TENSORS => Some(at::TENSOR),
        at::GRAPHS => Some(at::GRAPH),
        at::SPARSE_TENSORS => Some(at::SPARSE_TENSOR),
        at::TYPE_PROTOS => Some(at::TYPE_PROTO),
        _ => None,
    }
}

fn attr_type_code(name: &str) -> i32 {
    match name {
        "float" => at::FLOAT,
        "int" => at::INT,
        "string" => at::STRING,
        "tensor" => at::TENSOR,
        "graph" => at::GRAPH,
        "floats" => at::FLOATS,
        "ints" => at::INTS,
        "strings" => at::STRINGS,
        "tensors" => at::TENSORS,
        "graphs" => at::GRAPHS,
        "sparse_tensor" => at::SPARSE_TENSOR,
        "sparse_tensors" => at::SPARSE_TENSORS,
        "type_proto" => at::TYPE_PROTO,
        "type_protos" => at::TYPE_PROTOS,
        _ => at::UNDEFINED,
    }
}

fn attr_type_word(code: i32) -> &'static str {
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

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_string()),
        value: Some(value.to_string()),
    }
}

impl<'s> Cx<'s> {
    fn error(&self, span: (usize, usize), message: String, label: String) -> TextError {
        TextError::new(self.src, self.origin, span, message, label)
    }

    fn at(&self, p: &Pair<'_, Rule>, message: String, label: &str) -> TextError {
        self.error(span_of(p), message, label.to_string())
    }

    fn parse(&self, rule: Rule) -> Res<Pair<'s, Rule>> {
        let mut pairs = OnnxText::parse(rule, self.src).map_err(|e| self.syntax_error(e))?;
        pairs
            .next()
            .ok_or_else(|| self.error((0, 0), "the input is empty".into(), "here".into()))
    }

    fn syntax_error(&self, e: pest::error::Error<Rule>) -> TextError {
        let pos = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((s, _)) => s,
        };
        let (len, found) = token_at(self.src, pos);
        if let Some(err) = self.unknown_type_before(pos) {
            return err;
        }
        // At the end of input there is nothing to underline: point at the last token instead.
        let at_end = pos >= self.src.trim_end().len();
        let (span, after) = if at_end {
            let end = self.src.trim_end().len();
            let start = self.src[..end]
                .char_indices()
                .next_back()
                .map_or(0, |(i, _)| i);
            ((start, end - start), " after this")
        } else {
            ((pos, len), "")
        };
        match &e.variant {
            pest::error::ErrorVariant::ParsingError { positives, .. } => {
                let mut wanted: Vec<&str> = Vec::new();
                for r in positives {
                    let d = describe(*r);
                    if !wanted.contains(&d) {
                        wanted.push(d);
                    }
                }
                if found.starts_with("'\"") && !found.ends_with("\"'") {
                    return self
                        .error(
                            (pos, len),
                            "unterminated string".into(),
                            "this string has no closing quote".into(),
                        )
                        .with_help(
                            "strings end with '\"'; write \\\" for a quote inside a string",
                        );
                }
                if wanted.is_empty() {
                    return self.error(
                        span,
                        format!("unexpected {found}"),
                        "not expected here".into(),
                    );
                }
                let expected = join_alternatives(&wanted);
                self.error(
                    span,
                    format!("expected {expected}, found {found}"),
                    format!("expected {expected}{after}"),
                )
            }
            pest::error::ErrorVariant::CustomError { message } => {
                self.error(span, format!("cannot parse: {message}"), "here".into())
            }
        }
    }

    /// `flaot[N] X` parses as a value named `flaot` followed by a stray `[`: report the word as an
    /// unknown type instead.
    fn unknown_type_before(&self, pos: usize) -> Option<TextError> {
        let rest = self.src.get(pos..)?;
        if !rest.starts_with('[') {
            return None;
        }
        let before = self.src.get(..pos)?.trim_end();
        let start = before
            .char_indices()
            .rev()
            .take_while(|&(_, c)| c.is_ascii_alphanumeric() || c == '_')
            .last()
            .map(|(i, _)| i)?;
        let word = &before[start..];
        if !word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || DType::from_name(word).is_some()
        {
            return None;
        }
        let preceding = before[..start].trim_end();
        if !(preceding.ends_with('(') || preceding.ends_with(',') || preceding.ends_with('<')) {
            return None;
        }
        let help = match closest_type(word) {
            Some(t) => format!("did you mean '{t}'?"),
            None => "element types are float, double, float16, bfloat16, int8 to int64, uint8 to uint64, bool, \
                     string, complex64, complex128 and the float8/4-bit types"
                .to_string(),
        };
        Some(
            self.error(
                (start, word.len()),
                format!("unknown type '{word}'"),
                "not a type".into(),
            )
            .with_help(help),
        )
    }

    fn text(&self, p: &Pair<'_, Rule>) -> String {
        p.as_str().to_string()
    }

    /// The contents of a `string` pair, unescaped.
    fn string(&self, p: &Pair<'_, Rule>) -> String {
        let s = p.as_str();
        let inner = s.get(1..s.len().saturating_sub(1)).unwrap_or("");
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// A `quotable_id` (or `ident` or `string`) as a name.
    fn name(&self, p: Pair<'_, Rule>) -> String {
        match p.as_rule() {
            Rule::string => self.string(&p),
            Rule::quotable_id => match p.into_inner().next() {
                Some(c) => self.name(c),
                None => String::new(),
            },
            _ => p.as_str().to_string(),
        }
    }

    fn int(&self, p: &Pair<'_, Rule>) -> Res<i64> {
        p.as_str().parse::<i64>().map_err(|_| {
            self.at(
                p,
                format!("integer {} is out of range for int64", p.as_str()),
                "too large",
            )
        })
    }

    fn depth(&self, p: &Pair<'_, Rule>, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            Err(self.at(
                p,
                format!("nested more than {MAX_DEPTH} levels deep"),
                "too deep",
            ))
        } else {
            Ok(())
        }
    }

    // ------------------------------------------------------------ header

    fn header<'i>(&self, p: Pair<'i, Rule>) -> Res<Vec<HeaderEntry<'i>>> {
        let mut out = Vec::new();
        for e in kids(p) {
            let mut it = kids(e.clone());
            let (Some(key), Some(value)) = (it.next(), it.next()) else {
                return Err(self.at(&e, "malformed header entry".into(), "here"));
            };
            let value = if value.as_rule() == Rule::kv_list {
                HeaderValue::List(value)
            } else {
                HeaderValue::Literal(value)
            };
            out.push((key, value));
        }
        Ok(out)
    }

    fn header_string(&self, key: &Pair<'_, Rule>, v: HeaderValue<'_>) -> Res<String> {
        if let HeaderValue::Literal(l) = &v {
            if let Some(s) = l
                .clone()
                .into_inner()
                .next()
                .filter(|s| s.as_rule() == Rule::string)
            {
                return Ok(self.string(&s));
            }
        }
        Err(self.header_type_error(key, v, "a quoted string"))
    }

    fn header_int(&self, key: &Pair<'_, Rule>, v: HeaderValue<'_>) -> Res<i64> {
        if let HeaderValue::Literal(l) = &v {
            if let Some(s) = l
                .clone()
                .into_inner()
                .next()
                .filter(|s| s.as_rule() == Rule::int_lit)
            {
                return self.int(&s);
            }
        }
        Err(self.header_type_error(key, v, "an integer"))
    }

    fn header_type_error(&self, key: &Pair<'_, Rule>, v: HeaderValue<'_>, want: &str) -> TextError {
        let p = match v {
            HeaderValue::Literal(p) | HeaderValue::List(p) => p,
        };
        self.at(
            &p,
            format!("'{}' takes {want}, found '{}'", key.as_str(), p.as_str()),
            &format!("expected {want}"),
        )
    }

    fn kv_items<'i>(
        &self,
        key: &Pair<'_, Rule>,
        v: HeaderValue<'i>,
    ) -> Res<Vec<(String, Pair<'i, Rule>)>> {
        let HeaderValue::List(list) = v else {
            return Err(self.header_type_error(key, v, "a list [...]"));
        };
        let mut out = Vec::new();
        for item in kids(list) {
            let mut it = kids(item.clone());
            let (Some(k), Some(val)) = (it.next(), it.next()) else {
                return Err(self.at(&item, "malformed list entry".into(), "here"));
            };
            out.push((self.string(&k), val));
        }
        Ok(out)
    }

    fn opsets(&self, key: &Pair<'_, Rule>, v: HeaderValue<'_>) -> Res<Vec<OperatorSetIdProto>> {
        let mut out = Vec::new();
        for (domain, version) in self.kv_items(key, v)? {
            if version.as_rule() != Rule::int_lit {
                return Err(self.at(
                    &version,
                    "an opset version must be an integer".into(),
                    "expected an integer",
                ));
            }
            out.push(OperatorSetIdProto {
                domain: Some(domain),
                version: Some(self.int(&version)?),
            });
        }
        Ok(out)
    }

    fn string_pairs(
        &self,
        key: &Pair<'_, Rule>,
        v: HeaderValue<'_>,
    ) -> Res<Vec<StringStringEntryProto>> {
        let mut out = Vec::new();
        for (k, value) in self.kv_items(key, v)? {
            if value.as_rule() != Rule::string {
                return Err(self.at(
                    &value,
                    "metadata values must be quoted strings".into(),
                    "expected a string",
                ));
            }
            out.push(entry(&k, &self.string(&value)));
        }
        Ok(out)
    }

    fn model_property(
        &self,
        m: &mut ModelProto,
        key: Pair<'_, Rule>,
        v: HeaderValue<'_>,
    ) -> Res<()> {
        match key.as_str() {
            "ir_version" => m.ir_version = Some(self.header_int(&key, v)?),
            "opset_import" => m.opset_import = self.opsets(&key, v)?,
            "producer_name" => m.producer_name = Some(self.header_string(&key, v)?),
            "producer_version" => m.producer_version = Some(self.header_string(&key, v)?),
            "domain" => m.domain = Some(self.header_string(&key, v)?),
            "model_version" => m.model_version = Some(self.header_int(&key, v)?),
            "doc_string" => m.doc_string = Some(self.header_string(&key, v)?),
            "metadata_props" => m.metadata_props = self.string_pairs(&key, v)?,
            other => {
                return Err(self
                    .at(&key, format!("unknown model property '{other}'"), "unknown property")
                    .with_help(
                        "a model header takes ir_version, opset_import, producer_name, producer_version, \
                         domain, model_version, doc_string and metadata_props",
                    ))
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ types

    fn prim_type(&self, p: &Pair<'_, Rule>) -> i32 {
        DType::from_name(p.as_str()).map_or(dt::UNDEFINED, DType::onnx_code)
    }

    fn shape(&self, p: Pair<'_, Rule>) -> Res<Option<TensorShapeProto>> {
        let mut dims = Vec::new();
        for d in kids(p) {
            let Some(v) = d.into_inner().next() else {
                continue;
            };
            let value = match v.as_rule() {
                Rule::dim_unknown => None,
                Rule::dim_value => Some(tensor_shape_proto::dimension::Value::DimValue(
                    self.int(&v)?,
                )),
                _ => Some(tensor_shape_proto::dimension::Value::DimParam(self.name(v))),
            };
            dims.push(tensor_shape_proto::Dimension {
                value,
                denotation: None,
            });
        }
        // `float[]` is a tensor of unknown rank: no shape at all.
        Ok(if dims.is_empty() {
            None
        } else {
            Some(TensorShapeProto { dim: dims })
        })
    }

    /// `prim_type shape?` as (elem type, shape): no brackets is a scalar (an empty shape).
    fn tensor_type(&self, p: Pair<'_, Rule>) -> Res<(i32, Option<TensorShapeProto>)> {
        let mut elem = dt::UNDEFINED;
        let mut shape = Some(TensorShapeProto::default());
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::prim_type => elem = self.prim_type(&c),
                Rule::shape => shape = self.shape(c)?,
                _ => {}
            }
        }
        Ok((elem, shape))
    }

    fn type_proto(&self, p: Pair<'_, Rule>, depth: usize) -> Res<TypeProto> {
        self.depth(&p, depth)?;
        let inner = if p.as_rule() == Rule::r#type {
            p.into_inner().next()
        } else {
            Some(p)
        };
        let Some(t) = inner else {
            return Ok(TypeProto::default());
        };
        let boxed = |p: Option<Pair<'_, Rule>>| -> Res<Option<Box<TypeProto>>> {
            match p {
                Some(p) => Ok(Some(Box::new(self.type_proto(p, depth + 1)?))),
                None => Ok(None),
            }
        };
        let value = match t.as_rule() {
            Rule::tensor_type => {
                let (elem, shape) = self.tensor_type(t)?;
                type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem),
                    shape,
                })
            }
            Rule::seq_type => type_proto::Value::SequenceType(type_proto::Sequence {
                elem_type: boxed(kids(t).next())?,
            }),
            Rule::optional_type => type_proto::Value::OptionalType(type_proto::Optional {
                elem_type: boxed(kids(t).next())?,
            }),
            Rule::map_type => {
                let mut it = kids(t);
                let key = it.next().map(|k| self.prim_type(&k));
                type_proto::Value::MapType(type_proto::Map {
                    key_type: key,
                    value_type: boxed(it.next())?,
                })
            }
            Rule::sparse_type => {
                let (elem, shape) = match kids(t).next() {
                    Some(tt) => self.tensor_type(tt)?,
                    None => (dt::UNDEFINED, None),
                };
                type_proto::Value::SparseTensorType(type_proto::SparseTensor {
                    elem_type: Some(elem),
                    shape,
                })
            }
            Rule::opaque_type => {
                let parts: Vec<String> = kids(t).map(|c| c.as_str().to_string()).collect();
                let (domain, name) = match parts.as_slice() {
                    [] => (None, None),
                    [n] => (None, Some(n.clone())),
                    [d, n, ..] => (Some(d.clone()), Some(n.clone())),
                };
                type_proto::Value::OpaqueType(type_proto::Opaque { domain, name })
            }
            _ => return Err(self.at(&t, "expected a type".into(), "here")),
        };
        Ok(TypeProto {
            value: Some(value),
            denotation: None,
        })
    }

    fn value_info(&self, p: Pair<'_, Rule>) -> Res<ValueInfoProto> {
        let mut vi = ValueInfoProto::default();
        for c in p.into_inner() {
            match c.as_rule() {
                Rule::r#type => vi.r#type = Some(self.type_proto(c, 0)?),
                Rule::quotable_id => vi.name = Some(self.name(c)),
                _ => {}
            }
        }
        Ok(vi)
    }

    // ------------------------------------------------------------ tensors

    /// Fill `t` (whose type is `ty`, given at `type_pair`) from a `tensor_data` pair.
    fn tensor_data(
        &self,
        t: &mut TensorProto,
        ty: &Pair<'_, Rule>,
        vi_type: Option<&TypeProto>,
        data: Pair<'_, Rule>,
    ) -> Res<()> {
        let Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tt)),
            ..
        }) = vi_type
        else {
            return Err(self
                .at(ty, "a constant needs a tensor type such as float[2, 3]".into(), "not a tensor type")
                .with_help("initializers and tensor attributes take a tensor type; seq, map, optional, sparse_tensor and opaque types have no constants"));
        };
        let elem = tt.elem_type.unwrap_or(0);
        t.data_type = Some(elem);
        if let Some(shape) = &tt.shape {
            for d in &shape.dim {
                match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(v)) => t.dims.push(*v),
                    _ => {
                        return Err(self.at(
                            ty,
                            "a constant's shape must have numeric dimensions".into(),
                            "symbolic or unknown dimension",
                        ))
                    }
                }
            }
        } else {
            return Err(self.at(
                ty,
                "a constant needs a shape; write float for a scalar, not float[]".into(),
                "unknown rank",
            ));
        }
        let Some(body) = data.into_inner().next() else {
            return Ok(());
        };
        match body.as_rule() {
            Rule::values => {
                for lit in kids(body) {
                    self.push_value(t, elem, lit)?;
                }
            }
            Rule::external => {
                t.data_location = Some(data_location::EXTERNAL);
                for kv in kids(body) {
                    let mut it = kids(kv);
                    if let (Some(k), Some(v)) = (it.next(), it.next()) {
                        t.external_data
                            .push(entry(&self.string(&k), &self.string(&v)));
                    }
                }
            }
            Rule::elided => {
                let Some(s) = kids(body.clone()).next() else {
                    return Ok(());
                };
                let hex = self.string(&s);
                if hex.is_empty() || hex.len() > 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(self.at(
                        &s,
                        format!("'{hex}' is not a 64-bit hex digest"),
                        "expected up to 16 hex digits",
                    ));
                }
                t.data_location = Some(data_location::EXTERNAL);
                t.external_data = vec![entry("location", ELIDED_LOCATION), entry(DIGEST_KEY, &hex)];
            }
            _ => {}
        }
        Ok(())
    }

    fn push_value(&self, t: &mut TensorProto, elem: i32, lit: Pair<'_, Rule>) -> Res<()> {
        let Some(v) = lit.clone().into_inner().next() else {
            return Ok(());
        };
        let kind = v.as_rule();
        let type_name = super::print::dtype_name(elem);
        let wrong = |want: &str| {
            self.at(
                &v,
                format!(
                    "{type_name} tensor values must be {want}, found '{}'",
                    v.as_str()
                ),
                &format!("expected {want}"),
            )
        };
        match elem {
            dt::INT2
            | dt::INT4
            | dt::INT8
            | dt::INT16
            | dt::INT32
            | dt::UINT2
            | dt::UINT4
            | dt::UINT8
            | dt::UINT16
            | dt::FLOAT16
            | dt::BFLOAT16
            | dt::FLOAT8E4M3FN
            | dt::FLOAT8E4M3FNUZ
            | dt::FLOAT8E5M2
            | dt::FLOAT8E5M2FNUZ
            | dt::FLOAT8E8M0
            | dt::BOOL
            | dt::FLOAT4E2M1 => {
                if kind != Rule::int_lit {
                    return Err(wrong("integers"));
                }
                let x = self.int(&v)?;
                let x = i32::try_from(x).map_err(|_| {
                    self.at(
                        &v,
                        format!("{x} does not fit in int32 storage"),
                        "out of range",
                    )
                })?;
                t.int32_data.push(x);
            }
            dt::INT64 => {
                if kind != Rule::int_lit {
                    return Err(wrong("integers"));
                }
                t.int64_data.push(self.int(&v)?);
            }
            dt::UINT32 | dt::UINT64 => {
                let x = if kind == Rule::int_lit {
                    v.as_str().parse::<u64>().ok()
                } else {
                    None
                };
                t.uint64_data
                    .push(x.ok_or_else(|| wrong("non-negative integers"))?);
            }
            dt::FLOAT | dt::COMPLEX64 => {
                let x = if kind == Rule::string {
                    None
                } else {
                    v.as_str().parse::<f32>().ok()
                };
                t.float_data.push(x.ok_or_else(|| wrong("numbers"))?);
            }
            dt::DOUBLE | dt::COMPLEX128 => {
                let x = if kind == Rule::string {
                    None
                } else {
                    v.as_str().parse::<f64>().ok()
                };
                t.double_data.push(x.ok_or_else(|| wrong("numbers"))?);
            }
            dt::STRING => {
                if kind != Rule::string {
                    return Err(wrong("quoted strings"));
                }
                t.string_data.push(Bytes::from(self.string(&v)));
            }
            _ => {
                return Err(self.at(
                    &v,
                    format!("a tensor of type {type_name} cannot hold values"),
                    "no values allowed",
                ))
            }
        }
        Ok(())
    }

    /// A `tensor_constant` (attribute tensors and sparse parts).
    fn tensor_constant(&self, p: Pair<'_, Rule>) -> Res<TensorProto> {
        let mut t = TensorProto::default();
        let mut ty = None;
        for c in kids(p) {
            match c.as_rule() {
                Rule::tensor_type => {
                    let tp = TypeProto {
                        value: Some(type_proto::Value::TensorType({
                            let (elem, shape) = self.tensor_type(c.clone())?;
                            type_proto::Tensor {
                                elem_type: Some(elem),
                                shape,
                            }
                        })),
                        denotation: None,
                    };
                    ty = Some((c, tp));
                }
                Rule::quotable_id => t.name = Some(self.name(c)),
                Rule::tensor_data => {
                    if let Some((tp_pair, tp)) = &ty {
                        self.tensor_data(&mut t, tp_pair, Some(tp), c)?;
                    }
                }
                _ => {}
            }
        }
        Ok(t)
    }

    /// A `vi_or_init`: a value info, and the initializer if it has `= data`.
    fn vi_or_init(&self, p: Pair<'_, Rule>) -> Res<(ValueInfoProto, Option<TensorProto>)> {
        let mut vi = ValueInfoProto::default();
        let mut vi_pair = None;
        let mut init = None;
        for c in kids(p) {
            match c.as_rule() {
                Rule::value_info => {
                    vi_pair = Some(c.clone());
                    vi = self.value_info(c)?;
                }
                Rule::tensor_data => {
                    let mut t = TensorProto {
                        name: vi.name.clone(),
                        ..TensorProto::default()
                    };
                    let at_pair = vi_pair.clone().unwrap_or_else(|| c.clone());
                    self.tensor_data(&mut t, &at_pair, vi.r#type.as_ref(), c)?;
                    init = Some(t);
                }
                _ => {}
            }
        }
        Ok((vi, init))
    }

    // ------------------------------------------------------------ graphs

    fn graph(&self, p: Pair<'_, Rule>, depth: usize) -> Res<GraphProto> {
        self.depth(&p, depth)?;
        let mut g = GraphProto::default();
        for c in kids(p) {
            match c.as_rule() {
                Rule::quotable_id => g.name = Some(self.name(c)),
                Rule::graph_inputs => {
                    for v in kids(c) {
                        let (vi, init) = self.vi_or_init(v)?;
                        g.input.push(vi);
                        g.initializer.extend(init);
                    }
                }
                Rule::graph_outputs => {
                    for v in kids(c) {
                        g.output.push(self.value_info(v)?);
                    }
                }
                Rule::graph_inits => {
                    for v in kids(c) {
                        let (vi, init) = self.vi_or_init(v)?;
                        match init {
                            Some(t) => g.initializer.push(t),
                            None => g.value_info.push(vi),
                        }
                    }
                }
                Rule::node_list => g.node = self.nodes(c, depth)?,
                _ => {}
            }
        }
        Ok(g)
    }

    fn nodes(&self, p: Pair<'_, Rule>, depth: usize) -> Res<Vec<NodeProto>> {
        kids(p).map(|n| self.node(n, depth)).collect()
    }

    /// An `id_list`, with the reference parser's rules for empty names: `Op(,x)` has two
    /// operands, the first empty; a trailing bare comma adds nothing; `""` is an empty name.
    fn id_list(&self, p: Pair<'_, Rule>) -> Vec<String> {
        let slots: Vec<Option<String>> = kids(p)
            .map(|s| s.into_inner().next().map(|q| self.name(q)))
            .collect();
        let n = slots.len();
        let mut out = Vec::new();
        for (i, s) in slots.into_iter().enumerate() {
            match s {
                Some(name) => out.push(name),
                None if i + 1 < n => out.push(String::new()),
                None => {}
            }
        }
        out
    }

    fn node(&self, p: Pair<'_, Rule>, depth: usize) -> Res<NodeProto> {
        let mut n = NodeProto::default();
        let mut lists = 0;
        let mut attrs_seen: Option<Pair<'_, Rule>> = None;
        for c in kids(p) {
            match c.as_rule() {
                Rule::node_label => {
                    n.name = Some(kids(c).next().map(|q| self.name(q)).unwrap_or_default())
                }
                Rule::id_list => {
                    if lists == 0 {
                        n.output = self.id_list(c);
                    } else {
                        n.input = self.id_list(c);
                    }
                    lists += 1;
                }
                Rule::op => {
                    let mut parts = Vec::new();
                    for o in kids(c) {
                        match o.as_rule() {
                            Rule::op_ident => parts.push(self.text(&o)),
                            Rule::overload => {
                                n.overload = kids(o).next().map(|i| self.text(&i));
                            }
                            _ => {}
                        }
                    }
                    n.op_type = parts.pop();
                    n.domain = Some(parts.join("."));
                }
                Rule::attr_list => {
                    if let Some(first) = &attrs_seen {
                        let _ = first;
                        return Err(self
                            .at(&c, "a node takes one attribute list, before or after its inputs, not both".into(), "second attribute list")
                            .with_help("merge the two <...> lists"));
                    }
                    for a in kids(c.clone()) {
                        n.attribute.push(self.attribute(a, depth)?);
                    }
                    attrs_seen = Some(c);
                }
                _ => {}
            }
        }
        Ok(n)
    }

    // ------------------------------------------------------------ attributes

    fn single(&self, p: Pair<'_, Rule>, depth: usize) -> Res<Single> {
        let inner = if p.as_rule() == Rule::single_value {
            p.clone().into_inner().next()
        } else {
            Some(p.clone())
        };
        let Some(v) = inner else {
            return Err(self.at(&p, "expected an attribute value".into(), "here"));
        };
        Ok(match v.as_rule() {
            Rule::attr_ref => Single::Ref(kids(v).next().map(|q| self.name(q)).unwrap_or_default()),
            Rule::tensor_constant => Single::Tensor(Box::new(self.tensor_constant(v)?)),
            Rule::r#type => Single::Type(Box::new(self.type_proto(v, depth + 1)?)),
            Rule::graph => Single::Graph(Box::new(self.graph(v, depth + 1)?)),
            Rule::sparse_value => {
                let mut s = SparseTensorProto::default();
                for (i, c) in kids(v).enumerate() {
                    match (i, c.as_rule()) {
                        (0, Rule::tensor_constant) => s.values = Some(self.tensor_constant(c)?),
                        (1, Rule::tensor_constant) => s.indices = Some(self.tensor_constant(c)?),
                        (_, Rule::int_list) => {
                            for d in kids(c) {
                                s.dims.push(self.int(&d)?);
                            }
                        }
                        _ => {}
                    }
                }
                Single::Sparse(Box::new(s))
            }
            Rule::literal => {
                let Some(l) = v.clone().into_inner().next() else {
                    return Err(self.at(&v, "expected a literal".into(), "here"));
                };
                match l.as_rule() {
                    Rule::string => Single::Str(Bytes::from(self.string(&l))),
                    Rule::int_lit => Single::Int(self.int(&l)?),
                    _ => Single::Float(l.as_str().parse::<f32>().map_err(|_| {
                        self.at(
                            &l,
                            format!("'{}' is not a number", l.as_str()),
                            "not a number",
                        )
                    })?),
                }
            }
            _ => return Err(self.at(&v, "expected an attribute value".into(), "here")),
        })
    }

    /// Store `v` in `a` as a value of type `ty` (a singular type), checking that it fits.
    fn store(
        &self,
        a: &mut AttributeProto,
        ty: i32,
        v: Single,
        list: bool,
        at_pair: &Pair<'_, Rule>,
        name: &str,
    ) -> Res<()> {
        let declared = attr_type_word(if list { list_of(ty) } else { ty });
        let mismatch = |found: &str| {
            self.at(
                at_pair,
                format!("attribute '{name}' is declared {declared}, but its value is {found}"),
                &format!("expected {}", attr_type_word(ty)),
            )
        };
        match (ty, v) {
            (at::INT, Single::Int(i)) if list => a.ints.push(i),
            (at::INT, Single::Int(i)) => a.i = Some(i),
            (at::FLOAT, Single::Float(f)) if list => a.floats.push(f),
            (at::FLOAT, Single::Float(f)) => a.f = Some(f),
            (at::FLOAT, Single::Int(_)) => {
                // An integer where a float is declared: read its text as a float (keeps "-0").
                let f = at_pair.as_str().trim().parse::<f32>().unwrap_or(0.0);
                if list {
                    a.floats.push(f)
                } else {
                    a.f = Some(f)
                }
            }
            (at::STRING, Single::Str(s)) if list => a.strings.push(s),
            (at::STRING, Single::Str(s)) => a.s = Some(s),
            (at::TENSOR, Single::Tensor(t)) if list => a.tensors.push(*t),
            (at::TENSOR, Single::Tensor(t)) => a.t = Some(*t),
            (at::GRAPH, Single::Graph(g)) if list => a.graphs.push(*g),
            (at::GRAPH, Single::Graph(g)) => a.g = Some(*g),
            (at::TYPE_PROTO, Single::Type(t)) if list => a.type_protos.push(*t),
            (at::TYPE_PROTO, Single::Type(t)) => a.tp = Some(*t),
            (at::SPARSE_TENSOR, Single::Sparse(s)) if list => a.sparse_tensors.push(*s),
            (at::SPARSE_TENSOR, Single::Sparse(s)) => a.sparse_tensor = Some(*s),
            (_, other) => return Err(mismatch(other.kind().1)),
        }
        Ok(())
    }

    fn attribute(&self, p: Pair<'_, Rule>, depth: usize) -> Res<AttributeProto> {
        let mut a = AttributeProto::default();
        let mut name = String::new();
        let mut declared: Option<(i32, Pair<'_, Rule>)> = None;
        let mut value = None;
        let whole = p.clone();
        for c in kids(p) {
            match c.as_rule() {
                Rule::ident => name = self.text(&c),
                Rule::attr_type => declared = Some((attr_type_code(c.as_str()), c)),
                Rule::attr_value => value = c.into_inner().next(),
                _ => {}
            }
        }
        a.name = Some(name.clone());
        let Some(value) = value else {
            return match declared {
                Some((code, _)) if code == at::UNDEFINED => {
                    a.r#type = Some(code);
                    Ok(a)
                }
                _ => Err(self.at(
                    &whole,
                    format!("attribute '{name}' has no value"),
                    "value missing",
                )),
            };
        };
        if value.as_rule() == Rule::attr_values {
            let items: Vec<Pair<'_, Rule>> = kids(value.clone()).collect();
            let mut singles = Vec::with_capacity(items.len());
            for it in &items {
                singles.push(self.single(it.clone(), depth)?);
            }
            // The element type: declared, or inferred from the values (floats win over ints).
            let elem = match &declared {
                Some((code, pair)) => match single_of(*code) {
                    Some(s) => s,
                    None => {
                        return Err(self.at(
                            pair,
                            format!(
                                "attribute '{name}' is declared {}, but its value is a list",
                                attr_type_word(*code)
                            ),
                            "not a list type",
                        ))
                    }
                },
                None => {
                    let Some(first) = singles.first() else {
                        return Err(self
                            .at(
                                &value,
                                format!("the empty list for attribute '{name}' needs a type"),
                                "type unknown",
                            )
                            .with_help(format!(
                                "write {name}: ints = [] (or floats, strings, ...)"
                            )));
                    };
                    let mut k = first.kind().0;
                    if k == at::INT && singles.iter().any(|s| matches!(s, Single::Float(_))) {
                        k = at::FLOAT;
                    }
                    k
                }
            };
            for (s, it) in singles.into_iter().zip(&items) {
                if let Single::Ref(_) = s {
                    return Err(self.at(
                        it,
                        "an attribute reference cannot be a list element".into(),
                        "not allowed here",
                    ));
                }
                self.store(&mut a, elem, s, true, it, &name)?;
            }
            a.r#type = Some(list_of(elem));
        } else {
            let s = self.single(value.clone(), depth)?;
            if let Single::Ref(r) = s {
                a.ref_attr_name = Some(r);
                a.r#type = declared.map(|(c, _)| c);
                return Ok(a);
            }
            let ty = match &declared {
                Some((code, _)) => *code,
                None => s.kind().0,
            };
            if single_of(ty).is_some() {
                return Err(self.at(
                    &value,
                    format!(
                        "attribute '{name}' is declared {}, but its value is not a list",
                        attr_type_word(ty)
                    ),
                    "expected [...]",
                ));
            }
            self.store(&mut a, ty, s, false, &value, &name)?;
            a.r#type = Some(ty);
        }
        Ok(a)
    }

    // ------------------------------------------------------------ functions

    fn function(&self, p: Pair<'_, Rule>) -> Res<FunctionProto> {
        let mut f = FunctionProto::default();
        let mut params = 0;
        for c in kids(p) {
            match c.as_rule() {
                Rule::header => {
                    for (key, value) in self.header(c)? {
                        match key.as_str() {
                            "domain" => f.domain = Some(self.header_string(&key, value)?),
                            "overload" => f.overload = Some(self.header_string(&key, value)?),
                            "doc_string" => f.doc_string = Some(self.header_string(&key, value)?),
                            "opset_import" => f.opset_import = self.opsets(&key, value)?,
                            other => {
                                return Err(self
                                    .at(&key, format!("unknown function property '{other}'"), "unknown property")
                                    .with_help("a function header takes domain, overload, doc_string and opset_import"))
                            }
                        }
                    }
                }
                Rule::quotable_id => f.name = Some(self.name(c)),
                Rule::fn_attrs => {
                    for a in kids(c) {
                        let Some(inner) = a.into_inner().next() else {
                            continue;
                        };
                        if inner.as_rule() == Rule::attr {
                            let attr = self.attribute(inner, 0)?;
                            f.attribute_proto.push(attr);
                        } else {
                            f.attribute.push(self.text(&inner));
                        }
                    }
                }
                Rule::fn_params => {
                    let mut names = Vec::new();
                    for v in kids(c) {
                        let vi = self.value_info(v)?;
                        names.push(vi.name.clone().unwrap_or_default());
                        if vi.r#type.is_some() {
                            f.value_info.push(vi);
                        }
                    }
                    if params == 0 {
                        f.input = names;
                    } else {
                        f.output = names;
                    }
                    params += 1;
                }
                Rule::fn_value_infos => {
                    for v in kids(c) {
                        f.value_info.push(self.value_info(v)?);
                    }
                }
                Rule::node_list => f.node = self.nodes(c, 0)?,
                _ => {}
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{print_graph, print_model};
    use super::*;

    const MODEL: &str = r#"<
   ir_version: 8,
   opset_import: ["" : 17, "com.x" : 1],
   producer_name: "test"
>
main (float[N,4] X, float[4] B) => (float[N,4] Y) 
   <float[4] B =  {1,2,3,4}, float[N,4] T>
{
   T = Add (X, B)
   [n1] Y = com.x.Foo <axis: int = 1, fs: floats = [1, 2.5], s: string = "a\"b"> (T, "")
}"#;

    #[test]
    fn model_round_trip() {
        let m = parse_model(MODEL, "m.onnxtxt").unwrap();
        assert_eq!(m.ir_version, Some(8));
        assert_eq!(m.opset_import.len(), 2);
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.initializer.len(), 1);
        assert_eq!(g.initializer[0].float_data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(g.value_info.len(), 1);
        assert_eq!(g.node[1].domain.as_deref(), Some("com.x"));
        assert_eq!(g.node[1].input, vec!["T".to_string(), String::new()]);
        assert_eq!(g.node[1].attribute[2].s.as_deref(), Some(&b"a\"b"[..]));
        assert_eq!(print_model(&m), MODEL);
    }

    #[test]
    fn empty_operands() {
        let g = parse_graph("g (float x) => () { a, = Foo (, x, ) }", "t").unwrap();
        assert_eq!(g.node[0].input, vec![String::new(), "x".to_string()]);
        assert_eq!(g.node[0].output, vec!["a".to_string()]);
        let g = parse_graph("g () => () { = Foo (,) }", "t").unwrap();
        assert_eq!(g.node[0].input, vec![String::new()]);
        assert!(g.node[0].output.is_empty());
    }

    #[test]
    fn attribute_inference() {
        let g = parse_graph(
            "g () => () { y = Foo <a = 1, b = 1.5, c = \"s\", d = [1, 2], e = [1, 2.5], f: float = 2, t = float[2] {1, 2}, tp = seq(float[N]), r: int = @x> () }",
            "t",
        )
        .unwrap();
        let a = &g.node[0].attribute;
        let types: Vec<i32> = a.iter().map(|a| a.r#type.unwrap_or(-1)).collect();
        assert_eq!(
            types,
            vec![
                at::INT,
                at::FLOAT,
                at::STRING,
                at::INTS,
                at::FLOATS,
                at::FLOAT,
                at::TENSOR,
                at::TYPE_PROTO,
                at::INT
            ]
        );
        assert_eq!(a[4].floats, vec![1.0, 2.5]);
        assert_eq!(a[5].f, Some(2.0));
        assert_eq!(a[8].ref_attr_name.as_deref(), Some("x"));
    }

    #[test]
    fn elided_round_trip() {
        let text = "g () => () \n   <float[100,3] w = @fnv64 \"00ff00ff00ff00ff\">\n{\n   y = Foo <t: tensor = int64[20] @fnv64 \"0000000000000001\"> ()\n}";
        let g = parse_graph(text, "t").unwrap();
        let w = &g.initializer[0];
        assert_eq!(w.dims, vec![100, 3]);
        assert_eq!(w.data_location, Some(data_location::EXTERNAL));
        assert_eq!(w.external_data[0].value.as_deref(), Some(ELIDED_LOCATION));
        assert_eq!(print_graph(&g), text);
    }

    #[test]
    fn external_data_round_trip() {
        let text = "g () => () \n   <float[2,3] w = [\"location\": \"w.bin\", \"offset\": \"0\", \"length\": \"24\"]>\n{\n}";
        let g = parse_graph(text, "t").unwrap();
        let w = &g.initializer[0];
        assert_eq!(w.data_location, Some(data_location::EXTERNAL));
        assert_eq!(w.external_data.len(), 3);
        assert_eq!(w.external_data[0].value.as_deref(), Some("w.bin"));
        assert_eq!(print_graph(&g), text);
    }

    #[test]
    fn sparse_attribute_round_trip() {
        let text = "g () => () {\n   y = Constant <sparse_value: sparse_tensor = sparse(float[2] {1,2}, int64[2] {0,5}, [3, 4])> ()\n}";
        let g = parse_graph(text, "t").unwrap();
        let a = &g.node[0].attribute[0];
        assert_eq!(a.r#type, Some(at::SPARSE_TENSOR));
        let s = a.sparse_tensor.as_ref().unwrap();
        assert_eq!(s.dims, vec![3, 4]);
        assert_eq!(s.indices.as_ref().unwrap().int64_data, vec![0, 5]);
        assert_eq!(print_graph(&g), text);
    }

    #[test]
    fn every_attribute_kind_round_trips() {
        let text = "g () => () {\n   y = Foo (x) <f: float = 0.5, i: int = 3, s: string = \"s\", t: tensor = float[2] {1,2}, g: graph = b () => () {\n   }, fs: floats = [1, 2], is: ints = [1, 2], ss: strings = [], ts: tensors = [float {1}, string[1]{\"x\"}], gs: graphs = [b1 () => () {\n   }, b2 () => () {\n   }], tp: type_proto = map(int64, seq(float[N])), tps: type_protos = [opaque(ai.x,T), sparse_tensor(float[?,3])], sps: sparse_tensors = [sparse(float[1] {1}, int64[1] {0}, [2])], r: float = @alpha, u: undefined = >\n}";
        let g = parse_graph(text, "t").unwrap();
        assert_eq!(g.node[0].attribute.len(), 15);
        assert_eq!(print_graph(&g), text);
    }

    #[test]
    fn comments_and_whitespace() {
        let g = parse_graph("# a graph\ng(float x)=>(float y){y=Relu(x) # relu\n}", "t").unwrap();
        assert_eq!(g.node[0].op_type.as_deref(), Some("Relu"));
    }

    #[test]
    fn errors_have_messages() {
        let e = parse_graph("g (float[N] X, ) => () {}", "t").unwrap_err();
        assert!(e.message().starts_with("expected "), "{}", e.message());
        assert!(e.message().contains("found ')'"), "{}", e.message());
        let e = parse_graph("g () => () { y = Foo <a: int = 1.5> () }", "t").unwrap_err();
        assert!(e.message().contains("declared int"), "{}", e.message());
    }

    #[test]
    fn garbage_never_panics() {
        let src = MODEL;
        for end in 0..src.len() {
            if src.is_char_boundary(end) {
                let _ = parse_model(&src[..end], "t");
            }
        }
        let bytes = src.as_bytes();
        for i in (0..bytes.len()).step_by(3) {
            for b in [b'<', b'>', b'"', b'(', b'[', b'=', b'#', b'@', b',', b'-'] {
                let mut v = bytes.to_vec();
                v[i] = b;
                if let Ok(s) = String::from_utf8(v) {
                    let _ = parse_model(&s, "t");
                }
            }
        }
        let deep = format!(
            "g (float x) => () {{ y = Foo <t = {}float{}> () }}",
            "seq(".repeat(5000),
            ")".repeat(5000)
        );
        assert!(parse_graph(&deep, "t").is_err());
    }
}
