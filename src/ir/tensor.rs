//! Tensors: constant data with a type and a shape, backed by a memory map or by owned memory.

use std::borrow::Cow;

use bytes::Bytes;

use super::DType;

/// A constant: element type, dimensions and data.
///
/// Numeric data is held in ONNX `raw_data` layout (little-endian, sub-byte types packed) as
/// [`Bytes`], which may slice a memory-mapped model file (no copy) or own its memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Dimensions (all non-negative; a scalar has none).
    pub dims: Vec<i64>,
    /// The elements.
    pub data: TensorData,
    /// How the source stored the data; the exporter keeps this form where it can.
    pub encoding: Encoding,
    /// Name carried by the tensor itself (meaningful for attribute tensors; for initializers the
    /// owning value's name wins).
    pub name: String,
    /// `doc_string`, carried through.
    pub doc_string: String,
    /// `metadata_props`, carried through in order.
    pub metadata_props: Vec<(String, String)>,
    /// `segment` (begin, end), carried through.
    pub segment: Option<(i64, i64)>,
}

/// Element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Numeric elements in ONNX `raw_data` layout.
    Raw(Bytes),
    /// String elements (ONNX `string_data`).
    Strings(Vec<Bytes>),
}

/// How a tensor's data was stored in the file it came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encoding {
    /// `raw_data` (or external data, which is raw bytes too).
    #[default]
    Raw,
    /// The typed fields (`float_data`, `int32_data`, `int64_data`, ...).
    Typed,
}

/// A sparse constant in COO form (ONNX `SparseTensorProto`).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTensor {
    /// The non-zero values, a 1-D tensor of NNZ elements.
    pub values: Tensor,
    /// Indices: `[NNZ]` linearised or `[NNZ, rank]` coordinates, int64.
    pub indices: Tensor,
    /// The dense shape.
    pub dims: Vec<i64>,
}

impl Tensor {
    /// A tensor over raw bytes; the caller guarantees `data.len()` matches dtype and dims.
    pub fn from_raw(dtype: DType, dims: Vec<i64>, data: Bytes) -> Tensor {
        Tensor {
            dtype,
            dims,
            data: TensorData::Raw(data),
            encoding: Encoding::Raw,
            name: String::new(),
            doc_string: String::new(),
            metadata_props: Vec::new(),
            segment: None,
        }
    }

    /// An owned f32 tensor. Panics if `values.len()` is not the product of `dims` (a programming
    /// error, never user input).
    pub fn from_f32(dims: Vec<i64>, values: &[f32]) -> Tensor {
        assert_eq!(
            num_elements(&dims),
            Some(values.len()),
            "f32 tensor: dims do not match data"
        );
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(DType::F32, dims, Bytes::from(bytes))
    }

    /// An owned i64 tensor. Panics if `values.len()` is not the product of `dims`.
    pub fn from_i64(dims: Vec<i64>, values: &[i64]) -> Tensor {
        assert_eq!(
            num_elements(&dims),
            Some(values.len()),
            "i64 tensor: dims do not match data"
        );
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor::from_raw(DType::I64, dims, Bytes::from(bytes))
    }

    /// Number of elements (product of dims; 1 for a scalar).
    pub fn num_elements(&self) -> usize {
        num_elements(&self.dims).unwrap_or(0)
    }

    /// Bytes of element data as stored in `raw_data` (for strings: the sum of their lengths).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            TensorData::Raw(b) => b.len(),
            TensorData::Strings(s) => s.iter().map(Bytes::len).sum(),
        }
    }

    /// The raw little-endian bytes, if numeric.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Raw(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// The elements as f32 if the dtype is f32: borrowed when the bytes are aligned, else copied.
    pub fn as_f32(&self) -> Option<Cow<'_, [f32]>> {
        if self.dtype != DType::F32 {
            return None;
        }
        self.raw().map(|b| cast_or_copy::<f32>(b))
    }

    /// The elements as f64 if the dtype is f64.
    pub fn as_f64(&self) -> Option<Cow<'_, [f64]>> {
        if self.dtype != DType::F64 {
            return None;
        }
        self.raw().map(|b| cast_or_copy::<f64>(b))
    }

    /// Integer elements widened to i64, for the integer and bool dtypes up to 64 bits.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = self.raw()?;
        Some(match self.dtype {
            DType::I64 => cast_or_copy::<i64>(b).into_owned(),
            DType::I32 => cast_or_copy::<i32>(b).iter().map(|&v| v as i64).collect(),
            DType::I16 => cast_or_copy::<i16>(b).iter().map(|&v| v as i64).collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&v| v as i64).collect(),
            DType::U16 => cast_or_copy::<u16>(b).iter().map(|&v| v as i64).collect(),
            DType::U32 => cast_or_copy::<u32>(b).iter().map(|&v| v as i64).collect(),
            DType::U64 => cast_or_copy::<u64>(b).iter().map(|&v| v as i64).collect(),
            _ => return None,
        })
    }

    /// A 64-bit digest of dtype, dims and data (FNV-1a); stable across runs and platforms.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(&self.dtype.onnx_code().to_le_bytes());
        for d in &self.dims {
            h.write(&d.to_le_bytes());
        }
        match &self.data {
            TensorData::Raw(b) => h.write(b),
            TensorData::Strings(s) => {
                for x in s {
                    h.write(&(x.len() as u64).to_le_bytes());
                    h.write(x);
                }
            }
        }
        h.finish()
    }

    /// True when both hold the same dtype, dims and element bytes (metadata ignored).
    pub fn same_content(&self, other: &Tensor) -> bool {
        self.dtype == other.dtype && self.dims == other.dims && self.data == other.data
    }
}

/// Product of `dims`, or `None` on a negative dim or overflow.
pub fn num_elements(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

fn cast_or_copy<T: bytemuck::Pod>(b: &[u8]) -> Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    let b = &b[..b.len() - b.len() % size];
    match bytemuck::try_cast_slice::<u8, T>(b) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            b.chunks_exact(size)
                .map(bytemuck::pod_read_unaligned)
                .collect(),
        ),
    }
}

/// FNV-1a, 64 bit, processing 8 bytes per step for speed on large tensors.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        const P: u64 = 0x0000_0100_0000_01b3;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0 ^ u64::from_le_bytes(w)).wrapping_mul(P);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(P);
        }
    }
    fn finish(&self) -> u64 {
        // Final avalanche so nearby inputs give unrelated digests.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_view_of_unaligned_bytes() {
        let t = Tensor::from_f32(vec![2], &[1.5, -2.0]);
        let mut raw = vec![0u8];
        raw.extend_from_slice(t.raw().unwrap());
        let unaligned = Bytes::from(raw).slice(1..);
        let u = Tensor::from_raw(DType::F32, vec![2], unaligned);
        assert_eq!(&*u.as_f32().unwrap(), &[1.5, -2.0]);
        assert_eq!(u.digest(), t.digest());
    }

    #[test]
    fn digest_depends_on_shape() {
        let a = Tensor::from_f32(vec![2, 1], &[1.0, 2.0]);
        let b = Tensor::from_f32(vec![1, 2], &[1.0, 2.0]);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn element_counts() {
        assert_eq!(num_elements(&[]), Some(1));
        assert_eq!(num_elements(&[3, 0]), Some(0));
        assert_eq!(num_elements(&[-1]), None);
        assert_eq!(num_elements(&[i64::MAX, 4]), None);
    }
}
