//! Element types of tensors: every ONNX data type.

use std::fmt;

/// An element type. Every ONNX `TensorProto.DataType` except `UNDEFINED` has a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "&'static str")]
pub enum DType {
    F32,
    U8,
    I8,
    U16,
    I16,
    I32,
    I64,
    String,
    Bool,
    F16,
    F64,
    U32,
    U64,
    C64,
    C128,
    BF16,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    U4,
    I4,
    F4E2M1,
    F8E8M0,
    U2,
    I2,
}

impl DType {
    /// Every element type, in ONNX code order.
    pub const ALL: [DType; 26] = [
        DType::F32,
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::String,
        DType::Bool,
        DType::F16,
        DType::F64,
        DType::U32,
        DType::U64,
        DType::C64,
        DType::C128,
        DType::BF16,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::U4,
        DType::I4,
        DType::F4E2M1,
        DType::F8E8M0,
        DType::U2,
        DType::I2,
    ];

    /// The type for an ONNX `DataType` code; `None` for `UNDEFINED` (0) and unknown codes.
    pub fn from_onnx(code: i32) -> Option<DType> {
        if (1..=26).contains(&code) {
            Some(Self::ALL[(code - 1) as usize])
        } else {
            None
        }
    }

    /// The ONNX `DataType` code.
    pub fn onnx_code(self) -> i32 {
        Self::ALL
            .iter()
            .position(|&d| d == self)
            .map_or(0, |i| i as i32 + 1)
    }

    /// Bits one element occupies in ONNX `raw_data` (sub-byte types are packed); `None` for strings.
    pub fn bits(self) -> Option<usize> {
        use DType::*;
        Some(match self {
            String => return None,
            U2 | I2 => 2,
            U4 | I4 | F4E2M1 => 4,
            U8 | I8 | Bool | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => 8,
            U16 | I16 | F16 | BF16 => 16,
            F32 | I32 | U32 => 32,
            F64 | I64 | U64 | C64 => 64,
            C128 => 128,
        })
    }

    /// Bytes needed to store `n` elements in ONNX `raw_data` layout; `None` for strings.
    pub fn storage_bytes(self, n: usize) -> Option<usize> {
        self.bits().map(|b| (n * b).div_ceil(8))
    }

    /// The name the ONNX textual syntax uses (`float`, `int64`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        use DType::*;
        match self {
            F32 => "float",
            U8 => "uint8",
            I8 => "int8",
            U16 => "uint16",
            I16 => "int16",
            I32 => "int32",
            I64 => "int64",
            String => "string",
            Bool => "bool",
            F16 => "float16",
            F64 => "double",
            U32 => "uint32",
            U64 => "uint64",
            C64 => "complex64",
            C128 => "complex128",
            BF16 => "bfloat16",
            F8E4M3FN => "float8e4m3fn",
            F8E4M3FNUZ => "float8e4m3fnuz",
            F8E5M2 => "float8e5m2",
            F8E5M2FNUZ => "float8e5m2fnuz",
            U4 => "uint4",
            I4 => "int4",
            F4E2M1 => "float4e2m1",
            F8E8M0 => "float8e8m0",
            U2 => "uint2",
            I2 => "int2",
        }
    }

    /// The type named `name` in the ONNX textual syntax.
    pub fn from_name(name: &str) -> Option<DType> {
        Self::ALL.iter().copied().find(|d| d.name() == name)
    }

    /// True for the floating-point types (including the 8- and 4-bit float formats).
    pub fn is_float(self) -> bool {
        use DType::*;
        matches!(
            self,
            F32 | F16 | F64 | BF16 | F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F4E2M1 | F8E8M0
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<DType> for &'static str {
    fn from(d: DType) -> Self {
        d.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_onnx(d.onnx_code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::F32.onnx_code(), 1);
        assert_eq!(DType::BF16.onnx_code(), 16);
        assert_eq!(DType::I2.onnx_code(), 26);
        assert_eq!(DType::from_onnx(0), None);
        assert_eq!(DType::from_onnx(27), None);
    }

    #[test]
    fn storage() {
        assert_eq!(DType::I4.storage_bytes(3), Some(2));
        assert_eq!(DType::U2.storage_bytes(5), Some(2));
        assert_eq!(DType::C64.storage_bytes(2), Some(16));
        assert_eq!(DType::String.storage_bytes(2), None);
    }
}
