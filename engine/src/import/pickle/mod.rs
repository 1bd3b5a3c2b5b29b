//! A small, tolerant pickle virtual machine (protocols 0–5) for torch checkpoints.
//!
//! Python objects become [`Value`]s. Classes this module does not know become generic
//! [`Object`]s that keep their constructor arguments, their `__setstate__` state and, for dict or
//! list subclasses (Lightning's `AttributeDict`, for instance), the items added by `SETITEMS` /
//! `APPENDS`. Containers are shared (`Rc`), so the memo behaves like Python's: a dict memoised
//! before it is filled is seen filled when fetched again.
//!
//! Torch specifics handled here: persistent ids (`BINPERSID`) become [`Value::PersistentId`], and
//! `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` calls become [`Value::Tensor`]
//! descriptions (storage key, dtype, offset, size, stride) without reading any data.
//!
//! Checkpoints come from the internet, so the machine is bounded: every length it reads is checked
//! against the bytes that are really left, the number of opcodes, the stack and the values copied
//! by calls are capped ([`MAX_OPS`], [`MAX_STACK`], [`MAX_COPIED_VALUES`]), and nothing that walks
//! a [`Value`] recurses without a bound (dropping is iterative, [`to_json`] stops at
//! [`MAX_JSON_DEPTH`] and [`MAX_JSON_VALUES`]). Nesting itself is not limited while reading:
//! Python's memo lets a container be nested first and filled later, so its depth is only known
//! once the whole pickle has run.
//!
//! Parts: [`machine`] runs the opcodes, [`calls`] interprets the few callables torch needs,
//! [`json`] turns values into configuration JSON.

mod calls;
mod json;
mod machine;

pub use json::{to_json, to_json_checked, MAX_JSON_DEPTH, MAX_JSON_VALUES};

use anyhow::Result;
use std::cell::RefCell;
use std::rc::Rc;

/// Most opcodes one pickle may execute. A Lightning checkpoint of the paper's 405M-parameter model
/// (state dict, optimizer state, hyper-parameters) runs a few hundred thousand; every opcode is at
/// least one byte, so this also bounds the memo and the values built, at a few hundred MB.
pub const MAX_OPS: usize = 4 << 20;

/// Most values on the stack (all MARK levels together). torch pickles containers in batches of
/// 1,000 items, so real checkpoints stay in the thousands.
pub const MAX_STACK: usize = 1 << 20;

/// Most values that calls (REDUCE, NEWOBJ, BUILD of known classes) may copy out of their argument
/// tuples in total. Without it a large memoised tuple passed to many calls would copy quadratically
/// from a small file.
pub const MAX_COPIED_VALUES: usize = 4 << 20;

/// Element type of a torch storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
}

impl StorageDtype {
    /// From the storage class name in the persistent id (`FloatStorage`, `HalfStorage`, ...).
    fn from_storage_class(name: &str) -> Option<Self> {
        match name {
            "FloatStorage" => Some(Self::F32),
            "HalfStorage" => Some(Self::F16),
            "BFloat16Storage" => Some(Self::BF16),
            "DoubleStorage" => Some(Self::F64),
            _ => None,
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
        }
    }
}

/// A tensor as described by the pickle: a view into a storage stored elsewhere in the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's key (its file name under `data/`).
    pub storage_key: String,
    pub dtype: StorageDtype,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub size: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
    /// The storage's length in elements as the persistent id states it (its 5th field), if given:
    /// the archive entry must hold exactly this many bytes' worth.
    pub storage_numel: Option<usize>,
}

/// A generic Python object of a class this module does not interpret.
#[derive(Debug, Default)]
pub struct Object {
    /// `module.Class`.
    pub class: String,
    /// Constructor arguments (REDUCE / NEWOBJ).
    pub args: Vec<Value>,
    /// The state passed to BUILD (usually the instance `__dict__`).
    pub state: Option<Value>,
    /// Items added by SETITEM(S) (dict subclasses).
    pub items: Vec<(Value, Value)>,
    /// Items added by APPEND(S) (list subclasses).
    pub list: Vec<Value>,
}

/// A Python value. Everything but scalars is shared (`Rc`), so copies (memo GET, DUP) are O(1).
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// A class or function reference (`GLOBAL`): module and name.
    Global(Rc<(String, String)>),
    Object(Rc<RefCell<Object>>),
    PersistentId(Rc<Value>),
    Tensor(Rc<TensorRef>),
    /// Something this module cannot represent (e.g. an integer wider than 64 bits).
    Unsupported(Rc<String>),
}

impl Value {
    fn dict(items: Vec<(Value, Value)>) -> Self {
        Value::Dict(Rc::new(RefCell::new(items)))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The (key, value) pairs of a dict, or of a dict-subclass instance.
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            Value::Object(o) => {
                let o = o.borrow();
                if !o.items.is_empty() || is_dict_subclass(&o.class) {
                    Some(o.items.clone())
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Looks a string key up in a dict (or dict-subclass instance).
    pub fn get(&self, key: &str) -> Option<Value> {
        self.dict_items()?.into_iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    /// A short description for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Global(g) => format!("class {}.{}", g.0, g.1),
            Value::Object(o) => format!("{} object", o.borrow().class),
            Value::PersistentId(_) => "persistent id".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Unsupported(s) => format!("unsupported value ({s})"),
        }
    }

    /// Moves this value's children into `out` when this is their last owner, so that dropping
    /// them happens in [`Drop::drop`]'s loop rather than by recursion.
    fn take_children(&mut self, out: &mut Vec<Value>) {
        match self {
            Value::Tuple(t) => {
                if let Some(v) = Rc::get_mut(t) {
                    out.append(v);
                }
            }
            Value::List(l) | Value::Set(l) => {
                if let Some(v) = Rc::get_mut(l) {
                    out.append(v.get_mut());
                }
            }
            Value::Dict(d) => {
                if let Some(v) = Rc::get_mut(d) {
                    for (k, v) in v.get_mut().drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                }
            }
            Value::Object(o) => {
                if let Some(o) = Rc::get_mut(o) {
                    let o = o.get_mut();
                    out.append(&mut o.args);
                    out.extend(o.state.take());
                    for (k, v) in o.items.drain(..) {
                        out.push(k);
                        out.push(v);
                    }
                    out.append(&mut o.list);
                }
            }
            Value::PersistentId(p) => {
                if let Some(v) = Rc::get_mut(p) {
                    out.push(std::mem::replace(v, Value::None));
                }
            }
            _ => {}
        }
    }
}

/// Dropping is iterative: a pickle of a few MB can nest containers a million levels deep, and the
/// derived, recursive drop would overflow the stack on it.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut v) = pending.pop() {
            v.take_children(&mut pending);
            // `v` has no children left here, so its own drop does not recurse.
        }
    }
}

fn is_dict_subclass(class: &str) -> bool {
    class.ends_with("AttributeDict") || class.ends_with("Dict") || class.ends_with("dict")
}

/// Unpickles `data`; returns the top-level value.
pub fn unpickle(data: &[u8]) -> Result<Value> {
    machine::Machine::new(data).run()
}
