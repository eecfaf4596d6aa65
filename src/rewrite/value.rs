//! Run-time values of the pass language.

use std::sync::Arc;

use crate::ir::{AttrValue, Tensor, ValueId};

/// A value an expression evaluates to while a rule runs.
#[derive(Clone, Debug)]
pub enum Val {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// An absent optional operand or attribute.
    None,
    /// A value of the graph (a constant or not).
    Value(ValueId),
    /// A constant computed by a kernel, not yet stored in the graph.
    Tensor(Arc<Tensor>),
    /// Output `port` of operation `index` planned by this rule application.
    Planned(usize, usize),
    List(Vec<Val>),
    Tuple(Vec<Val>),
    /// An attribute value bound by a pattern.
    Attr(Box<AttrValue>),
    /// `plan`: chosen by the budget planner.
    Plan,
    /// `energy(p)`: the smallest rank keeping fraction `p` of a matrix's energy.
    Energy(f64),
}

impl Val {
    /// A short description for reports and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Int(_) => "int",
            Val::Float(_) => "float",
            Val::Bool(_) => "bool",
            Val::Str(_) => "string",
            Val::None => "none",
            Val::Value(_) => "value",
            Val::Tensor(_) => "constant",
            Val::Planned(..) => "operation",
            Val::List(_) => "list",
            Val::Tuple(_) => "tuple",
            Val::Attr(_) => "attribute",
            Val::Plan => "plan",
            Val::Energy(_) => "rank spec",
        }
    }

    /// An integer, from an int, an int attribute or a float with no fraction.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Attr(a) => match **a {
                AttrValue::Int(i) => Some(i),
                _ => None,
            },
            Val::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    /// A float, from a float, an int, or a numeric attribute.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) => Some(*f),
            Val::Attr(a) => match **a {
                AttrValue::Int(i) => Some(i as f64),
                AttrValue::Float(f) => Some(f as f64),
                _ => None,
            },
            _ => None,
        }
    }
}
