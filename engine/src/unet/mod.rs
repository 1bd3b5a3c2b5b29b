//! The score network F_θ: audio-diffusion-pytorch 0.0.43 `UNet1d`, for any configuration in the
//! reference's key space, with the reference's state-dict names.

pub mod blocks;
pub mod params;
pub mod stem_embedding;

use candle_core::{Result, Tensor};

use self::blocks::{conv, Attention, Linear, ResnetBlock, Transformer};
use self::params::{Init, Params, Scope, ShapeRecorder};
use self::stem_embedding::StemEmbedding;
use crate::config::ModelConfig;
use crate::ops;

enum Upsample {
    Transposed(ops::ConvTranspose1d),
    NearestConv(ops::Conv1d, usize),
    Conv(ops::Conv1d),
}

impl Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Upsample::Transposed(c) => c.forward(x),
            Upsample::NearestConv(c, f) => c.forward(&ops::upsample_nearest(x, *f)?),
            Upsample::Conv(c) => c.forward(x),
        }
    }
}

struct DownLevel {
    downsample: ops::Conv1d,
    blocks: Vec<ResnetBlock>,
    transformer: Option<Transformer>,
}

struct UpLevel {
    blocks: Vec<ResnetBlock>,
    transformer: Option<Transformer>,
    upsample: Upsample,
}

struct Bottleneck {
    pre: ResnetBlock,
    attention: Option<Attention>,
    post: ResnetBlock,
}

/// The U-Net. `forward(x, c_noise)` is the raw network output F_θ; the EDM preconditioning is in
/// [`crate::denoiser`].
pub struct UNet1d {
    pub config: ModelConfig,
    time_weights: Tensor,
    to_time: Linear,
    to_mapping: [Linear; 2],
    /// Per-stem σ models only (not in the reference).
    stem_embedding: Option<StemEmbedding>,
    to_in: Vec<ResnetBlock>,
    downsamples: Vec<DownLevel>,
    bottleneck: Bottleneck,
    upsamples: Vec<UpLevel>,
    to_out: Vec<ResnetBlock>,
}

impl UNet1d {
    /// Builds the network, reading every parameter from `params` under the reference names.
    pub fn new(cfg: &ModelConfig, params: &dyn Params) -> Result<Self> {
        cfg.validate().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let s = Scope::new(params);
        let c = cfg.channels;
        let m = cfg.mapping_features();
        let g = cfg.resnet_groups;
        let (heads, hf, mult) = (cfg.attention_heads, cfg.attention_features, cfg.attention_multiplier);
        let n = cfg.num_layers();
        let pf = cfg.patch_factor;
        let pb = cfg.patch_blocks;

        let time_weights = s.pp("to_time.0.0").get("weights", &[c / 2], Init::StandardNormal)?;
        let to_time = Linear::new(&s.pp("to_time.0.1"), c + 1, m, true)?;
        let to_mapping = [Linear::new(&s.pp("to_mapping.0"), m, m, true)?, Linear::new(&s.pp("to_mapping.2"), m, m, true)?];
        let stem_embedding =
            if cfg.stem_sigmas { Some(StemEmbedding::new(&s.pp("stem_sigmas"), cfg.in_channels, m)?) } else { None };

        // Patcher: ResnetBlock(pre → post/f, groups min(f, pre)) then fold.
        let ic = cfg.in_channels;
        let mut to_in = Vec::with_capacity(pb);
        for i in 0..pb {
            let pre = ic * pf.pow(i as u32);
            let post = if i + 1 < pb { ic * pf.pow(i as u32 + 1) } else { c };
            to_in.push(ResnetBlock::new(&s.pp(format!("to_in.module_list.{i}.block")), pre, post / pf, pf.min(pre), m)?);
        }

        let mut downsamples = Vec::with_capacity(n);
        for i in 0..n {
            let (ci, co, f) = (c * cfg.multipliers[i], c * cfg.multipliers[i + 1], cfg.factors[i]);
            let sd = s.pp(format!("downsamples.{i}"));
            let km = cfg.kernel_multiplier_downsample;
            let downsample = conv(&sd.pp("downsample"), ci, co, f * km + 1, f, f * (km / 2), true)?;
            let blocks = (0..cfg.num_blocks[i])
                .map(|j| ResnetBlock::new(&sd.pp(format!("blocks.{j}")), co, co, g, m))
                .collect::<Result<Vec<_>>>()?;
            let transformer =
                if cfg.attentions[i] { Some(Transformer::new(&sd.pp("transformer"), co, heads, hf, mult)?) } else { None };
            downsamples.push(DownLevel { downsample, blocks, transformer });
        }

        let cb = c * cfg.multipliers[n];
        let sb = s.pp("bottleneck");
        let bottleneck = Bottleneck {
            pre: ResnetBlock::new(&sb.pp("pre_block"), cb, cb, g, m)?,
            attention: if cfg.use_attention_bottleneck {
                Some(Attention::new(&sb.pp("attention.fn"), cb, heads, hf)?)
            } else {
                None
            },
            post: ResnetBlock::new(&sb.pp("post_block"), cb, cb, g, m)?,
        };

        let mut upsamples = Vec::with_capacity(n);
        for (k, i) in (0..n).rev().enumerate() {
            let (ci, co, f) = (c * cfg.multipliers[i + 1], c * cfg.multipliers[i], cfg.factors[i]);
            let su = s.pp(format!("upsamples.{k}"));
            let num = cfg.num_blocks[i] + usize::from(cfg.attentions[i]);
            let blocks = (0..num)
                .map(|j| ResnetBlock::new(&su.pp(format!("blocks.{j}")), 2 * ci, ci, g, m))
                .collect::<Result<Vec<_>>>()?;
            let transformer =
                if cfg.attentions[i] { Some(Transformer::new(&su.pp("transformer"), ci, heads, hf, mult)?) } else { None };
            let upsample = if f == 1 {
                Upsample::Conv(conv(&su.pp("upsample"), ci, co, 3, 1, 1, true)?)
            } else if cfg.use_nearest_upsample {
                Upsample::NearestConv(conv(&su.pp("upsample.1"), ci, co, 3, 1, 1, true)?, f)
            } else {
                let sp = su.pp("upsample");
                let fan_in = co * 2 * f; // PyTorch's ConvTranspose fan-in uses weight.size(1)·k
                Upsample::Transposed(ops::ConvTranspose1d::new(
                    sp.get("weight", &[ci, co, 2 * f], Init::FanIn(fan_in))?,
                    sp.get("bias", &[co], Init::FanIn(fan_in))?,
                    f,
                ))
            };
            upsamples.push(UpLevel { blocks, transformer, upsample });
        }

        // Unpatcher: unfold then ResnetBlock(pre/f → post, groups min(f, post)).
        let oc = cfg.in_channels;
        let mut to_out = Vec::with_capacity(pb);
        for i in 0..pb {
            let pre = if i == 0 { c } else { oc * pf.pow((pb - i) as u32) };
            let post = oc * pf.pow((pb - 1 - i) as u32);
            to_out.push(ResnetBlock::new(&s.pp(format!("to_out.module_list.{i}.block")), pre / pf, post, pf.min(post), m)?);
        }

        Ok(Self {
            config: cfg.clone(),
            time_weights,
            to_time,
            to_mapping,
            stem_embedding,
            to_in,
            downsamples,
            bottleneck,
            upsamples,
            to_out,
        })
    }

    /// Every parameter's name and shape for `cfg`, without allocating the weights.
    pub fn parameter_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let rec = ShapeRecorder::default();
        Self::new(cfg, &rec)?;
        Ok(rec.shapes.into_inner())
    }

    /// Number of parameters for `cfg`, without allocating the weights.
    pub fn parameter_count(cfg: &ModelConfig) -> Result<usize> {
        Ok(Self::parameter_shapes(cfg)?.iter().map(|(_, s)| s.iter().product::<usize>()).sum())
    }

    /// The σ mapping m ∈ R^{B×4C} from `c_noise` = ln(σ)/4, shape `[B]`, and for per-stem σ
    /// models the per-stem c_noise `[B, C]`.
    fn mapping(&self, c_noise: &Tensor, stem_noise: Option<&Tensor>) -> Result<Tensor> {
        let c = c_noise.unsqueeze(1)?; // [B, 1]
        let freqs = (c.broadcast_mul(&self.time_weights.unsqueeze(0)?)? * (2.0 * std::f64::consts::PI))?;
        let feats = Tensor::cat(&[&c, &freqs.sin()?, &freqs.cos()?], 1)?;
        let mut t = ops::gelu(&self.to_time.forward(&feats)?)?;
        if let Some(e) = &self.stem_embedding {
            // Without per-stem levels every stem is at the batch item's σ.
            let all = c.broadcast_as((c.dim(0)?, self.config.in_channels))?;
            t = (t + e.forward(stem_noise.unwrap_or(&all))?)?;
        }
        let t = ops::gelu(&self.to_mapping[0].forward(&t)?)?;
        ops::gelu(&self.to_mapping[1].forward(&t)?)
    }

    /// Whether the network takes one noise level per stem ([`Self::forward_stems`]).
    pub fn takes_stem_sigmas(&self) -> bool {
        self.stem_embedding.is_some()
    }

    /// F_θ(x, c_noise): `x` `[B, in_channels, T]` with T a multiple of `config.length_multiple()`.
    pub fn forward(&self, x: &Tensor, c_noise: &Tensor) -> Result<Tensor> {
        self.forward_stems(x, c_noise, None)
    }

    /// F_θ with per-stem noise levels `stem_noise` `[B, C]` (c_noise per stem) for a per-stem σ
    /// model; `None` (or a reference model, which ignores it) is [`Self::forward`].
    pub fn forward_stems(&self, x: &Tensor, c_noise: &Tensor, stem_noise: Option<&Tensor>) -> Result<Tensor> {
        if x.device().is_cpu() {
            ops::on_workers(|| self.forward_on_device(x, c_noise, stem_noise))
        } else {
            self.forward_on_device(x, c_noise, stem_noise)
        }
    }

    fn forward_on_device(&self, x: &Tensor, c_noise: &Tensor, stem_noise: Option<&Tensor>) -> Result<Tensor> {
        let t = x.dim(2)?;
        let mult = self.config.length_multiple();
        if t % mult != 0 {
            candle_core::bail!("input length {t} is not a multiple of the model's length multiple {mult}");
        }
        // Every ResnetBlock reads the mapping through SiLU (`to_scale_shift` = SiLU → Linear):
        // applied once here instead of once per block.
        let mapping = ops::silu(&self.mapping(c_noise, stem_noise)?)?;
        let pf = self.config.patch_factor;
        let skip_scale = if self.config.use_skip_scale { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };

        let mut x = x.clone();
        for block in &self.to_in {
            x = ops::patch(&block.forward(&x, &mapping)?, pf)?;
        }
        let first = x.clone();
        let mut skips: Vec<Vec<Tensor>> = Vec::with_capacity(self.downsamples.len());
        for level in &self.downsamples {
            x = level.downsample.forward(&x)?;
            let mut ls = Vec::new();
            for b in &level.blocks {
                x = b.forward(&x, &mapping)?;
                ls.push(x.clone());
            }
            if let Some(tr) = &level.transformer {
                x = tr.forward(&x)?;
                ls.push(x.clone());
            }
            skips.push(ls);
        }
        x = self.bottleneck.pre.forward(&x, &mapping)?;
        if let Some(att) = &self.bottleneck.attention {
            x = att.forward(&x)?; // not residual in the reference
        }
        x = self.bottleneck.post.forward(&x, &mapping)?;
        for level in &self.upsamples {
            let mut ls = skips.pop().expect("one skip list per level");
            for b in &level.blocks {
                let skip = ls.pop().expect("one skip per block");
                x = b.forward(&ops::cat_scaled(&x, &skip, skip_scale)?, &mapping)?;
            }
            if let Some(tr) = &level.transformer {
                x = tr.forward(&x)?;
            }
            x = level.upsample.forward(&x)?;
        }
        x = (x + first)?;
        for block in &self.to_out {
            x = block.forward(&ops::unpatch(&x, pf)?, &mapping)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_config_has_405m_parameters() {
        assert_eq!(UNet1d::parameter_count(&ModelConfig::paper()).unwrap(), 405_497_700);
        assert_eq!(UNet1d::parameter_count(&ModelConfig::paper_isdm()).unwrap(), 405_491_100);
        assert_eq!(UNet1d::parameter_shapes(&ModelConfig::paper()).unwrap().len(), 434);
    }

    #[test]
    fn tiny_network_runs_and_depends_on_sigma() {
        let cfg = ModelConfig::tiny();
        let p = params::FreshParams::new(1, &candle_core::Device::Cpu);
        let net = UNet1d::new(&cfg, &p).unwrap();
        let t = cfg.length_multiple() * 4;
        let x = Tensor::from_vec(crate::noise::SeededNoise::new(2).standard_normal(2 * 4 * t), (2, 4, t), &candle_core::Device::Cpu).unwrap();
        let a = net.forward(&x, &Tensor::new(&[0.1f32, 0.1], &candle_core::Device::Cpu).unwrap()).unwrap();
        let b = net.forward(&x, &Tensor::new(&[-0.5f32, -0.5], &candle_core::Device::Cpu).unwrap()).unwrap();
        assert_eq!(a.dims(), &[2, 4, t]);
        let d = (a - b).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 1e-3);
    }
}
