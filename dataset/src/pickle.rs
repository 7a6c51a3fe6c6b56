//! Just enough of Python's pickle format to read CIFAR batches.
//!
//! The batches are Python 2 cPickle dicts (protocol 2) holding a numpy `uint8` array; Python 3
//! re-pickles use protocols 3 to 5. This is a small pickle machine over those opcodes that
//! builds plain values; numpy arrays stay as the `_reconstruct` call and `BUILD` state that
//! describe them, and [`ndarray_u8`] reads that description. Nothing is ever executed: globals
//! are only names. Large strings are kept as ranges into the input, never copied.

use std::ops::Range;
use std::rc::Rc;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A Python 2 `str` or Python 3 `bytes`: a range of the input.
    Bytes(Range<usize>),
    Str(Rc<str>),
    List(Rc<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    Global(Rc<str>),
    /// `callable(*args)`, with the state given by `BUILD`, if any.
    Object {
        callable: Rc<Value>,
        args: Rc<Value>,
        state: Option<Rc<Value>>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("the pickle ends early (at byte {0})")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {at}")]
    Opcode { opcode: u8, at: usize },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: &'static str },
}

/// Containers nested in containers, at most. A CIFAR batch nests four deep; a hostile pickle
/// nesting a hundred thousand lists in a few hundred bytes would overflow the stack of any
/// recursive walk of the value (dropping it, to begin with).
pub const MAX_DEPTH: u32 = 100;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// How deep each value of `stack` nests (a scalar or an empty container: 0).
    depths: Vec<u32>,
    marks: Vec<usize>,
    memo: Vec<Option<(Value, u32)>>,
}

/// Parses one pickle and returns the value it builds.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        depths: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
    };
    m.run()
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<Range<usize>, PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated(self.pos))?;
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let r = self.take(n)?;
        Ok(&self.data[r])
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.bytes(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.pos))?;
        let line =
            std::str::from_utf8(&rest[..end]).map_err(|_| self.malformed("non-UTF-8 name"))?;
        self.pos += end + 1;
        Ok(line)
    }

    fn malformed(&self, what: &'static str) -> PickleError {
        PickleError::Malformed { at: self.pos, what }
    }

    /// Pushes a value nesting `depth` deep, refused beyond [`MAX_DEPTH`].
    fn push_at(&mut self, value: Value, depth: u32) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed("containers nested more than 100 deep"));
        }
        self.stack.push(value);
        self.depths.push(depth);
        Ok(())
    }

    /// Pushes a value that holds no other (a scalar, an empty container, a name).
    fn push(&mut self, value: Value) {
        self.stack.push(value);
        self.depths.push(0);
    }

    /// Pops the top value, with how deep it nests.
    fn pop(&mut self) -> Result<(Value, u32), PickleError> {
        match (self.stack.pop(), self.depths.pop()) {
            (Some(value), Some(depth)) => Ok((value, depth)),
            _ => Err(self.malformed("stack underflow")),
        }
    }

    /// Pops the top `n` values, with the deepest nesting among them.
    fn pop_n(&mut self, n: usize) -> Result<(Vec<Value>, u32), PickleError> {
        let at = self
            .stack
            .len()
            .checked_sub(n)
            .ok_or_else(|| self.malformed("stack underflow"))?;
        let depth = self.depths.split_off(at).into_iter().max().unwrap_or(0);
        Ok((self.stack.split_off(at), depth))
    }

    /// Pops everything above the last mark, with the deepest nesting among it.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, u32), PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no mark"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("mark above stack"));
        }
        self.pop_n(self.stack.len() - mark)
    }

    /// The top value, to be filled with values nesting `depth` deep.
    fn top_mut(&mut self, depth: u32) -> Result<&mut Value, PickleError> {
        let at = self.pos;
        let top = self.depths.last_mut().ok_or(PickleError::Malformed {
            at,
            what: "stack underflow",
        })?;
        *top = (*top).max(depth + 1);
        if *top > MAX_DEPTH {
            return Err(PickleError::Malformed {
                at,
                what: "containers nested more than 100 deep",
            });
        }
        Ok(self.stack.last_mut().expect("a depth for each value"))
    }

    fn push_str(&mut self, n: usize) -> Result<(), PickleError> {
        let raw = self.bytes(n)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| self.malformed("invalid UTF-8 in a unicode string"))?;
        self.push(Value::Str(s.into()));
        Ok(())
    }

    fn push_bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let r = self.take(n)?;
        self.push(Value::Bytes(r));
        Ok(())
    }

    fn memo_put(&mut self, index: usize) -> Result<(), PickleError> {
        let value = (self.stack.last().cloned())
            .zip(self.depths.last().copied())
            .ok_or_else(|| self.malformed("memo of empty stack"))?;
        if self.memo.len() <= index {
            // Bound the memo by the input: a hostile index must not allocate gigabytes.
            if index > self.data.len() {
                return Err(self.malformed("memo index out of range"));
            }
            self.memo.resize(index + 1, None);
        }
        self.memo[index] = Some(value);
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<(), PickleError> {
        let (value, depth) = self
            .memo
            .get(index)
            .cloned()
            .flatten()
            .ok_or_else(|| self.malformed("unknown memo index"))?;
        self.push_at(value, depth)
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let opcode = self.u8()?;
            match opcode {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.le::<8>()?; // FRAME: a size hint only
                }
                b'.' => return self.pop().map(|(value, _)| value), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Rc::new(Vec::new()))),
                b']' => self.push(Value::List(Rc::new(Vec::new()))),
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Value::Int(v.into()));
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let raw = self.bytes(n)?;
                    if n > 8 {
                        return Err(self.malformed("integer wider than 64 bits"));
                    }
                    let mut buf = if raw.last().is_some_and(|b| b & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(raw);
                    self.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Value::Float(v));
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    self.push_bytes(n)?;
                }
                b'T' | b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    self.push_bytes(n)?;
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.le()?) as usize;
                    self.push_bytes(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.push_str(n)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize;
                    self.push_str(n)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?) as usize;
                    self.push_str(n)?;
                }
                b't' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_at(Value::Tuple(Rc::new(items)), depth + 1)?;
                }
                0x85..=0x87 => {
                    let (items, depth) = self.pop_n((opcode - 0x84) as usize)?;
                    self.push_at(Value::Tuple(Rc::new(items)), depth + 1)?;
                }
                b'l' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_at(Value::List(Rc::new(items)), depth + 1)?;
                }
                b'a' => {
                    let (item, depth) = self.pop()?;
                    match self.top_mut(depth)? {
                        Value::List(list) => Rc::make_mut(list).push(item),
                        _ => {
                            return Err(PickleError::Malformed {
                                at,
                                what: "APPEND to a non-list",
                            });
                        }
                    }
                }
                b'e' => {
                    let (items, depth) = self.pop_mark()?;
                    match self.top_mut(depth)? {
                        Value::List(list) => Rc::make_mut(list).extend(items),
                        _ => {
                            return Err(PickleError::Malformed {
                                at,
                                what: "APPENDS to a non-list",
                            });
                        }
                    }
                }
                b'd' => {
                    let (items, depth) = self.pop_mark()?;
                    let pairs = pairs(items).ok_or(PickleError::Malformed {
                        at,
                        what: "odd DICT",
                    })?;
                    self.push_at(Value::Dict(Rc::new(pairs)), depth + 1)?;
                }
                b's' | b'u' => {
                    let (items, depth) = if opcode == b's' {
                        let (value, value_depth) = self.pop()?;
                        let (key, key_depth) = self.pop()?;
                        (vec![(key, value)], value_depth.max(key_depth))
                    } else {
                        let (items, depth) = self.pop_mark()?;
                        let pairs = pairs(items).ok_or(PickleError::Malformed {
                            at,
                            what: "odd SETITEMS",
                        })?;
                        (pairs, depth)
                    };
                    match self.top_mut(depth)? {
                        Value::Dict(dict) => Rc::make_mut(dict).extend(items),
                        _ => {
                            return Err(PickleError::Malformed {
                                at,
                                what: "SETITEM on a non-dict",
                            });
                        }
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(format!("{module}.{name}").into()));
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.push(Value::Global(format!("{m}.{n}").into()))
                        }
                        _ => {
                            return Err(PickleError::Malformed {
                                at,
                                what: "STACK_GLOBAL of non-strings",
                            });
                        }
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE and NEWOBJ: record the call, run nothing.
                    let (args, args_depth) = self.pop()?;
                    let (callable, callable_depth) = self.pop()?;
                    let object = Value::Object {
                        callable: Rc::new(callable),
                        args: Rc::new(args),
                        state: None,
                    };
                    self.push_at(object, args_depth.max(callable_depth) + 1)?;
                }
                b'b' => {
                    let (new_state, depth) = self.pop()?;
                    match self.top_mut(depth)? {
                        Value::Object { state, .. } => *state = Some(Rc::new(new_state)),
                        _ => {
                            return Err(PickleError::Malformed {
                                at,
                                what: "BUILD on a non-object",
                            });
                        }
                    }
                }
                b'q' => {
                    let i = self.u8()? as usize;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?) as usize;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len();
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as usize;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?) as usize;
                    self.memo_get(i)?;
                }
                _ => return Err(PickleError::Opcode { opcode, at }),
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

impl Value {
    /// The text of a `str`, `unicode` or `bytes` value (Python 2 `str` is Latin-1 here, as the
    /// walkthrough's `encoding='latin1'` reads it).
    pub fn text(&self, data: &[u8]) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(r) => Some(data[r.clone()].iter().map(|&b| b as char).collect()),
            _ => None,
        }
    }

    /// Looks `key` up in a dict with `str` or `bytes` keys.
    pub fn get(&self, data: &[u8], key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| k.text(data).as_deref() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) | Value::Tuple(items) => Some(items),
            _ => None,
        }
    }
}

/// A numpy array of bytes as pickled by `ndarray.__reduce__`.
#[derive(Debug, PartialEq)]
pub struct NdArrayU8 {
    pub shape: Vec<usize>,
    pub data: Range<usize>,
}

/// Reads a pickled numpy `uint8` C-order array, or says what it is instead.
pub fn ndarray_u8(value: &Value, data: &[u8]) -> Result<NdArrayU8, String> {
    let Value::Object {
        callable,
        state: Some(state),
        ..
    } = value
    else {
        return Err("not a numpy array".into());
    };
    if !matches!(&**callable, Value::Global(g) if g.ends_with("multiarray._reconstruct")) {
        return Err("not a numpy array".into());
    }
    // state = (version, shape, dtype, is_fortran, raw bytes)
    let fields = state.items().ok_or("numpy array without a state tuple")?;
    let [_, shape, dtype, fortran, raw] = fields else {
        return Err(format!(
            "numpy array state has {} fields, expected 5",
            fields.len()
        ));
    };
    let shape = shape
        .items()
        .ok_or("numpy array without a shape")?
        .iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err("numpy array with a bad dimension".to_owned()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dtype_name = match dtype {
        Value::Object { args, .. } => args
            .items()
            .and_then(|a| a.first())
            .and_then(|n| n.text(data)),
        _ => None,
    };
    if dtype_name.as_deref() != Some("u1") {
        return Err(format!(
            "numpy array of dtype {}, expected uint8",
            dtype_name.as_deref().unwrap_or("unknown")
        ));
    }
    if matches!(fortran, Value::Bool(true) | Value::Int(1)) {
        return Err("numpy array in Fortran order, expected C order".into());
    }
    let Value::Bytes(range) = raw else {
        return Err("numpy array without raw bytes".into());
    };
    let expected: usize = shape.iter().product();
    if range.len() != expected {
        return Err(format!(
            "numpy array of shape {shape:?} holds {} bytes, expected {expected}",
            range.len()
        ));
    }
    Ok(NdArrayU8 {
        shape,
        data: range.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_protocol_2_dict() {
        // pickle.dumps({'a': [1, 300, -2], 'b': 'xy'}, protocol=2) with a memo entry.
        let data = b"\x80\x02}q\x00(U\x01aq\x01]q\x02(K\x01M,\x01J\xfe\xff\xff\xffeU\x01bU\x02xyu.";
        let v = parse(data).unwrap();
        let a = v.get(data, "a").unwrap().items().unwrap();
        assert_eq!(a, &[Value::Int(1), Value::Int(300), Value::Int(-2)]);
        assert_eq!(v.get(data, "b").unwrap().text(data).unwrap(), "xy");
    }

    #[test]
    fn truncated_input_is_an_error() {
        let data = b"\x80\x02}q\x00(U\x05ab";
        assert!(matches!(parse(data), Err(PickleError::Truncated(_))));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // A list nesting a million lists, in 2 MB: pushed, then each appended to the one below.
        let n = 1_000_000;
        let mut data = b"\x80\x02".to_vec();
        data.extend(std::iter::repeat_n(b']', n));
        data.extend(std::iter::repeat_n(b'a', n - 1));
        data.push(b'.');
        let error = parse(&data).unwrap_err();
        assert!(
            error.to_string().contains("nested more than 100 deep"),
            "{error}"
        );
        // As deep as allowed is read; the same through MARK and LIST, and through tuples.
        let nested = |opens: &[u8], close: u8, n: usize| {
            let mut data = b"\x80\x02".to_vec();
            for _ in 0..n {
                data.extend(opens);
            }
            data.extend(std::iter::repeat_n(close, n));
            data.push(b'.');
            parse(&data)
        };
        assert!(nested(b"(", b'l', MAX_DEPTH as usize).is_ok());
        assert!(nested(b"(", b'l', MAX_DEPTH as usize + 1).is_err());
        assert!(nested(b"(", b't', 100_000).is_err());
    }

    #[test]
    fn unknown_opcodes_are_refused() {
        assert!(matches!(
            parse(b"\x80\x02\xff."),
            Err(PickleError::Opcode { opcode: 0xff, .. })
        ));
    }
}
