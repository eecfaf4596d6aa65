//! `hcc inspect`: what a model holds, and the weight sharing a compressor must know.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::ir::{DType, Graph, Model, Port, Tensor, TensorData, ValueDef, ValueId};

/// Everything `hcc inspect` reports. Field names are the JSON keys.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub producer: String,
    pub ir_version: i64,
    pub opsets: Vec<(String, i64)>,
    pub graph: String,
    pub inputs: Vec<Signature>,
    pub outputs: Vec<Signature>,
    pub nodes: usize,
    /// Node count per operator (`domain::Op` for non-default domains), most frequent first.
    pub ops: Vec<(String, usize)>,
    /// Initializer parameters and stored bytes, total and per dtype.
    pub params: u64,
    pub bytes: u64,
    pub by_dtype: Vec<DTypeTotal>,
    /// Tensors held inside `Constant` nodes (not counted in `params`).
    pub constant_node_params: u64,
    pub largest: Vec<TensorSummary>,
    pub sharing: Sharing,
}

/// A graph input or output.
#[derive(Clone, Debug, Serialize)]
pub struct Signature {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

/// Totals for one element type.
#[derive(Clone, Debug, Serialize)]
pub struct DTypeTotal {
    pub dtype: DType,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

/// One initializer.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub params: u64,
    pub bytes: u64,
}

/// Weight sharing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sharing {
    /// Initializers of at least [`SHARED_MIN_BYTES`] read by more than one node (the readers
    /// are followed through `Transpose`, `Identity` and `Cast`, so `Gather(E)` +
    /// `MatMul(x, Transpose(E))` shows as two readers).
    pub shared: Vec<SharedTensor>,
    /// How many smaller shared initializers (scalars, shape constants) were left out of `shared`.
    pub small_shared: usize,
    /// Groups of initializers with identical dtype, shape and bytes (stored more than once).
    pub duplicates: Vec<Vec<String>>,
    /// Pairs (a, b) of 2-D initializers where b is stored as the exact transpose of a.
    pub transposed: Vec<(String, String)>,
}

/// An initializer with several readers.
#[derive(Clone, Debug, Serialize)]
pub struct SharedTensor {
    pub name: String,
    pub bytes: u64,
    /// Readers as `Op(node name)`, with the view ops followed, e.g. `Transpose→MatMul(lm_head)`.
    pub readers: Vec<String>,
}

/// Shared initializers smaller than this are counted, not listed: a scalar read by every
/// layer is not weight sharing a compressor cares about.
pub const SHARED_MIN_BYTES: u64 = 1024;

/// Inspect a model. Reads tensor data only where sharing detection needs it (candidates with
/// equal sizes or transposed shapes).
pub fn inspect(model: &Model, largest: usize) -> Inspection {
    let g = &model.graph;
    let ty = |v: ValueId| {
        g.value(v)
            .ty()
            .map_or_else(|| "?".to_string(), |t| t.to_string())
    };
    let mut ops: HashMap<String, usize> = HashMap::new();
    let mut constant_node_params = 0u64;
    for n in g.node_ids() {
        let node = g.node(n);
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}::{}", node.domain, node.op_type)
        };
        *ops.entry(key).or_default() += 1;
        if node.op_type == "Constant" {
            if let Some(crate::ir::AttrValue::Tensor(t)) = node.attr("value") {
                constant_node_params += t.num_elements() as u64;
            }
        }
    }
    let mut ops: Vec<(String, usize)> = ops.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let mut tensors: Vec<(ValueId, &Tensor)> = Vec::new();
    for &v in g.initializers() {
        match &g.value(v).def {
            ValueDef::Initializer(t) => tensors.push((v, t)),
            ValueDef::SparseInitializer(s) => tensors.push((v, &s.values)),
            _ => {}
        }
    }
    let mut by: BTreeMap<DType, DTypeTotal> = BTreeMap::new();
    for (_, t) in &tensors {
        let e = by.entry(t.dtype).or_insert(DTypeTotal {
            dtype: t.dtype,
            tensors: 0,
            params: 0,
            bytes: 0,
        });
        e.tensors += 1;
        e.params += t.num_elements() as u64;
        e.bytes += t.byte_len() as u64;
    }
    let by_dtype: Vec<DTypeTotal> = by.into_values().collect();
    let mut big: Vec<TensorSummary> = tensors
        .iter()
        .map(|(v, t)| TensorSummary {
            name: g.value(*v).name.clone(),
            dtype: t.dtype,
            shape: t.dims.clone(),
            params: t.num_elements() as u64,
            bytes: t.byte_len() as u64,
        })
        .collect();
    big.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    big.truncate(largest);

    Inspection {
        producer: [
            model.producer_name.as_str(),
            model.producer_version.as_str(),
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" "),
        ir_version: model.ir_version,
        opsets: model
            .opset_import
            .iter()
            .map(|o| {
                (
                    if o.domain.is_empty() {
                        "ai.onnx".into()
                    } else {
                        o.domain.clone()
                    },
                    o.version,
                )
            })
            .collect(),
        graph: g.name.clone(),
        inputs: g
            .inputs
            .iter()
            .filter(|&&v| !matches!(g.value(v).def, ValueDef::Initializer(_)))
            .map(|&v| Signature {
                name: g.value(v).name.clone(),
                ty: ty(v),
            })
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|&v| Signature {
                name: g.value(v).name.clone(),
                ty: ty(v),
            })
            .collect(),
        nodes: g.node_count(),
        ops,
        params: by_dtype.iter().map(|d| d.params).sum(),
        bytes: by_dtype.iter().map(|d| d.bytes).sum(),
        by_dtype,
        constant_node_params,
        largest: big,
        sharing: sharing(g, &tensors),
    }
}

/// The readers of `v`, following view ops (Transpose, Identity, Cast, Reshape of a constant).
fn readers(g: &Graph, v: ValueId, prefix: &str, out: &mut Vec<String>, depth: usize) {
    for &(n, port) in g.value(v).uses() {
        let node = g.node(n);
        let label = if node.name.is_empty() {
            node.op_type.clone()
        } else {
            format!("{}({})", node.op_type, node.name)
        };
        let view = matches!(node.op_type.as_str(), "Transpose" | "Identity" | "Cast")
            && port == Port::Input(0);
        if view && depth < 4 {
            if let Some(o) = node.output(0) {
                let before = out.len();
                readers(g, o, &format!("{prefix}{}→", node.op_type), out, depth + 1);
                if out.len() > before {
                    continue;
                }
            }
        }
        out.push(format!("{prefix}{label}"));
    }
}

fn sharing(g: &Graph, tensors: &[(ValueId, &Tensor)]) -> Sharing {
    let mut s = Sharing::default();
    for &(v, t) in tensors {
        let mut r = Vec::new();
        readers(g, v, "", &mut r, 0);
        if r.len() > 1 && (t.byte_len() as u64) < SHARED_MIN_BYTES {
            s.small_shared += 1;
        } else if r.len() > 1 {
            s.shared.push(SharedTensor {
                name: g.value(v).name.clone(),
                bytes: t.byte_len() as u64,
                readers: r,
            });
        }
    }
    // Duplicates: bucket by (dtype, dims, byte length); digest only inside buckets of 2+.
    type Bucket<'a> = Vec<(ValueId, &'a Tensor)>;
    let mut buckets: HashMap<(DType, Vec<i64>, usize), Bucket> = HashMap::new();
    for &(v, t) in tensors {
        if t.num_elements() > 1 {
            buckets
                .entry((t.dtype, t.dims.clone(), t.byte_len()))
                .or_default()
                .push((v, t));
        }
    }
    let mut dups: Vec<Vec<String>> = Vec::new();
    for (_, members) in buckets {
        if members.len() < 2 {
            continue;
        }
        let mut by_digest: HashMap<u64, Vec<(ValueId, &Tensor)>> = HashMap::new();
        for (v, t) in members {
            by_digest.entry(t.digest()).or_default().push((v, t));
        }
        for (_, group) in by_digest {
            // Confirm byte equality against the first member (digests can collide).
            let first = group[0].1;
            let names: Vec<String> = group
                .iter()
                .filter(|(_, t)| t.same_content(first))
                .map(|(v, _)| g.value(*v).name.clone())
                .collect();
            if names.len() > 1 {
                dups.push(names);
            }
        }
    }
    dups.sort();
    s.duplicates = dups;

    // Transposed copies: 2-D tensors of the same dtype with swapped dims.
    let two_d: Vec<(ValueId, &Tensor)> = tensors
        .iter()
        .copied()
        .filter(|(_, t)| {
            t.dims.len() == 2 && t.dtype.bits().is_some_and(|b| b >= 8) && t.num_elements() > 1
        })
        .collect();
    for (i, &(va, a)) in two_d.iter().enumerate() {
        for &(vb, b) in &two_d[i + 1..] {
            if a.dtype == b.dtype
                && a.dims[0] == b.dims[1]
                && a.dims[1] == b.dims[0]
                && is_transpose(a, b)
            {
                s.transposed
                    .push((g.value(va).name.clone(), g.value(vb).name.clone()));
            }
        }
    }
    s
}

/// Whether 2-D `b` holds exactly the transpose of 2-D `a` (bytewise per element).
pub fn is_transpose(a: &Tensor, b: &Tensor) -> bool {
    let (TensorData::Raw(x), TensorData::Raw(y)) = (&a.data, &b.data) else {
        return false;
    };
    let Some(bits) = a.dtype.bits() else {
        return false;
    };
    let es = bits / 8;
    let (r, c) = (a.dims[0] as usize, a.dims[1] as usize);
    if x.len() != r * c * es || y.len() != x.len() {
        return false;
    }
    // a[i][j] == b[j][i]; scan row-blocks of a so mismatches exit early.
    for i in 0..r {
        for j in 0..c {
            let p = (i * c + j) * es;
            let q = (j * r + i) * es;
            if x[p..p + es] != y[q..q + es] {
                return false;
            }
        }
    }
    true
}

/// Human-readable text of an inspection.
pub fn render(i: &Inspection) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "producer     {}",
        if i.producer.is_empty() {
            "(none)"
        } else {
            &i.producer
        }
    );
    let opsets: Vec<String> = i.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    let _ = writeln!(
        o,
        "ir_version   {}    opsets: {}",
        i.ir_version,
        opsets.join(", ")
    );
    let _ = writeln!(
        o,
        "graph        {}    {} nodes",
        if i.graph.is_empty() {
            "(unnamed)"
        } else {
            &i.graph
        },
        i.nodes
    );
    let _ = writeln!(o, "\ninputs");
    for s in &i.inputs {
        let _ = writeln!(o, "  {:<32} {}", s.name, s.ty);
    }
    let _ = writeln!(o, "outputs");
    for s in &i.outputs {
        let _ = writeln!(o, "  {:<32} {}", s.name, s.ty);
    }
    let _ = writeln!(o, "\nops");
    for chunk in i.ops.chunks(4) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(op, n)| format!("{op:<20}{n:>6}"))
            .collect();
        let _ = writeln!(o, "  {}", line.join("   "));
    }
    let _ = writeln!(
        o,
        "\nparameters   {} ({})    stored {}",
        i.params,
        human_count(i.params),
        human_bytes(i.bytes)
    );
    for d in &i.by_dtype {
        let _ = writeln!(
            o,
            "  {:<10} {:>5} tensors {:>14} params {:>12}",
            d.dtype.name(),
            d.tensors,
            d.params,
            human_bytes(d.bytes)
        );
    }
    if i.constant_node_params > 0 {
        let _ = writeln!(
            o,
            "  (+ {} elements in Constant nodes)",
            i.constant_node_params
        );
    }
    let _ = writeln!(o, "\nlargest initializers");
    for t in &i.largest {
        let _ = writeln!(
            o,
            "  {:<40} {:<8} {:<18} {:>12}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            human_bytes(t.bytes)
        );
    }
    let _ = writeln!(o, "\nweight sharing");
    if i.sharing.shared.is_empty()
        && i.sharing.duplicates.is_empty()
        && i.sharing.transposed.is_empty()
    {
        let _ = writeln!(o, "  none");
    }
    if i.sharing.small_shared > 0 {
        let _ = writeln!(
            o,
            "  ({} small constants under {} B are read by several nodes)",
            i.sharing.small_shared, SHARED_MIN_BYTES
        );
    }
    for s in &i.sharing.shared {
        let shown: Vec<&str> = s.readers.iter().take(4).map(String::as_str).collect();
        let more = if s.readers.len() > 4 {
            format!(" and {} more", s.readers.len() - 4)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  shared      {} ({}) read by {}{more}",
            s.name,
            human_bytes(s.bytes),
            shown.join(", ")
        );
    }
    for d in &i.sharing.duplicates {
        let _ = writeln!(o, "  duplicate   {}", d.join(" = "));
    }
    for (a, b) in &i.sharing.transposed {
        let _ = writeln!(o, "  transposed  {b} = transpose({a})");
    }
    o
}

/// `124.4M`, `23.7k`.
pub fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// `474.7 MiB`.
pub fn human_bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.2} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.1} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{n} B")
    }
}
