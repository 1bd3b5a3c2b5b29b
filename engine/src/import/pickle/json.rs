//! Pickled values as JSON, for the checkpoint's hyper-parameters and provenance.

use super::{is_dict_subclass, Value};
use anyhow::{bail, Result};
use serde_json::Value as J;

/// Deepest nesting [`to_json`] follows. Hyper-parameters nest a handful of levels (omegaconf
/// wrappers included); the bound keeps a deeply nested or cyclic pickle from overflowing the stack.
pub const MAX_JSON_DEPTH: usize = 48;

/// Most values [`to_json`] emits. Pickles share containers, so a small file can describe a tree
/// that is exponentially large once written out (a list holding itself twice, 48 levels deep);
/// real hyper-parameters have a few hundred values.
pub const MAX_JSON_VALUES: usize = 1 << 20;

/// Converts a value to JSON for configuration purposes. Objects become their state (or items);
/// omegaconf containers become their content; tensors and unknowns become descriptive strings.
/// Past [`MAX_JSON_DEPTH`] or [`MAX_JSON_VALUES`] the rest becomes a placeholder string.
pub fn to_json(v: &Value) -> J {
    let mut w = Walk { left: MAX_JSON_VALUES, strict: false };
    w.value(v, 0).unwrap_or_else(|e| J::String(format!("<{e}>")))
}

/// [`to_json`] that fails instead of writing placeholders when the value nests deeper than
/// [`MAX_JSON_DEPTH`] or holds more than [`MAX_JSON_VALUES`] values.
pub fn to_json_checked(v: &Value) -> Result<J> {
    Walk { left: MAX_JSON_VALUES, strict: true }.value(v, 0)
}

struct Walk {
    left: usize,
    strict: bool,
}

impl Walk {
    fn value(&mut self, v: &Value, depth: usize) -> Result<J> {
        if self.left == 0 {
            bail!("more than {MAX_JSON_VALUES} values (shared or self-referencing containers?)");
        }
        self.left -= 1;
        if depth > MAX_JSON_DEPTH {
            if self.strict {
                bail!("nested more than {MAX_JSON_DEPTH} levels deep");
            }
            return Ok(J::String("<nested too deeply>".into()));
        }
        let d = depth + 1;
        Ok(match v {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Value::Str(s) => J::String(s.to_string()),
            Value::Bytes(b) => J::String(format!("<{} bytes>", b.len())),
            Value::Tuple(t) => self.array(t, d)?,
            Value::List(l) => self.array(&l.borrow(), d)?,
            Value::Set(s) => self.array(&s.borrow(), d)?,
            Value::Dict(items) => self.object(&items.borrow(), d)?,
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
                            return self.value(c, d);
                        }
                    }
                }
                if !o.items.is_empty() || is_dict_subclass(&o.class) {
                    let mut all = o.items.clone();
                    if let Some(s) = state_items {
                        all.extend(s);
                    }
                    return self.object(&all, d);
                }
                if let Some(s) = state_items {
                    return self.object(&s, d);
                }
                if !o.list.is_empty() {
                    return self.array(&o.list, d);
                }
                J::String(format!("<{} object>", o.class))
            }
        })
    }

    fn array(&mut self, items: &[Value], depth: usize) -> Result<J> {
        Ok(J::Array(items.iter().map(|x| self.value(x, depth)).collect::<Result<_>>()?))
    }

    fn object(&mut self, items: &[(Value, Value)], depth: usize) -> Result<J> {
        let mut m = serde_json::Map::new();
        for (k, v) in items {
            let key = match k {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                Value::Bool(b) => b.to_string(),
                other => other.kind(),
            };
            let v = self.value(v, depth)?;
            m.insert(key, v);
        }
        Ok(J::Object(m))
    }
}
