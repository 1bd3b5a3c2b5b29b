//! Where the network's parameters come from: a loaded model file, a fresh initialization for
//! training, or a shape recorder that lists every tensor without allocating it.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// How a parameter is initialized when it is created rather than loaded (PyTorch's defaults).
#[derive(Clone, Copy, Debug)]
pub enum Init {
    Ones,
    Zeros,
    /// Uniform in ±1/√fan_in (PyTorch's Conv/Linear default for weights and biases).
    FanIn(usize),
    StandardNormal,
}

pub trait Params {
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;
}

/// A name scope over a parameter source, like `VarBuilder::pp`.
#[derive(Clone)]
pub struct Scope<'a> {
    params: &'a dyn Params,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn new(params: &'a dyn Params) -> Self {
        Self { params, prefix: String::new() }
    }

    pub fn pp(&self, s: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() { s.to_string() } else { format!("{}.{s}", self.prefix) };
        Scope { params: self.params, prefix }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.params.get(&self.pp(name).prefix, shape, init)
    }
}

/// Parameters loaded from a file, by name; shapes are checked.
pub struct TensorMap {
    pub tensors: HashMap<String, Tensor>,
    used: RefCell<Vec<String>>,
}

impl TensorMap {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors, used: RefCell::new(Vec::new()) }
    }

    /// Names present in the file that the network did not ask for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        let mut v: Vec<String> = self.tensors.keys().filter(|k| !used.contains(k)).cloned().collect();
        v.sort();
        v
    }
}

impl Params for TensorMap {
    fn get(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "the model file has no tensor '{name}' (shape {shape:?}) that its config requires; \
                 the file is damaged or its config does not describe its weights"
            ))
        })?;
        if t.dims() != shape {
            candle_core::bail!(
                "tensor '{name}' in the model file has shape {:?} but the config requires {shape:?}; \
                 the weights do not belong to this config",
                t.dims()
            );
        }
        self.used.borrow_mut().push(name.to_string());
        Ok(t.clone())
    }
}

/// Records every parameter's name and shape and hands out zero-stride views of one zero, so the
/// paper's 405M-parameter network can be described without allocating it.
#[derive(Default)]
pub struct ShapeRecorder {
    pub shapes: RefCell<Vec<(String, Vec<usize>)>>,
}

impl Params for ShapeRecorder {
    fn get(&self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        self.shapes.borrow_mut().push((name.to_string(), shape.to_vec()));
        Tensor::zeros(1, DType::F32, &Device::Cpu)?.reshape(vec![1; shape.len().max(1)])?.broadcast_as(shape)
    }
}

/// Fresh trainable parameters from our own seeded RNG (candle's CPU randn is unseeded).
pub struct FreshParams {
    rng: RefCell<ChaCha20Rng>,
    device: Device,
    pub vars: RefCell<Vec<(String, Var)>>,
}

impl FreshParams {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self { rng: RefCell::new(ChaCha20Rng::seed_from_u64(seed)), device: device.clone(), vars: RefCell::new(Vec::new()) }
    }
}

impl Params for FreshParams {
    fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut rng = self.rng.borrow_mut();
        let data: Vec<f32> = match init {
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::FanIn(fan_in) => {
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            }
            Init::StandardNormal => (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect(),
        };
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, &self.device)?)?;
        self.vars.borrow_mut().push((name.to_string(), var.clone()));
        Ok(var.as_tensor().clone())
    }
}
