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

use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

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

/// A Python value.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
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
}

fn is_dict_subclass(class: &str) -> bool {
    class.ends_with("AttributeDict") || class.ends_with("Dict") || class.ends_with("dict")
}

/// Unpickles `data`; returns the top-level value.
pub fn unpickle(data: &[u8]) -> Result<Value> {
    Machine { data, pos: 0, stack: Vec::new(), metastack: Vec::new(), memo: HashMap::new() }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    metastack: Vec<Vec<Value>>,
    memo: HashMap<u64, Value>,
}

impl<'a> Machine<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            bail!("pickle data is truncated (needed {n} bytes at offset {})", self.pos);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("pickle data is truncated (unterminated line)"))?;
        self.pos += n + 1;
        let mut s = &rest[..n];
        if s.last() == Some(&b'\r') {
            s = &s[..s.len() - 1];
        }
        std::str::from_utf8(s).map_err(|_| anyhow!("pickle: non-UTF-8 text argument at offset {}", self.pos))
    }
    fn len_arg(&mut self, n: u64) -> Result<usize> {
        let n = usize::try_from(n).map_err(|_| anyhow!("pickle: length {n} too large"))?;
        if n > self.data.len() - self.pos {
            bail!("pickle data is truncated (a {n}-byte item at offset {})", self.pos);
        }
        Ok(n)
    }
    fn push(&mut self, v: Value) {
        self.stack.push(v)
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("malformed pickle: stack underflow at offset {}", self.pos))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| anyhow!("malformed pickle: empty stack at offset {pos}"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let prev = self.metastack.pop().ok_or_else(|| anyhow!("malformed pickle: no MARK at offset {}", self.pos))?;
        Ok(std::mem::replace(&mut self.stack, prev))
    }
    fn memo_get(&self, key: u64) -> Result<Value> {
        self.memo.get(&key).cloned().ok_or_else(|| anyhow!("malformed pickle: memo entry {key} missing"))
    }
    fn memo_put(&mut self, key: u64) -> Result<()> {
        let v = self.stack.last().cloned().ok_or_else(|| anyhow!("malformed pickle: PUT on empty stack"))?;
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8().map_err(|_| anyhow!("pickle data is truncated (no STOP opcode)"))?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.u64()?;
                } // FRAME
                b'.' => return self.pop(),
                // integers
                b'J' => {
                    let v = i32::from_le_bytes(self.bytes(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))
                }
                b'I' => {
                    let s = self.line()?;
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(s.parse().map_err(|_| anyhow!("pickle: bad INT '{s}'"))?),
                    };
                    self.push(v)
                }
                b'L' => {
                    let s = self.line()?.trim_end_matches('L');
                    let v = s.parse().map(Value::Int).unwrap_or_else(|_| Value::Unsupported(Rc::new(format!("long {s}"))));
                    self.push(v)
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as u64 } else { self.u32()? as u64 };
                    let n = self.len_arg(n)?;
                    let b = self.bytes(n)?;
                    self.push(decode_long(b))
                }
                // floats
                b'G' => {
                    let v = f64::from_be_bytes(self.bytes(8)?.try_into().unwrap());
                    self.push(Value::Float(v))
                }
                b'F' => {
                    let s = self.line()?;
                    self.push(Value::Float(s.parse().map_err(|_| anyhow!("pickle: bad FLOAT '{s}'"))?))
                }
                // strings and bytes
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as u64,
                        0x8c => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.bytes(n)?;
                    self.push(Value::Str(String::from_utf8_lossy(b).into_owned()))
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s))
                }
                b'S' => {
                    let s = self.line()?;
                    let s = s.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s))
                }
                b'T' | b'U' => {
                    let n = if op == b'T' { self.u32()? as u64 } else { self.u8()? as u64 };
                    let n = self.len_arg(n)?;
                    let b = self.bytes(n)?;
                    self.push(Value::Str(b.iter().map(|&c| c as char).collect()))
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.bytes(n)?;
                    self.push(Value::Bytes(Rc::new(b.to_vec())))
                }
                // constants
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                // tuples
                b')' => self.push(Value::Tuple(Rc::new(vec![]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("malformed pickle: stack underflow at offset {at}");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)))
                }
                // lists
                b']' => self.push(Value::List(Rc::new(RefCell::new(vec![])))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v], at)?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items, at)?
                }
                // dicts
                b'}' => self.push(Value::dict(vec![])),
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items, at)?;
                    self.push(Value::dict(pairs))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)], at)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items, at)?;
                    self.set_items(p, at)?
                }
                // sets
                0x8f => self.push(Value::Set(Rc::new(RefCell::new(vec![])))),
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::Set(s) => s.borrow_mut().extend(items),
                        other => bail!("malformed pickle: ADDITEMS on a {} at offset {at}", other.kind()),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(Rc::new(RefCell::new(items))))
                }
                // stack manipulation
                b'0' => {
                    if self.stack.is_empty() {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)
                }
                b'(' => {
                    let cur = std::mem::take(&mut self.stack);
                    self.metastack.push(cur);
                }
                // memo
                b'g' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| anyhow!("pickle: bad GET '{s}'"))?;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'h' => {
                    let k = self.u8()? as u64;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'j' => {
                    let k = self.u32()? as u64;
                    let v = self.memo_get(k)?;
                    self.push(v)
                }
                b'p' => {
                    let s = self.line()?;
                    let k = s.parse().map_err(|_| anyhow!("pickle: bad PUT '{s}'"))?;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                // classes and objects
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(Rc::new((m, n)))),
                        _ => bail!("malformed pickle: STACK_GLOBAL needs two strings (offset {at})"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args, at)?;
                    self.push(v)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(cls, args, at)?;
                    self.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(cls, args, at)?;
                    self.push(v)
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let args = self.pop_mark()?;
                    let v = call(Value::Global(Rc::new((module, name))), Value::Tuple(Rc::new(args)), at)?;
                    self.push(v)
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        bail!("malformed pickle: OBJ without a class at offset {at}");
                    }
                    let cls = items.remove(0);
                    let v = call(cls, Value::Tuple(Rc::new(items)), at)?;
                    self.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    // Attributes of dicts (OrderedDict `_metadata`), tensors (hooks) etc. are not needed.
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                }
                // persistent ids
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(Rc::new(pid)))
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    self.push(Value::PersistentId(Rc::new(Value::Str(s))))
                }
                0x82..=0x84 => bail!("unsupported pickle: extension registry opcodes (offset {at})"),
                0x97 | 0x98 => bail!("unsupported pickle: out-of-band buffers (offset {at})"),
                other => bail!("malformed or unsupported pickle: unknown opcode 0x{other:02x} at offset {at}"),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>, at: usize) -> Result<()> {
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().list.extend(items),
            Value::Set(s) => s.borrow_mut().extend(items),
            other => bail!("malformed pickle: APPEND on a {} at offset {at}", other.kind()),
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>, at: usize) -> Result<()> {
        match self.top()? {
            Value::Dict(d) => d.borrow_mut().extend(items),
            Value::Object(o) => o.borrow_mut().items.extend(items),
            other => bail!("malformed pickle: SETITEM on a {} at offset {at}", other.kind()),
        }
        Ok(())
    }
}

fn pairs(mut items: Vec<Value>, at: usize) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        bail!("malformed pickle: odd number of dict items at offset {at}");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.drain(..);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn decode_long(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        return Value::Unsupported(Rc::new(format!("{}-byte integer", b.len())));
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn tuple_items(v: &Value) -> Vec<Value> {
    match v {
        Value::Tuple(t) => t.as_ref().clone(),
        Value::List(l) => l.borrow().clone(),
        _ => vec![],
    }
}

fn usizes(v: &Value, what: &str, at: usize) -> Result<Vec<usize>> {
    let items = match v {
        Value::Tuple(_) | Value::List(_) => tuple_items(v),
        // torch.Size and the like arrive as objects whose first argument is the tuple
        Value::Object(o) => o.borrow().args.first().map(tuple_items).unwrap_or_default(),
        other => bail!("tensor at pickle offset {at}: {what} is a {}, expected a tuple", other.kind()),
    };
    items
        .iter()
        .map(|x| match x.as_int() {
            Some(i) if i >= 0 => Ok(i as usize),
            _ => bail!("tensor at pickle offset {at}: bad {what} entry ({})", x.kind()),
        })
        .collect()
}

/// Applies a callable (REDUCE / NEWOBJ): a few known torch and builtin callables are interpreted,
/// everything else becomes a generic [`Object`].
fn call(callable: Value, args: Value, at: usize) -> Result<Value> {
    let (module, name) = match &callable {
        Value::Global(g) => (g.0.as_str(), g.1.as_str()),
        other => {
            // Calling a non-class (rare): keep it as an object.
            return Ok(Value::Object(Rc::new(RefCell::new(Object {
                class: other.kind(),
                args: tuple_items(&args),
                ..Default::default()
            }))));
        }
    };
    let a = tuple_items(&args);
    match (module, name) {
        ("collections", "OrderedDict") | ("collections", "defaultdict") | ("builtins", "dict") | ("__builtin__", "dict") => {
            // OrderedDict(items) / dict(items): items are (key, value) pairs, if any.
            let mut items = vec![];
            if module != "collections" || name == "OrderedDict" {
                if let Some(first) = a.first() {
                    for p in tuple_items(first) {
                        let kv = tuple_items(&p);
                        if kv.len() == 2 {
                            items.push((kv[0].clone(), kv[1].clone()));
                        }
                    }
                }
            }
            Ok(Value::dict(items))
        }
        ("builtins", "set") | ("builtins", "frozenset") | ("__builtin__", "set") => {
            Ok(Value::Set(Rc::new(RefCell::new(a.first().map(tuple_items).unwrap_or_default()))))
        }
        ("builtins", "list") => Ok(Value::List(Rc::new(RefCell::new(a.first().map(tuple_items).unwrap_or_default())))),
        ("builtins", "tuple") | ("torch", "Size") => Ok(Value::Tuple(Rc::new(a.first().map(tuple_items).unwrap_or_default()))),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => rebuild_tensor(&a, at),
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            a.into_iter().next().ok_or_else(|| anyhow!("malformed pickle: _rebuild_parameter without data (offset {at})"))
        }
        ("copyreg", "_reconstructor") | ("copy_reg", "_reconstructor") => {
            // _reconstructor(cls, base, state): an instance of cls.
            let class = match a.first() {
                Some(Value::Global(g)) => format!("{}.{}", g.0, g.1),
                _ => "object".to_string(),
            };
            Ok(Value::Object(Rc::new(RefCell::new(Object { class, ..Default::default() }))))
        }
        _ => Ok(Value::Object(Rc::new(RefCell::new(Object { class: format!("{module}.{name}"), args: a, ..Default::default() })))),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, ...)`.
fn rebuild_tensor(a: &[Value], at: usize) -> Result<Value> {
    if a.len() < 4 {
        bail!("malformed torch pickle: _rebuild_tensor with {} arguments (offset {at})", a.len());
    }
    let pid = match &a[0] {
        Value::PersistentId(p) => p.as_ref().clone(),
        other => bail!("torch pickle: tensor storage is a {} instead of a persistent id (offset {at})", other.kind()),
    };
    let pid = tuple_items(&pid);
    // ('storage', storage_type, key, location, numel)
    if pid.len() < 3 || pid[0].as_str() != Some("storage") {
        bail!("torch pickle: unrecognised storage persistent id (offset {at})");
    }
    let dtype = match &pid[1] {
        Value::Global(g) => StorageDtype::from_storage_class(&g.1).ok_or_else(|| {
            anyhow!("unsupported tensor dtype: storage class torch.{} (only float32/float16/bfloat16/float64 are supported)", g.1)
        })?,
        other => bail!("torch pickle: storage type is a {} (offset {at})", other.kind()),
    };
    let storage_key = match &pid[2] {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => bail!("torch pickle: storage key is a {} (offset {at})", other.kind()),
    };
    let offset = a[1].as_int().filter(|&o| o >= 0).ok_or_else(|| anyhow!("torch pickle: bad storage offset (offset {at})"))? as usize;
    let size = usizes(&a[2], "size", at)?;
    let stride = usizes(&a[3], "stride", at)?;
    if size.len() != stride.len() {
        bail!("torch pickle: tensor has {} sizes but {} strides (offset {at})", size.len(), stride.len());
    }
    Ok(Value::Tensor(Rc::new(TensorRef { storage_key, dtype, offset, size, stride })))
}

/// Converts a value to JSON for configuration purposes. Objects become their state (or items);
/// omegaconf containers become their content; tensors and unknowns become descriptive strings.
pub fn to_json(v: &Value) -> serde_json::Value {
    to_json_depth(v, 0)
}

fn to_json_depth(v: &Value, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    if depth > 48 {
        return J::String("<nested too deeply>".into());
    }
    let rec = |x: &Value| to_json_depth(x, depth + 1);
    let obj = |items: &[(Value, Value)]| {
        let mut m = serde_json::Map::new();
        for (k, v) in items {
            let key = match k {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                other => other.kind(),
            };
            m.insert(key, to_json_depth(v, depth + 1));
        }
        J::Object(m)
    };
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => J::String(format!("<{} bytes>", b.len())),
        Value::Tuple(t) => J::Array(t.iter().map(rec).collect()),
        Value::List(l) => J::Array(l.borrow().iter().map(rec).collect()),
        Value::Set(s) => J::Array(s.borrow().iter().map(rec).collect()),
        Value::Dict(d) => obj(&d.borrow()),
        Value::Global(g) => J::String(format!("{}.{}", g.0, g.1)),
        Value::PersistentId(_) => J::Null,
        Value::Tensor(t) => J::String(format!("<tensor {:?}>", t.size)),
        Value::Unsupported(s) => J::String(format!("<{s}>")),
        Value::Object(o) => {
            let o = o.borrow();
            // omegaconf DictConfig / ListConfig / ValueNode: {_content: ...} / {_val: ...}
            let state_items = o.state.as_ref().and_then(|s| s.dict_items());
            if let Some(items) = &state_items {
                for key in ["_content", "_val"] {
                    if let Some((_, c)) = items.iter().find(|(k, _)| k.as_str() == Some(key)) {
                        return rec(c);
                    }
                }
            }
            if !o.items.is_empty() || is_dict_subclass(&o.class) {
                let mut all = o.items.clone();
                if let Some(s) = state_items {
                    all.extend(s);
                }
                return obj(&all);
            }
            if let Some(s) = state_items {
                return obj(&s);
            }
            if !o.list.is_empty() {
                return J::Array(o.list.iter().map(rec).collect());
            }
            J::String(format!("<{} object>", o.class))
        }
    }
}
