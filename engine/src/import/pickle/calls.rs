//! The callables a torch checkpoint's pickle applies (REDUCE / NEWOBJ): builtins, `OrderedDict`,
//! torch's tensor rebuilders; everything else becomes a generic [`Object`].

use super::{Object, StorageDtype, TensorRef, Value, MAX_COPIED_VALUES};
use anyhow::{anyhow, bail, Result};
use std::cell::RefCell;
use std::rc::Rc;

/// What calls may still copy out of argument tuples (see [`MAX_COPIED_VALUES`]).
pub(super) struct CopyBudget {
    left: usize,
}

impl CopyBudget {
    pub(super) fn new() -> Self {
        Self { left: MAX_COPIED_VALUES }
    }

    /// The items of a tuple or list (empty for anything else), charged to the budget before they
    /// are copied.
    fn items(&mut self, v: &Value, at: usize) -> Result<Vec<Value>> {
        let n = match v {
            Value::Tuple(t) => t.len(),
            Value::List(l) => l.borrow().len(),
            _ => 0,
        };
        if n > self.left {
            bail!(
                "pickle copies more than {MAX_COPIED_VALUES} values into objects (offset {at}): not a real checkpoint, \
                 or a damaged one"
            );
        }
        self.left -= n;
        Ok(match v {
            Value::Tuple(t) => t.as_ref().clone(),
            Value::List(l) => l.borrow().clone(),
            _ => vec![],
        })
    }
}

fn usizes(v: &Value, what: &str, at: usize, budget: &mut CopyBudget) -> Result<Vec<usize>> {
    let items = match v {
        Value::Tuple(_) | Value::List(_) => budget.items(v, at)?,
        // torch.Size and the like arrive as objects whose first argument is the tuple
        Value::Object(o) => match o.borrow().args.first() {
            Some(first) => budget.items(first, at)?,
            None => vec![],
        },
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
pub(super) fn call(callable: Value, args: Value, at: usize, budget: &mut CopyBudget) -> Result<Value> {
    let (module, name) = match &callable {
        Value::Global(g) => (g.0.as_str(), g.1.as_str()),
        other => {
            // Calling a non-class (rare): keep it as an object.
            return Ok(Value::Object(Rc::new(RefCell::new(Object {
                class: other.kind(),
                args: budget.items(&args, at)?,
                ..Default::default()
            }))));
        }
    };
    let a = budget.items(&args, at)?;
    let first_items = |budget: &mut CopyBudget| match a.first() {
        Some(first) => budget.items(first, at),
        None => Ok(vec![]),
    };
    match (module, name) {
        ("collections", "OrderedDict") | ("collections", "defaultdict") | ("builtins", "dict") | ("__builtin__", "dict") => {
            // OrderedDict(items) / dict(items): items are (key, value) pairs, if any.
            let mut items = vec![];
            if module != "collections" || name == "OrderedDict" {
                for p in first_items(budget)? {
                    let kv = budget.items(&p, at)?;
                    if let [k, v] = kv.as_slice() {
                        items.push((k.clone(), v.clone()));
                    }
                }
            }
            Ok(Value::dict(items))
        }
        ("builtins", "set") | ("builtins", "frozenset") | ("__builtin__", "set") => {
            Ok(Value::Set(Rc::new(RefCell::new(first_items(budget)?))))
        }
        ("builtins", "list") => Ok(Value::List(Rc::new(RefCell::new(first_items(budget)?)))),
        ("builtins", "tuple") | ("torch", "Size") => Ok(Value::Tuple(Rc::new(first_items(budget)?))),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => rebuild_tensor(&a, at, budget),
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
fn rebuild_tensor(a: &[Value], at: usize, budget: &mut CopyBudget) -> Result<Value> {
    if a.len() < 4 {
        bail!("malformed torch pickle: _rebuild_tensor with {} arguments (offset {at})", a.len());
    }
    let pid = match &a[0] {
        Value::PersistentId(p) => p.as_ref().clone(),
        other => bail!("torch pickle: tensor storage is a {} instead of a persistent id (offset {at})", other.kind()),
    };
    let pid = budget.items(&pid, at)?;
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
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => bail!("torch pickle: storage key is a {} (offset {at})", other.kind()),
    };
    let storage_numel = match pid.get(4) {
        None => None,
        Some(v) => Some(
            v.as_int()
                .filter(|&n| n >= 0)
                .ok_or_else(|| anyhow!("torch pickle: bad storage length ({}) for storage '{storage_key}' (offset {at})", v.kind()))?
                as usize,
        ),
    };
    let offset = a[1].as_int().filter(|&o| o >= 0).ok_or_else(|| anyhow!("torch pickle: bad storage offset (offset {at})"))? as usize;
    let size = usizes(&a[2], "size", at, budget)?;
    let stride = usizes(&a[3], "stride", at, budget)?;
    if size.len() != stride.len() {
        bail!("torch pickle: tensor has {} sizes but {} strides (offset {at})", size.len(), stride.len());
    }
    Ok(Value::Tensor(Rc::new(TensorRef { storage_key, dtype, offset, size, stride, storage_numel })))
}
