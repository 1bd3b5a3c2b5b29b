//! The pickle opcodes: a stack machine with a memo and MARK levels, bounded by [`MAX_OPS`] and
//! [`MAX_STACK`]; every length it reads is checked against the bytes that are really left before
//! anything is allocated.

use super::calls::{call, CopyBudget};
use super::{Value, MAX_OPS, MAX_STACK};
use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    metastack: Vec<Vec<Value>>,
    /// Values held in `metastack` (so the stack cap covers every MARK level).
    held: usize,
    memo: HashMap<u64, Value>,
    budget: CopyBudget,
}

impl<'a> Machine<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, stack: Vec::new(), metastack: Vec::new(), held: 0, memo: HashMap::new(), budget: CopyBudget::new() }
    }
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
        self.held -= prev.len();
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

    pub(super) fn run(mut self) -> Result<Value> {
        for _ in 0..MAX_OPS {
            let at = self.pos;
            if self.stack.len() + self.held + self.metastack.len() > MAX_STACK {
                bail!("pickle holds more than {MAX_STACK} values on its stack (offset {at}): not a real checkpoint, or a damaged one");
            }
            let op = self.u8().map_err(|_| anyhow!("pickle data is truncated (no STOP opcode)"))?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    // FRAME: only a read-ahead hint, but a length past the end means a cut file.
                    let n = self.u64()?;
                    self.len_arg(n)?;
                }
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
                    self.push(Value::Str(String::from_utf8_lossy(b).into()))
                }
                b'V' => {
                    let s = self.line()?;
                    self.push(Value::Str(s.into()))
                }
                b'S' => {
                    let s = self.line()?;
                    let s = s.trim_matches(|c| c == '\'' || c == '"').into();
                    self.push(Value::Str(s))
                }
                b'T' | b'U' => {
                    let n = if op == b'T' { self.u32()? as u64 } else { self.u8()? as u64 };
                    let n = self.len_arg(n)?;
                    let b = self.bytes(n)?;
                    self.push(Value::Str(b.iter().map(|&c| c as char).collect::<String>().into()))
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
                    self.held += cur.len();
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
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(Rc::new((m.to_string(), n.to_string())))),
                        _ => bail!("malformed pickle: STACK_GLOBAL needs two strings (offset {at})"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = call(callable, args, at, &mut self.budget)?;
                    self.push(v)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(cls, args, at, &mut self.budget)?;
                    self.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(cls, args, at, &mut self.budget)?;
                    self.push(v)
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let args = self.pop_mark()?;
                    let v = call(Value::Global(Rc::new((module, name))), Value::Tuple(Rc::new(args)), at, &mut self.budget)?;
                    self.push(v)
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        bail!("malformed pickle: OBJ without a class at offset {at}");
                    }
                    let cls = items.remove(0);
                    let v = call(cls, Value::Tuple(Rc::new(items)), at, &mut self.budget)?;
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
                    self.push(Value::PersistentId(Rc::new(Value::Str(s.into()))))
                }
                0x82..=0x84 => bail!("unsupported pickle: extension registry opcodes (offset {at})"),
                0x97 | 0x98 => bail!("unsupported pickle: out-of-band buffers (offset {at})"),
                other => bail!("malformed or unsupported pickle: unknown opcode 0x{other:02x} at offset {at}"),
            }
        }
        bail!("pickle runs more than {MAX_OPS} opcodes: not a real checkpoint, or a damaged one")
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

