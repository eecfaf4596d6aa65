//! Conversion of tensors between `TensorProto` and [`ir::Tensor`](crate::ir::Tensor).

use std::path::Path;

use bytes::Bytes;

use super::error::ImportError;
use super::proto::{self, data_location, TensorProto};
use crate::ir::{num_elements, DType, Encoding, SparseTensor, Tensor, TensorData};

/// Where external data is resolved: the model's folder, and mapped files by name.
pub trait ExternalResolver {
    /// The bytes `[offset, offset+length)` of `location`, relative to the model's folder.
    fn read(
        &self,
        tensor: &str,
        location: &str,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Bytes, ImportError>;
}

/// A resolver for models with no external data: any reference is an error.
pub struct NoExternal;

impl ExternalResolver for NoExternal {
    fn read(
        &self,
        tensor: &str,
        location: &str,
        _: u64,
        _: Option<u64>,
    ) -> Result<Bytes, ImportError> {
        Err(ImportError::ExternalData {
            tensor: tensor.to_string(),
            detail: format!("'{location}' cannot be resolved (the model was not read from a file)"),
        })
    }
}

/// Decode a `TensorProto` into an IR tensor. Raw and external data are sliced, not copied.
/// `name` is used in error messages.
pub fn tensor_from_proto(
    t: &TensorProto,
    resolver: &dyn ExternalResolver,
) -> Result<Tensor, ImportError> {
    let name = t.name.clone().unwrap_or_default();
    let code = t.data_type.unwrap_or(0);
    let dtype = DType::from_onnx(code).ok_or_else(|| ImportError::UnknownDType {
        tensor: name.clone(),
        code,
    })?;
    let bad = |detail: String| ImportError::BadTensor {
        tensor: name.clone(),
        detail,
    };
    let n = num_elements(&t.dims).ok_or_else(|| bad(format!("invalid dims {:?}", t.dims)))?;
    let mut encoding = Encoding::Raw;
    let data = if t.data_location == Some(data_location::EXTERNAL) {
        if dtype == DType::String {
            return Err(bad("string tensors cannot use external data".into()));
        }
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in &t.external_data {
            let v = e.value.as_deref().unwrap_or("");
            match e.key.as_deref().unwrap_or("") {
                "location" => location = Some(v.to_string()),
                "offset" => {
                    offset = v.parse().map_err(|_| ImportError::ExternalData {
                        tensor: name.clone(),
                        detail: format!("offset '{v}' is not a number"),
                    })?
                }
                "length" => {
                    length = Some(v.parse().map_err(|_| ImportError::ExternalData {
                        tensor: name.clone(),
                        detail: format!("length '{v}' is not a number"),
                    })?)
                }
                _ => {}
            }
        }
        let location = location.ok_or_else(|| ImportError::ExternalData {
            tensor: name.clone(),
            detail: "has no 'location'".into(),
        })?;
        if location == super::text::ELIDED_LOCATION {
            return Err(ImportError::BadTensor {
                tensor: name.clone(),
                detail: "its values were elided to a digest when the model was printed as text; \
                         only tensors with at most 16 elements can be read back from text"
                    .into(),
            });
        }
        TensorData::Raw(resolver.read(&name, &location, offset, length)?)
    } else if let Some(raw) = &t.raw_data {
        if dtype == DType::String {
            return Err(bad("string tensors cannot use raw_data".into()));
        }
        TensorData::Raw(raw.clone())
    } else if dtype == DType::String {
        TensorData::Strings(t.string_data.clone())
    } else {
        let typed = typed_to_raw(t, dtype, n).map_err(bad)?;
        if has_typed_data(t) {
            encoding = Encoding::Typed;
        }
        TensorData::Raw(typed)
    };
    let tensor = Tensor {
        dtype,
        dims: t.dims.clone(),
        data,
        encoding,
        name,
        doc_string: t.doc_string.clone().unwrap_or_default(),
        metadata_props: kv_from_proto(&t.metadata_props),
        segment: t
            .segment
            .as_ref()
            .map(|s| (s.begin.unwrap_or(0), s.end.unwrap_or(0))),
    };
    crate::ir::verify::check_tensor(&tensor.name, &tensor).map_err(|e| ImportError::BadTensor {
        tensor: tensor.name.clone(),
        detail: match e {
            crate::ir::verify::VerifyError::DataLength {
                expected, found, ..
            } => format!(
                "{}{:?} needs {expected} bytes of data, the file holds {found}",
                tensor.dtype, tensor.dims
            ),
            other => other.to_string(),
        },
    })?;
    Ok(tensor)
}

fn has_typed_data(t: &TensorProto) -> bool {
    !(t.float_data.is_empty()
        && t.int32_data.is_empty()
        && t.int64_data.is_empty()
        && t.double_data.is_empty()
        && t.uint64_data.is_empty())
}

/// Convert the typed fields to `raw_data` layout.
fn typed_to_raw(t: &TensorProto, dtype: DType, n: usize) -> Result<Bytes, String> {
    use DType::*;
    let mut out: Vec<u8> = Vec::new();
    let wrong = |field: &str, len: usize| {
        format!(
            "{field} holds {len} values, expected {n} for {dtype}{:?}",
            t.dims
        )
    };
    match dtype {
        F32 | C64 => {
            let want = if dtype == C64 { 2 * n } else { n };
            if t.float_data.len() != want {
                return Err(wrong("float_data", t.float_data.len()));
            }
            out.extend(t.float_data.iter().flat_map(|v| v.to_le_bytes()));
        }
        F64 | C128 => {
            let want = if dtype == C128 { 2 * n } else { n };
            if t.double_data.len() != want {
                return Err(wrong("double_data", t.double_data.len()));
            }
            out.extend(t.double_data.iter().flat_map(|v| v.to_le_bytes()));
        }
        I64 => {
            if t.int64_data.len() != n {
                return Err(wrong("int64_data", t.int64_data.len()));
            }
            out.extend(t.int64_data.iter().flat_map(|v| v.to_le_bytes()));
        }
        U32 | U64 => {
            if t.uint64_data.len() != n {
                return Err(wrong("uint64_data", t.uint64_data.len()));
            }
            for &v in &t.uint64_data {
                if dtype == U32 {
                    out.extend((v as u32).to_le_bytes());
                } else {
                    out.extend(v.to_le_bytes());
                }
            }
        }
        I32 => {
            if t.int32_data.len() != n {
                return Err(wrong("int32_data", t.int32_data.len()));
            }
            out.extend(t.int32_data.iter().flat_map(|v| v.to_le_bytes()));
        }
        I16 | U16 | F16 | BF16 => {
            if t.int32_data.len() != n {
                return Err(wrong("int32_data", t.int32_data.len()));
            }
            out.extend(t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()));
        }
        I8 | U8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => {
            if t.int32_data.len() != n {
                return Err(wrong("int32_data", t.int32_data.len()));
            }
            out.extend(t.int32_data.iter().map(|&v| v as u8));
        }
        I4 | U4 | F4E2M1 => {
            // Two elements per int32 value, low nibble first; the same packing as raw_data.
            let want = n.div_ceil(2);
            if t.int32_data.len() != want {
                return Err(wrong("int32_data", t.int32_data.len()));
            }
            out.extend(t.int32_data.iter().map(|&v| v as u8));
        }
        I2 | U2 => {
            let want = n.div_ceil(4);
            if t.int32_data.len() != want {
                return Err(wrong("int32_data", t.int32_data.len()));
            }
            out.extend(t.int32_data.iter().map(|&v| v as u8));
        }
        String => unreachable!("strings are handled by the caller"),
    }
    Ok(Bytes::from(out))
}

/// Encode an IR tensor as a `TensorProto` named `name`, with its data inline (raw or typed, as
/// the tensor's encoding says).
pub fn tensor_to_proto(t: &Tensor, name: &str) -> TensorProto {
    let mut p = TensorProto {
        dims: t.dims.clone(),
        data_type: Some(t.dtype.onnx_code()),
        name: (!name.is_empty()).then(|| name.to_string()),
        doc_string: (!t.doc_string.is_empty()).then(|| t.doc_string.clone()),
        metadata_props: kv_to_proto(&t.metadata_props),
        segment: t.segment.map(|(b, e)| proto::tensor_proto::Segment {
            begin: Some(b),
            end: Some(e),
        }),
        ..TensorProto::default()
    };
    match &t.data {
        TensorData::Strings(s) => p.string_data = s.clone(),
        TensorData::Raw(b) => {
            if t.encoding == Encoding::Typed {
                raw_to_typed(&mut p, t.dtype, b);
            } else {
                p.raw_data = Some(b.clone());
            }
        }
    }
    p
}

fn raw_to_typed(p: &mut TensorProto, dtype: DType, b: &[u8]) {
    use DType::*;
    fn le<const N: usize>(c: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    }
    match dtype {
        F32 | C64 => {
            p.float_data = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(le(c)))
                .collect()
        }
        F64 | C128 => {
            p.double_data = b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(le(c)))
                .collect()
        }
        I64 => {
            p.int64_data = b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(le(c)))
                .collect()
        }
        U64 => {
            p.uint64_data = b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(le(c)))
                .collect()
        }
        U32 => {
            p.uint64_data = b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(le(c)) as u64)
                .collect()
        }
        I32 => {
            p.int32_data = b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(le(c)))
                .collect()
        }
        I16 => {
            p.int32_data = b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes(le(c)) as i32)
                .collect()
        }
        U16 | F16 | BF16 => {
            p.int32_data = b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(le(c)) as i32)
                .collect()
        }
        I8 => p.int32_data = b.iter().map(|&v| v as i8 as i32).collect(),
        _ => p.int32_data = b.iter().map(|&v| v as i32).collect(),
    }
}

/// Decode a `SparseTensorProto`.
pub fn sparse_from_proto(
    s: &proto::SparseTensorProto,
    resolver: &dyn ExternalResolver,
) -> Result<SparseTensor, ImportError> {
    let values = s.values.as_ref().ok_or_else(|| ImportError::BadTensor {
        tensor: String::new(),
        detail: "sparse tensor without values".into(),
    })?;
    let values = tensor_from_proto(values, resolver)?;
    let indices = match &s.indices {
        Some(i) => tensor_from_proto(i, resolver)?,
        None => {
            return Err(ImportError::BadTensor {
                tensor: values.name.clone(),
                detail: "sparse tensor without indices".into(),
            })
        }
    };
    Ok(SparseTensor {
        values,
        indices,
        dims: s.dims.clone(),
    })
}

/// Encode a sparse tensor; `name` goes on its values tensor, as ONNX requires.
pub fn sparse_to_proto(s: &SparseTensor, name: &str) -> proto::SparseTensorProto {
    proto::SparseTensorProto {
        values: Some(tensor_to_proto(&s.values, name)),
        indices: Some(tensor_to_proto(&s.indices, &s.indices.name)),
        dims: s.dims.clone(),
    }
}

/// Key-value pairs from protobuf entries.
pub fn kv_from_proto(e: &[proto::StringStringEntryProto]) -> Vec<(String, String)> {
    e.iter()
        .map(|e| {
            (
                e.key.clone().unwrap_or_default(),
                e.value.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Protobuf entries from key-value pairs.
pub fn kv_to_proto(kv: &[(String, String)]) -> Vec<proto::StringStringEntryProto> {
    kv.iter()
        .map(|(k, v)| proto::StringStringEntryProto {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

/// Whether `path` would stay within `root` (no absolute paths, no `..` escaping it).
pub fn is_confined(location: &str) -> bool {
    let p = Path::new(location);
    if p.is_absolute() || location.contains('\\') && location.contains("..") {
        return false;
    }
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    depth > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_every_numeric_dtype() {
        for dtype in DType::ALL {
            if dtype == DType::String {
                continue;
            }
            let n = 6usize;
            let bytes = dtype.storage_bytes(n).unwrap();
            let raw: Vec<u8> = (0..bytes).map(|i| (i * 37 % 251) as u8).collect();
            let mut t = Tensor::from_raw(dtype, vec![2, 3], Bytes::from(raw));
            t.encoding = Encoding::Typed;
            let p = tensor_to_proto(&t, "x");
            assert!(p.raw_data.is_none(), "{dtype}");
            let back = tensor_from_proto(&p, &NoExternal).unwrap();
            assert_eq!(back.data, t.data, "{dtype}");
            assert_eq!(back.encoding, Encoding::Typed, "{dtype}");
        }
    }

    #[test]
    fn raw_length_mismatch_names_the_tensor() {
        let p = TensorProto {
            name: Some("w".into()),
            dims: vec![2, 2],
            data_type: Some(1),
            raw_data: Some(Bytes::from_static(&[0; 12])),
            ..Default::default()
        };
        let e = tensor_from_proto(&p, &NoExternal).unwrap_err().to_string();
        assert!(
            e.contains("'w'") && e.contains("16 bytes") && e.contains("12"),
            "{e}"
        );
    }

    #[test]
    fn unknown_dtype() {
        let p = TensorProto {
            name: Some("w".into()),
            data_type: Some(99),
            ..Default::default()
        };
        let e = tensor_from_proto(&p, &NoExternal).unwrap_err().to_string();
        assert!(e.contains("unknown data type code 99"), "{e}");
    }

    #[test]
    fn confinement() {
        assert!(is_confined("w.bin"));
        assert!(is_confined("data/w.bin"));
        assert!(is_confined("data/../w.bin"));
        assert!(!is_confined("../w.bin"));
        assert!(!is_confined("/etc/passwd"));
        assert!(!is_confined("data/../../w.bin"));
        assert!(!is_confined(""));
    }
}
