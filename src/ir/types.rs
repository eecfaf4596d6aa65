//! Value types: element type plus shape, with symbolic dimensions kept.

use std::fmt;

use super::DType;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(untagged)]
pub enum Dim {
    /// A known size.
    Known(i64),
    /// A named size (`batch`, `seq`), equal wherever the same name appears.
    Sym(String),
    /// Nothing is known.
    #[serde(serialize_with = "ser_unknown")]
    Unknown,
}

fn ser_unknown<S: serde::Serializer>(s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("?")
}

impl Dim {
    /// The size, when known.
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Known(v)
    }
}

/// A shape: `None` rank means even the rank is unknown.
pub type Shape = Vec<Dim>;

/// The type of a value, mirroring ONNX `TypeProto`.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    /// A dense tensor. `elem` is `None` when the source left it undefined; `shape` is `None` when
    /// the rank is unknown.
    Tensor {
        elem: Option<DType>,
        shape: Option<Shape>,
        /// Per-dimension denotations, carried through (`(axis, denotation)`).
        dim_denotations: Vec<(usize, String)>,
    },
    /// A sparse tensor.
    SparseTensor {
        elem: Option<DType>,
        shape: Option<Shape>,
        dim_denotations: Vec<(usize, String)>,
    },
    /// A sequence of values of one type.
    Sequence(Option<Box<ValueType>>),
    /// A map from a scalar key type to values of one type.
    Map {
        key: Option<DType>,
        value: Option<Box<ValueType>>,
    },
    /// An optional value.
    Optional(Option<Box<ValueType>>),
    /// An opaque type named by domain and name.
    Opaque { domain: String, name: String },
    /// A type with no variant set.
    Undefined,
}

/// A [`Type`] with its optional denotation (ONNX `TypeProto.denotation`).
#[derive(Clone, Debug, PartialEq)]
pub struct ValueType {
    /// The type.
    pub ty: Type,
    /// `TypeProto.denotation`, carried through.
    pub denotation: Option<String>,
}

impl ValueType {
    /// A dense tensor type.
    pub fn tensor(elem: DType, shape: Shape) -> ValueType {
        ValueType {
            ty: Type::Tensor {
                elem: Some(elem),
                shape: Some(shape),
                dim_denotations: Vec::new(),
            },
            denotation: None,
        }
    }

    /// A dense tensor type of unknown rank.
    pub fn tensor_unranked(elem: DType) -> ValueType {
        ValueType {
            ty: Type::Tensor {
                elem: Some(elem),
                shape: None,
                dim_denotations: Vec::new(),
            },
            denotation: None,
        }
    }

    /// Element type of a dense tensor type.
    pub fn elem(&self) -> Option<DType> {
        match &self.ty {
            Type::Tensor { elem, .. } => *elem,
            _ => None,
        }
    }

    /// Shape of a dense tensor type, when its rank is known.
    pub fn shape(&self) -> Option<&Shape> {
        match &self.ty {
            Type::Tensor { shape, .. } => shape.as_ref(),
            _ => None,
        }
    }

    /// The shape with every dim known, as integers.
    pub fn known_dims(&self) -> Option<Vec<i64>> {
        self.shape()?.iter().map(Dim::known).collect()
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn elem(e: &Option<DType>) -> &'static str {
            e.map_or("undefined", DType::name)
        }
        fn shape(f: &mut fmt::Formatter<'_>, s: &Option<Shape>) -> fmt::Result {
            match s {
                None => Ok(()),
                Some(s) => {
                    f.write_str("[")?;
                    for (i, d) in s.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        write!(f, "{d}")?;
                    }
                    f.write_str("]")
                }
            }
        }
        match &self.ty {
            Type::Tensor {
                elem: e, shape: s, ..
            } => {
                f.write_str(elem(e))?;
                shape(f, s)
            }
            Type::SparseTensor {
                elem: e, shape: s, ..
            } => {
                write!(f, "sparse_tensor({}", elem(e))?;
                shape(f, s)?;
                f.write_str(")")
            }
            Type::Sequence(t) => match t {
                Some(t) => write!(f, "seq({t})"),
                None => f.write_str("seq(?)"),
            },
            Type::Map { key, value } => match value {
                Some(v) => write!(f, "map({}, {v})", elem(key)),
                None => write!(f, "map({}, ?)", elem(key)),
            },
            Type::Optional(t) => match t {
                Some(t) => write!(f, "optional({t})"),
                None => f.write_str("optional(?)"),
            },
            Type::Opaque { domain, name } => write!(f, "opaque({domain}, {name})"),
            Type::Undefined => f.write_str("?"),
        }
    }
}
