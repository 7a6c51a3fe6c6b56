//! Typed access to a function's attributes.
//!
//! Optional attributes: absent is `None` (the caller's default applies), present with the wrong
//! type is an error that names the key, since the key is all a user can look for.

use crate::error::{Problem, malformed};
use crate::model::as_vec;
use crate::proto::cntk::{Dictionary, DictionaryValue, Value};

/// `Axis::SentinelStaticAxisIndexValueFor*` in CNTK: static axis indices that stand for
/// something else.
const DYNAMIC_AXES: i64 = i32::MAX as i64;
const ALL_STATIC_AXES: i64 = i32::MAX as i64 - 1;
const END_STATIC_AXIS: i64 = i32::MAX as i64 - 3;
const ALL_AXES: i64 = i32::MAX as i64 - 4;

/// An axis as CNTK saves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// A static axis in CNTK order; negative counts from the last axis (`-1` is the last).
    Static(i64),
    /// Every static axis: the whole sample.
    AllStatic,
    /// One past the last static axis (the end of a range).
    End,
    /// A dynamic axis (batch or sequence), or every axis including those.
    Dynamic,
}

impl Axis {
    fn from_index(index: i64, named: bool) -> Self {
        match index {
            ALL_STATIC_AXES => Self::AllStatic,
            END_STATIC_AXIS => Self::End,
            DYNAMIC_AXES | ALL_AXES => Self::Dynamic,
            // Dynamic axes carry a name and the sentinel; a stray name on a small index is
            // still a dynamic axis.
            _ if named && index > i64::from(i16::MAX) => Self::Dynamic,
            i => Self::Static(i),
        }
    }

    /// The static axis this is, for a value of `rank` axes.
    pub fn resolve(self, rank: usize) -> Option<usize> {
        match self {
            Self::Static(i) => {
                let i = if i < 0 { i + rank as i64 } else { i };
                usize::try_from(i).ok().filter(|&i| i < rank)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(i) => write!(f, "static axis {i}"),
            Self::AllStatic => f.write_str("all static axes"),
            Self::End => f.write_str("the end of the static axes"),
            Self::Dynamic => f.write_str("a dynamic (batch or sequence) axis"),
        }
    }
}

fn attr<'d>(attrs: &'d Dictionary, key: &str) -> Option<&'d Value> {
    attrs.data.get(key).and_then(|v| v.value.as_ref())
}

fn bad_attr(key: &str) -> Problem {
    malformed(format!("attribute `{key}` has an unexpected type"))
}

fn vector<'d>(attrs: &'d Dictionary, key: &str) -> Result<&'d [DictionaryValue], Problem> {
    match attrs.data.get(key) {
        None => Ok(&[]),
        Some(value) => as_vec(value).map_err(|_| bad_attr(key)),
    }
}

pub fn bool_attr(attrs: &Dictionary, key: &str) -> Result<Option<bool>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_attr(key)),
    }
}

pub fn bools_attr(attrs: &Dictionary, key: &str) -> Result<Vec<bool>, Problem> {
    vector(attrs, key)?
        .iter()
        .map(|v| match v.value {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(bad_attr(key)),
        })
        .collect()
}

pub fn u64_attr(attrs: &Dictionary, key: &str) -> Result<Option<u64>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::SizeT(n)) => Ok(Some(*n)),
        Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as u64)),
        Some(_) => Err(bad_attr(key)),
    }
}

fn as_i64(value: Option<&Value>, key: &str) -> Result<i64, Problem> {
    match value {
        Some(Value::Int(n)) => Ok(i64::from(*n)),
        Some(Value::SizeT(n)) => i64::try_from(*n).map_err(|_| bad_attr(key)),
        _ => Err(bad_attr(key)),
    }
}

/// A signed integer (slice indices may count from the end).
pub fn i64_attr(attrs: &Dictionary, key: &str) -> Result<Option<i64>, Problem> {
    attr(attrs, key).map(|v| as_i64(Some(v), key)).transpose()
}

pub fn i64s_attr(attrs: &Dictionary, key: &str) -> Result<Vec<i64>, Problem> {
    vector(attrs, key)?
        .iter()
        .map(|v| as_i64(v.value.as_ref(), key))
        .collect()
}

pub fn f64_attr(attrs: &Dictionary, key: &str) -> Result<Option<f64>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Double(x)) => Ok(Some(*x)),
        Some(Value::Float(x)) => Ok(Some(f64::from(*x))),
        Some(_) => Err(bad_attr(key)),
    }
}

pub fn str_attr<'d>(attrs: &'d Dictionary, key: &str) -> Result<Option<&'d str>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_attr(key)),
    }
}

pub fn shape_attr(attrs: &Dictionary, key: &str) -> Result<Option<Vec<u64>>, Problem> {
    match attr(attrs, key) {
        None => Ok(None),
        Some(Value::Shape(s)) => Ok(Some(s.shape_dim.clone())),
        Some(_) => Err(bad_attr(key)),
    }
}

fn as_axis(value: Option<&Value>, key: &str) -> Result<Axis, Problem> {
    match value {
        Some(Value::Axis(a)) => Ok(Axis::from_index(
            i64::from(a.static_axis_idx),
            !a.name.is_empty(),
        )),
        // Some CNTK versions nest the axis in a dictionary of its own.
        Some(Value::Dictionary(d)) => {
            let index = as_i64(
                d.data.get("static_axis_idx").and_then(|v| v.value.as_ref()),
                key,
            )?;
            let named = matches!(
                d.data.get("name").and_then(|v| v.value.as_ref()),
                Some(Value::String(s)) if !s.is_empty()
            );
            Ok(Axis::from_index(index, named))
        }
        _ => Err(bad_attr(key)),
    }
}

pub fn axis_attr(attrs: &Dictionary, key: &str) -> Result<Option<Axis>, Problem> {
    attr(attrs, key).map(|v| as_axis(Some(v), key)).transpose()
}

pub fn axes_attr(attrs: &Dictionary, key: &str) -> Result<Vec<Axis>, Problem> {
    vector(attrs, key)?
        .iter()
        .map(|v| as_axis(v.value.as_ref(), key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_axes_are_told_apart_from_static_ones() {
        assert_eq!(Axis::from_index(2, false), Axis::Static(2));
        assert_eq!(Axis::from_index(-1, false).resolve(3), Some(2));
        assert_eq!(Axis::Static(3).resolve(3), None);
        assert_eq!(Axis::from_index(ALL_STATIC_AXES, false), Axis::AllStatic);
        assert_eq!(Axis::from_index(END_STATIC_AXIS, false), Axis::End);
        assert_eq!(Axis::from_index(DYNAMIC_AXES, true), Axis::Dynamic);
        assert_eq!(Axis::from_index(ALL_AXES, false), Axis::Dynamic);
    }
}
