//! Seeded inputs built from a model's graph inputs.
//!
//! The rules follow `tests/python/judge_run.py`, so that hcc and the external judge describe the
//! same experiment:
//! - symbolic or unknown dims: a name containing `batch`, or position 0 of a name without
//!   `seq`, is the batch size; every other one is the sequence length; known dims are kept;
//! - the token-id input (an int input named like `input_ids`, else the int input that feeds a
//!   `Gather` of a 2-D table): uniform in `[0, vocab)`, with vocab the first dim of that table;
//! - `*mask*` inputs: ones; `token_type` / `segment` inputs: zeros; `position*` inputs: `0..n`
//!   along the last axis; other int inputs: zeros; bool inputs: true;
//! - float inputs: standard normal.

use std::collections::HashSet;

use crate::ir::{AttrValue, DType, Dim, Graph, Port, ValueId};

/// How an input tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fill {
    /// Token ids, uniform in `[0, vocab)`.
    TokenIds,
    /// All ones (attention masks).
    Ones,
    /// All zeros (token type ids, other int inputs).
    Zeros,
    /// `0, 1, …, n-1` along the last axis (position ids).
    Positions,
    /// Standard normal samples (float inputs).
    Normal,
    /// All true (bool inputs).
    True,
}

/// One graph input of the original model: its name, type, concrete shape and how it is filled.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputSpec {
    /// The graph input's name.
    pub name: String,
    /// Element type.
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: DType,
    /// Concrete shape (symbolic dims resolved to batch / sequence length).
    pub shape: Vec<usize>,
    /// How the values are chosen.
    pub fill: Fill,
}

fn ser_dtype<S: serde::Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

/// The inputs of one experiment: one spec per graph input and the vocabulary size, if any.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputPlan {
    /// One entry per graph input, in graph order.
    pub specs: Vec<InputSpec>,
    /// Vocabulary size: the first dim of the token-id input's `Gather` table (or the override).
    pub vocab: Option<usize>,
}

/// Element values of one input, before conversion to its element type.
#[derive(Clone, Debug, PartialEq)]
pub enum InputData {
    /// Integer values (for int inputs).
    Int(Vec<i64>),
    /// Float values (for float inputs; rounded to the input's type when used).
    Float(Vec<f64>),
    /// Boolean values.
    Bool(Vec<bool>),
}

/// One concrete input tensor.
#[derive(Clone, Debug)]
pub struct InputTensor {
    /// The spec it was made from.
    pub spec: InputSpec,
    /// The values, row-major.
    pub data: InputData,
}

/// Why a plan could not be made (the caller adds the file name).
#[derive(Debug)]
pub(crate) enum PlanError {
    Unsupported(String),
    NoVocab(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Unsupported(s) => f.write_str(s),
            PlanError::NoVocab(name) => write!(
                f,
                "token-id input '{name}' feeds no Gather of a constant 2-D table, so the \
                 vocabulary size is unknown; pass it explicitly (--vocab)"
            ),
        }
    }
}

/// Ops through which token ids keep their meaning on the way to the embedding `Gather`.
const ALIAS_OPS: [&str; 6] = [
    "Cast",
    "Identity",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Float,
    Bool,
    Mask,
    Zeros,
    Positions,
    Int,
}

fn role(name: &str, dtype: DType) -> Role {
    let n = name.to_ascii_lowercase();
    if dtype == DType::Bool {
        Role::Bool
    } else if dtype.is_float() {
        Role::Float
    } else if n.contains("mask") {
        Role::Mask
    } else if n.contains("token_type") || n.contains("segment") {
        Role::Zeros
    } else if n.contains("position") {
        Role::Positions
    } else {
        Role::Int
    }
}

/// The dims of the constant `v` (an initializer or a `Constant` node's value), looking through
/// `Identity`/`Cast`.
fn constant_dims(graph: &Graph, v: ValueId, depth: usize) -> Option<Vec<i64>> {
    if let Some(t) = graph.constant(v) {
        return Some(t.dims.clone());
    }
    let (n, _) = graph.producer(v)?;
    let node = graph.node(n);
    match node.op_type.as_str() {
        "Constant" => match node.attr("value") {
            Some(AttrValue::Tensor(t)) => Some(t.dims.clone()),
            _ => None,
        },
        "Identity" | "Cast" if depth < 4 => constant_dims(graph, node.input(0)?, depth + 1),
        _ => None,
    }
}

/// The first dim of the first 2-D `Gather` table indexed by `ids` (breadth first through
/// [`ALIAS_OPS`]).
fn gather_vocab(graph: &Graph, ids: ValueId) -> Option<usize> {
    let mut frontier = vec![ids];
    let mut seen: HashSet<ValueId> = frontier.iter().copied().collect();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for &v in &frontier {
            for &(n, port) in graph.value(v).uses() {
                let node = graph.node(n);
                if node.op_type == "Gather" && port == Port::Input(1) && node.domain.is_empty() {
                    if let Some(dims) = node.input(0).and_then(|t| constant_dims(graph, t, 0)) {
                        if dims.len() == 2 && dims[0] > 0 {
                            return usize::try_from(dims[0]).ok();
                        }
                    }
                }
                if ALIAS_OPS.contains(&node.op_type.as_str()) && port == Port::Input(0) {
                    for o in node.outputs().iter().flatten() {
                        if seen.insert(*o) {
                            next.push(*o);
                        }
                    }
                }
            }
        }
        frontier = next;
    }
    None
}

/// Plans the inputs of `graph` (the original model's): concrete shapes and fills.
pub(crate) fn plan(
    graph: &Graph,
    batch: usize,
    seq_len: usize,
    vocab_override: Option<usize>,
) -> Result<InputPlan, PlanError> {
    struct Raw {
        id: ValueId,
        name: String,
        dtype: DType,
        shape: Vec<usize>,
        role: Role,
    }
    let mut raw = Vec::new();
    for &v in &graph.inputs {
        let value = graph.value(v);
        if value.constant().is_some() {
            continue; // an initializer also listed as an input: not fed
        }
        let ty = value.ty().ok_or_else(|| {
            PlanError::Unsupported(format!("graph input '{}' has no type", value.name))
        })?;
        let dtype = ty.elem().ok_or_else(|| {
            PlanError::Unsupported(format!(
                "graph input '{}' is not a tensor with a known element type ({ty})",
                value.name
            ))
        })?;
        let dims = ty.shape().ok_or_else(|| {
            PlanError::Unsupported(format!(
                "graph input '{}' has unknown rank ({ty})",
                value.name
            ))
        })?;
        let shape = dims
            .iter()
            .enumerate()
            .map(|(k, d)| resolve_dim(k, d, batch, seq_len))
            .collect();
        raw.push(Raw {
            id: v,
            name: value.name.clone(),
            dtype,
            shape,
            role: role(&value.name, dtype),
        });
    }

    // The token-id input: named like input_ids, else the int input that reaches a 2-D Gather.
    let ints: Vec<&Raw> = raw.iter().filter(|r| r.role == Role::Int).collect();
    let mut ids: Option<(ValueId, Option<usize>)> = ints
        .iter()
        .find(|r| r.name.to_ascii_lowercase().contains("input_ids"))
        .map(|r| (r.id, gather_vocab(graph, r.id)));
    if ids.is_none() {
        ids = ints
            .iter()
            .find_map(|r| gather_vocab(graph, r.id).map(|vocab| (r.id, Some(vocab))));
    }
    let vocab = match ids {
        Some((id, found)) => match vocab_override.or(found) {
            Some(v) => Some(v),
            None => return Err(PlanError::NoVocab(graph.value(id).name.clone())),
        },
        None => vocab_override,
    };

    let specs = raw
        .into_iter()
        .map(|r| {
            let fill = match r.role {
                Role::Float => Fill::Normal,
                Role::Bool => Fill::True,
                Role::Mask => Fill::Ones,
                Role::Zeros => Fill::Zeros,
                Role::Positions => Fill::Positions,
                Role::Int if ids.is_some_and(|(id, _)| id == r.id) => Fill::TokenIds,
                Role::Int => Fill::Zeros,
            };
            InputSpec {
                name: r.name,
                dtype: r.dtype,
                shape: r.shape,
                fill,
            }
        })
        .collect();
    Ok(InputPlan { specs, vocab })
}

fn resolve_dim(k: usize, d: &Dim, batch: usize, seq_len: usize) -> usize {
    match d {
        Dim::Known(v) if *v > 0 => *v as usize,
        Dim::Sym(s) => {
            let s = s.to_ascii_lowercase();
            if s.contains("batch") || (k == 0 && !s.contains("seq")) {
                batch
            } else {
                seq_len
            }
        }
        _ if k == 0 => batch,
        _ => seq_len,
    }
}

/// A SplitMix64 stream: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6863_635f_6576_616c) // "hcc_eval"
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (Lemire's multiply-shift; the bias is below 2^-40 for any vocab).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl InputPlan {
    /// The input tensors for `seed`: the same plan and seed give the same values everywhere.
    pub fn generate(&self, seed: u64) -> Vec<InputTensor> {
        let mut rng = Rng::new(seed);
        self.specs
            .iter()
            .map(|spec| {
                let n: usize = spec.shape.iter().product();
                let data = match spec.fill {
                    Fill::TokenIds => {
                        let vocab = self.vocab.unwrap_or(1).max(1) as u64;
                        InputData::Int((0..n).map(|_| rng.below(vocab) as i64).collect())
                    }
                    Fill::Ones if spec.dtype.is_float() => InputData::Float(vec![1.0; n]),
                    Fill::Ones => InputData::Int(vec![1; n]),
                    Fill::Zeros if spec.dtype.is_float() => InputData::Float(vec![0.0; n]),
                    Fill::Zeros => InputData::Int(vec![0; n]),
                    Fill::Positions => {
                        let last = spec.shape.last().copied().unwrap_or(1).max(1);
                        InputData::Int((0..n).map(|i| (i % last) as i64).collect())
                    }
                    Fill::Normal => InputData::Float((0..n).map(|_| rng.normal()).collect()),
                    Fill::True => InputData::Bool(vec![true; n]),
                };
                InputTensor {
                    spec: spec.clone(),
                    data,
                }
            })
            .collect()
    }
}

impl InputTensor {
    /// The tensor as a NumPy `.npy` file (format 1.0, little-endian, C order) in its element
    /// type, so an external judge can read exactly these inputs. `None` for element types NumPy
    /// this writer does not cover (float16, bfloat16, float8, 4-bit, complex, string).
    pub fn to_npy(&self) -> Option<Vec<u8>> {
        use DType::*;
        let (descr, body): (&str, Vec<u8>) = match (&self.data, self.spec.dtype) {
            (InputData::Float(v), F32) => ("<f4", le(v.iter().map(|&x| x as f32))),
            (InputData::Float(v), F64) => ("<f8", le(v.iter().copied())),
            (InputData::Int(v), I64) => ("<i8", le(v.iter().copied())),
            (InputData::Int(v), I32) => ("<i4", le(v.iter().map(|&x| x as i32))),
            (InputData::Int(v), I16) => ("<i2", le(v.iter().map(|&x| x as i16))),
            (InputData::Int(v), I8) => ("|i1", le(v.iter().map(|&x| x as i8))),
            (InputData::Int(v), U64) => ("<u8", le(v.iter().map(|&x| x as u64))),
            (InputData::Int(v), U32) => ("<u4", le(v.iter().map(|&x| x as u32))),
            (InputData::Int(v), U16) => ("<u2", le(v.iter().map(|&x| x as u16))),
            (InputData::Int(v), U8) => ("|u1", le(v.iter().map(|&x| x as u8))),
            (InputData::Bool(v), Bool) => ("|b1", v.iter().map(|&b| b as u8).collect()),
            _ => return None,
        };
        let shape = match self.spec.shape.as_slice() {
            [] => "()".to_string(),
            [d] => format!("({d},)"),
            s => format!(
                "({})",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // magic (6) + version (2) + header length (2) + header, padded to 64 with a final '\n'.
        let unpadded = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + body.len());
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }
}

trait LeBytes {
    fn put(self, out: &mut Vec<u8>);
}

macro_rules! le_bytes {
    ($($t:ty),*) => {$(
        impl LeBytes for $t {
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
le_bytes!(f32, f64, i64, i32, i16, i8, u64, u32, u16, u8);

fn le<T: LeBytes>(it: impl Iterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for x in it {
        x.put(&mut out);
    }
    out
}
