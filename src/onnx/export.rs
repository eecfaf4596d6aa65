//! Export: [`ir::Model`] → `ModelProto` → file, streamed (weights are written straight from
//! their memory maps, never gathered into one buffer), atomically (temp file + rename).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes};
use prost::Message;

use super::error::ExportError;
use super::proto::{self, attribute_type as at, ModelProto};
use super::tensor::{kv_to_proto, sparse_to_proto, tensor_to_proto};
use crate::ir::{verify, AttrValue, Attribute, Dim, Graph, Model, Type, ValueDef, ValueType};

/// Tensors smaller than this many bytes are never written to external data.
pub const MIN_EXTERNAL: usize = 64;

/// Protobuf's hard limit on a message: 2 GiB.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// How to write a model.
#[derive(Clone, Debug)]
pub struct SaveOptions {
    /// Write initializers of at least `threshold` bytes into a side file.
    pub external_data: Option<ExternalData>,
    /// A model whose protobuf would exceed this many bytes is written with external data even
    /// when `external_data` is `None` (default: protobuf's 2 GiB limit).
    pub inline_limit: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external_data: None,
            inline_limit: PROTOBUF_LIMIT,
        }
    }
}

/// External data settings.
#[derive(Clone, Debug)]
pub struct ExternalData {
    /// Side file name, relative to the model's folder (default: `<model file name>.data`).
    pub location: Option<String>,
    /// Tensors smaller than this stay inline (bytes).
    pub threshold: usize,
}

impl Default for ExternalData {
    fn default() -> Self {
        ExternalData {
            location: None,
            threshold: 1024,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveStats {
    /// Bytes of the `.onnx` file.
    pub model_bytes: u64,
    /// Bytes of the external data file (0 when none).
    pub external_bytes: u64,
    /// The external data file, if one was written.
    pub external_path: Option<PathBuf>,
}

/// Build the `ModelProto` for `model` (tensor data is shared, not copied).
pub fn to_proto(model: &Model) -> Result<ModelProto, ExportError> {
    verify::verify(&model.graph)?;
    Ok(ModelProto {
        ir_version: Some(model.ir_version),
        producer_name: nonempty(&model.producer_name),
        producer_version: nonempty(&model.producer_version),
        domain: nonempty(&model.domain),
        model_version: (model.model_version != 0).then_some(model.model_version),
        doc_string: nonempty(&model.doc_string),
        graph: Some(graph_to_proto(&model.graph)?),
        opset_import: model
            .opset_import
            .iter()
            .map(|o| proto::OperatorSetIdProto {
                domain: if o.domain.is_empty() && !o.domain_written {
                    None
                } else {
                    Some(o.domain.clone())
                },
                version: Some(o.version),
            })
            .collect(),
        metadata_props: kv_to_proto(&model.metadata_props),
        training_info: decode_all(&model.training_info),
        functions: decode_all(&model.functions),
        configuration: decode_all(&model.configuration),
    })
}

fn decode_all<M: Message + Default>(v: &[Bytes]) -> Vec<M> {
    v.iter().filter_map(|b| M::decode(b.clone()).ok()).collect()
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Build the `GraphProto` for `graph`: nodes in topological order (source order kept where it
/// is already topological), initializers in stored order.
pub fn graph_to_proto(graph: &Graph) -> Result<proto::GraphProto, ExportError> {
    let mut g = proto::GraphProto {
        name: nonempty(&graph.name),
        doc_string: nonempty(&graph.doc_string),
        metadata_props: kv_to_proto(&graph.metadata_props),
        quantization_annotation: graph
            .quantization_annotation
            .iter()
            .map(|(t, kv)| proto::TensorAnnotation {
                tensor_name: Some(t.clone()),
                quant_parameter_tensor_names: kv_to_proto(kv),
            })
            .collect(),
        ..Default::default()
    };
    for &v in graph.initializers() {
        let val = graph.value(v);
        match &val.def {
            ValueDef::Initializer(t) => g.initializer.push(tensor_to_proto(t, &val.name)),
            ValueDef::SparseInitializer(s) => {
                g.sparse_initializer.push(sparse_to_proto(s, &val.name))
            }
            _ => {}
        }
    }
    let info = |v: crate::ir::ValueId, ty: Option<&ValueType>| {
        let val = graph.value(v);
        proto::ValueInfoProto {
            name: Some(val.name.clone()),
            r#type: ty.map(type_to_proto),
            doc_string: nonempty(&val.doc_string),
            metadata_props: kv_to_proto(&val.metadata_props),
        }
    };
    for &v in &graph.inputs {
        let val = graph.value(v);
        g.input
            .push(info(v, val.declared.as_ref().or(val.inferred.as_ref())));
    }
    for &v in &graph.outputs {
        let val = graph.value(v);
        g.output
            .push(info(v, val.declared.as_ref().or(val.inferred.as_ref())));
    }
    for v in graph.value_info() {
        let val = graph.value(v);
        g.value_info.push(info(v, val.declared.as_ref()));
    }
    for n in graph.topo_order().map_err(verify::VerifyError::from)? {
        let node = graph.node(n);
        let name_of = |v: &Option<crate::ir::ValueId>| {
            v.map(|v| graph.value(v).name.clone()).unwrap_or_default()
        };
        g.node.push(proto::NodeProto {
            input: node.inputs().iter().map(name_of).collect(),
            output: node.outputs().iter().map(name_of).collect(),
            name: nonempty(&node.name),
            op_type: Some(node.op_type.clone()),
            domain: nonempty(&node.domain),
            overload: nonempty(&node.overload),
            attribute: node.attributes.iter().map(attribute_to_proto).collect(),
            doc_string: nonempty(&node.doc_string),
            metadata_props: kv_to_proto(&node.metadata_props),
            device_configurations: node
                .opaque
                .iter()
                .filter_map(|b| Message::decode(b.clone()).ok())
                .collect(),
        });
    }
    Ok(g)
}

/// Encode an attribute; the value field is always written, as ONNX's own tools do.
pub fn attribute_to_proto(a: &Attribute) -> proto::AttributeProto {
    let mut p = proto::AttributeProto {
        name: Some(a.name.clone()),
        doc_string: nonempty(&a.doc_string),
        ref_attr_name: nonempty(&a.ref_attr_name),
        ..Default::default()
    };
    let reference = !a.ref_attr_name.is_empty();
    let kind = match &a.value {
        AttrValue::Undefined => at::UNDEFINED,
        AttrValue::Float(f) => {
            p.f = (!reference).then_some(*f);
            at::FLOAT
        }
        AttrValue::Int(i) => {
            p.i = (!reference).then_some(*i);
            at::INT
        }
        AttrValue::String(s) => {
            p.s = (!reference).then(|| s.clone());
            at::STRING
        }
        AttrValue::Tensor(t) => {
            p.t = Some(tensor_to_proto(t, &t.name));
            at::TENSOR
        }
        AttrValue::Graph(g) => {
            p.g = Message::decode(g.encoded.clone()).ok();
            at::GRAPH
        }
        AttrValue::SparseTensor(s) => {
            p.sparse_tensor = Some(sparse_to_proto(s, &s.values.name));
            at::SPARSE_TENSOR
        }
        AttrValue::Type(t) => {
            p.tp = Some(type_to_proto(t));
            at::TYPE_PROTO
        }
        AttrValue::Floats(v) => {
            p.floats = v.clone();
            at::FLOATS
        }
        AttrValue::Ints(v) => {
            p.ints = v.clone();
            at::INTS
        }
        AttrValue::Strings(v) => {
            p.strings = v.clone();
            at::STRINGS
        }
        AttrValue::Tensors(v) => {
            p.tensors = v.iter().map(|t| tensor_to_proto(t, &t.name)).collect();
            at::TENSORS
        }
        AttrValue::Graphs(v) => {
            p.graphs = v
                .iter()
                .filter_map(|g| Message::decode(g.encoded.clone()).ok())
                .collect();
            at::GRAPHS
        }
        AttrValue::SparseTensors(v) => {
            p.sparse_tensors = v
                .iter()
                .map(|s| sparse_to_proto(s, &s.values.name))
                .collect();
            at::SPARSE_TENSORS
        }
        AttrValue::Types(v) => {
            p.type_protos = v.iter().map(type_to_proto).collect();
            at::TYPE_PROTOS
        }
    };
    p.r#type = Some(kind);
    p
}

/// Encode a value type.
pub fn type_to_proto(t: &ValueType) -> proto::TypeProto {
    use proto::type_proto as tp;
    let shape = |s: &Option<Vec<Dim>>, den: &[(usize, String)]| {
        s.as_ref().map(|dims| proto::TensorShapeProto {
            dim: dims
                .iter()
                .enumerate()
                .map(|(i, d)| proto::tensor_shape_proto::Dimension {
                    value: match d {
                        Dim::Known(v) => {
                            Some(proto::tensor_shape_proto::dimension::Value::DimValue(*v))
                        }
                        Dim::Sym(s) => Some(proto::tensor_shape_proto::dimension::Value::DimParam(
                            s.clone(),
                        )),
                        Dim::Unknown => None,
                    },
                    denotation: den.iter().find(|(a, _)| *a == i).map(|(_, d)| d.clone()),
                })
                .collect(),
        })
    };
    let boxed = |t: &Option<Box<ValueType>>| t.as_ref().map(|t| Box::new(type_to_proto(t)));
    let value = match &t.ty {
        Type::Undefined => None,
        Type::Tensor {
            elem,
            shape: s,
            dim_denotations,
        } => Some(tp::Value::TensorType(tp::Tensor {
            elem_type: Some(elem.map_or(0, |e| e.onnx_code())),
            shape: shape(s, dim_denotations),
        })),
        Type::SparseTensor {
            elem,
            shape: s,
            dim_denotations,
        } => Some(tp::Value::SparseTensorType(tp::SparseTensor {
            elem_type: Some(elem.map_or(0, |e| e.onnx_code())),
            shape: shape(s, dim_denotations),
        })),
        Type::Sequence(e) => Some(tp::Value::SequenceType(tp::Sequence {
            elem_type: boxed(e),
        })),
        Type::Optional(e) => Some(tp::Value::OptionalType(tp::Optional {
            elem_type: boxed(e),
        })),
        Type::Map { key, value } => Some(tp::Value::MapType(tp::Map {
            key_type: Some(key.map_or(0, |e| e.onnx_code())),
            value_type: boxed(value),
        })),
        Type::Opaque { domain, name } => Some(tp::Value::OpaqueType(tp::Opaque {
            domain: nonempty(domain),
            name: nonempty(name),
        })),
    };
    proto::TypeProto {
        value,
        denotation: t.denotation.clone(),
    }
}

/// Write `model` to `path`. With external data, or when the protobuf would pass 2 GiB,
/// initializers of at least the threshold go to a side file. Both files are written to temp
/// names in the target folder and renamed into place only when complete.
pub fn save(model: &Model, path: &Path, opts: &SaveOptions) -> Result<SaveStats, ExportError> {
    let mut p = to_proto(model)?;
    let mut ext = opts.external_data.clone();
    if ext.is_none() && p.encoded_len() as u64 > opts.inline_limit.min(PROTOBUF_LIMIT) {
        tracing::info!(
            "the model would pass {} bytes inline: writing external data",
            opts.inline_limit
        );
        ext = Some(ExternalData::default());
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ExportError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut stats = SaveStats {
        model_bytes: 0,
        external_bytes: 0,
        external_path: None,
    };
    let mut ext_tmp = None;
    if let Some(ext) = ext {
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let location = ext
            .location
            .clone()
            .unwrap_or_else(|| format!("{file_name}.data"));
        let ext_path = path.with_file_name(&location);
        let (tmp, file) = TempFile::create(&ext_path).map_err(io(&ext_path))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        if let Some(g) = &mut p.graph {
            for t in &mut g.initializer {
                let Some(raw) = t.raw_data.take() else {
                    continue;
                };
                if raw.len() < ext.threshold {
                    t.raw_data = Some(raw);
                    continue;
                }
                let pad = (4096 - offset % 4096) % 4096;
                w.write_all(&vec![0u8; pad as usize])
                    .map_err(io(&ext_path))?;
                offset += pad;
                w.write_all(&raw).map_err(io(&ext_path))?;
                t.data_location = Some(proto::data_location::EXTERNAL);
                t.external_data = kv_to_proto(&[
                    ("location".into(), location.clone()),
                    ("offset".into(), offset.to_string()),
                    ("length".into(), raw.len().to_string()),
                ]);
                offset += raw.len() as u64;
            }
        }
        w.flush().map_err(io(&ext_path))?;
        drop(w);
        stats.external_bytes = offset;
        stats.external_path = Some(ext_path.clone());
        ext_tmp = Some((tmp, ext_path));
    }
    let len = p.encoded_len() as u64;
    if len > PROTOBUF_LIMIT {
        return Err(ExportError::TooLarge(len));
    }
    let (tmp, file) = TempFile::create(path).map_err(io(path))?;
    let mut sink = StreamSink::new(file);
    p.encode(&mut sink).map_err(|e| ExportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    sink.finish().map_err(io(path))?;
    stats.model_bytes = len;
    if let Some((t, ext_path)) = ext_tmp {
        t.persist(&ext_path).map_err(io(&ext_path))?;
    }
    tmp.persist(path).map_err(io(path))?;
    Ok(stats)
}

/// Encode `model` into memory (for tests and small models).
pub fn to_bytes(model: &Model) -> Result<Vec<u8>, ExportError> {
    Ok(to_proto(model)?.encode_to_vec())
}

/// A file written under a temporary name next to its destination; removed unless persisted.
struct TempFile {
    path: PathBuf,
    done: bool,
}

impl TempFile {
    fn create(dest: &Path) -> std::io::Result<(TempFile, File)> {
        let name = dest
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        // A leftover of a killed run with the same pid: replace it. The file is created new
        // and never truncated: truncating an existing ext4 file to 0 marks it for a forced
        // writeback on close (auto_da_alloc), which costs ~0.04 s per 500 MB.
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((TempFile { path, done: false }, file))
    }
    fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, dest)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A [`BufMut`] that streams into a file through a fixed buffer; large slices bypass it.
/// I/O errors are kept and reported by [`StreamSink::finish`].
struct StreamSink {
    file: File,
    buf: Vec<u8>,
    error: Option<std::io::Error>,
}

const SINK_CAP: usize = 1 << 20;

impl StreamSink {
    fn new(file: File) -> StreamSink {
        StreamSink {
            file,
            buf: Vec::with_capacity(SINK_CAP),
            error: None,
        }
    }
    fn flush_buf(&mut self) {
        if self.error.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.file.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }
    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buf();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.file.flush()
    }
}

// SAFETY: `chunk_mut` hands out the spare capacity of `buf`; `advance_mut` only moves the
// length over bytes the caller has initialised, as the trait requires.
unsafe impl BufMut for StreamSink {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.buf.len()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity(), "advance_mut past the buffer");
        // SAFETY: the caller initialised `cnt` bytes of the spare capacity.
        unsafe { self.buf.set_len(len) };
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        let spare = self.buf.spare_capacity_mut();
        bytes::buf::UninitSlice::uninit(spare)
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SINK_CAP / 4 {
            self.flush_buf();
            if self.error.is_none() {
                // Bytes that are a range of a mapped input file are copied file to file.
                let copied = match super::source::locate(src) {
                    Some((file, offset)) => {
                        super::source::copy_range(&file, offset, &self.file, src.len())
                    }
                    None => Ok(false),
                };
                let result = match copied {
                    Ok(true) => Ok(()),
                    Ok(false) => self.file.write_all(src),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    self.error = Some(e);
                }
            }
        } else {
            if self.buf.len() + src.len() > self.buf.capacity() {
                self.flush_buf();
            }
            self.buf.extend_from_slice(src);
        }
    }

    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let n = {
                let c = src.chunk();
                self.put_slice(c);
                c.len()
            };
            src.advance(n);
        }
    }
}
