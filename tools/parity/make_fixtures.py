#!/usr/bin/env python3
"""Builds the PyTorch parity fixtures for MSDM Stems.

For each configuration below this script
  * builds the reference network with audio-diffusion-pytorch 0.0.43 (`AudioDiffusionModel`),
  * re-initialises every parameter from a seeded normal (large enough that every layer matters),
  * writes `config.json` (the reference `model:` kwargs), `model.ckpt` (a PyTorch-Lightning-1.7-style
    checkpoint, written without Lightning installed), `cases.safetensors` and `cases.json`
    (denoiser outputs and sampler runs with every noise draw recorded).

It also writes `import_edge.ckpt`, a tiny checkpoint with f16/bf16/f64, transposed and offset tensors
for the Rust importer's unit tests.

The sampler loops follow the MSDM specification (§7.1-7.4): Euler + churn with resamples for
generation and imputation, Dirac and Gaussian likelihoods for separation.

Usage: /work/pyenv/bin/python tools/parity/make_fixtures.py [--out tests/fixtures/parity]
"""

import argparse
import json
import math
import os
import sys
import types
from collections import OrderedDict

import torch
from safetensors.torch import save_file

import audio_diffusion_pytorch
from audio_diffusion_pytorch import AudioDiffusionModel, KarrasSchedule, LogNormalDistribution


# --------------------------------------------------------------------------------------------------
# A stand-in for Lightning's AttributeDict, pickled under its real name.
# --------------------------------------------------------------------------------------------------


def _register_attribute_dict():
    names = ["pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"]
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    parsing = sys.modules["pytorch_lightning.utilities.parsing"]
    if hasattr(parsing, "AttributeDict"):
        return parsing.AttributeDict

    class AttributeDict(dict):
        """Same shape as pytorch_lightning 1.7 `AttributeDict`: a dict with attribute access."""

        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError as exp:
                raise AttributeError(f'Missing attribute "{key}"') from exp

        def __setattr__(self, key, val):
            self[key] = val

    AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
    AttributeDict.__qualname__ = "AttributeDict"
    parsing.AttributeDict = AttributeDict
    sys.modules["pytorch_lightning"].utilities = sys.modules["pytorch_lightning.utilities"]
    sys.modules["pytorch_lightning.utilities"].parsing = parsing
    return AttributeDict


AttributeDict = _register_attribute_dict()

# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------

TRAIN = dict(learning_rate=1e-4, beta1=0.9, beta2=0.99)

MSDM_TINY4 = dict(
    in_channels=4,
    channels=32,
    patch_factor=4,
    patch_blocks=1,
    resnet_groups=4,
    kernel_multiplier_downsample=2,
    kernel_sizes_init=[1, 3, 7],
    multipliers=[1, 2, 2, 2],
    factors=[4, 2, 2],
    num_blocks=[2, 1, 1],
    attentions=[False, True, True],
    attention_heads=2,
    attention_features=8,
    attention_multiplier=2,
    use_nearest_upsample=False,
    use_skip_scale=True,
    use_attention_bottleneck=True,
    diffusion_sigma_data=0.2,
)

ISDM_TINY1 = dict(
    in_channels=1,
    channels=16,
    patch_factor=8,
    patch_blocks=1,
    resnet_groups=4,
    kernel_multiplier_downsample=2,
    kernel_sizes_init=[1, 3, 7],
    multipliers=[1, 2, 2],
    factors=[4, 2],
    num_blocks=[1, 2],
    attentions=[False, True],
    attention_heads=2,
    attention_features=8,
    attention_multiplier=2,
    use_nearest_upsample=False,
    use_skip_scale=True,
    use_attention_bottleneck=True,
    diffusion_sigma_data=0.2,
)

# The paper's MSDM network (spec §4.1), 405,497,700 parameters; only written with --paper.
MSDM_PAPER = dict(
    in_channels=4,
    channels=256,
    patch_factor=16,
    patch_blocks=1,
    resnet_groups=8,
    kernel_multiplier_downsample=2,
    kernel_sizes_init=[1, 3, 7],
    multipliers=[1, 2, 4, 4, 4, 4, 4],
    factors=[4, 4, 4, 2, 2, 2],
    num_blocks=[2, 2, 2, 2, 2, 2],
    attentions=[False, False, False, True, True, True],
    attention_heads=8,
    attention_features=128,
    attention_multiplier=2,
    use_nearest_upsample=False,
    use_skip_scale=True,
    use_attention_bottleneck=True,
    diffusion_sigma_data=0.2,
)

SIGMA_DIST = dict(mean=-3.0, std=1.0)

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def length_multiple(cfg):
    m = cfg["patch_factor"] ** cfg["patch_blocks"]
    for f in cfg["factors"]:
        m *= f
    return m


def build_model(cfg, seed):
    torch.manual_seed(seed)
    model = AudioDiffusionModel(
        **cfg,
        diffusion_sigma_distribution=LogNormalDistribution(**SIGMA_DIST),
        diffusion_dynamic_threshold=0.0,
    )
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("to_time.0.0.weights"):
                # learned Fourier frequencies: std 1 like the library's own init
                p.copy_(n)
            elif name.endswith(".g") or name.endswith("groupnorm.weight"):
                # norm gains around 1
                p.copy_(1.0 + 0.2 * n)
            elif name.endswith("bias"):
                p.copy_(0.05 * n)
            else:
                # weights: std ~ 1/sqrt(fan_in); for ConvTranspose1d ([C_in, C_out, k]) fan-in is C_in*k/stride
                if p.dim() == 3 and ".upsample." in name:
                    fan_in = p.shape[0] * p.shape[2] / 2
                else:
                    fan_in = p[0].numel()
                p.copy_(n * (1.0 / math.sqrt(max(fan_in, 1))))
    return model


def smooth_signals(g, shape, amplitude=0.3):
    """Sum of a few random sinusoids with a random envelope per [b, c] row, amplitude ~`amplitude`."""
    b, c, t = shape
    tt = torch.arange(t, dtype=torch.float32) / t
    out = torch.zeros(shape)
    for _ in range(3):
        freq = 1.0 + 20.0 * torch.rand((b, c, 1), generator=g)
        phase = 2 * math.pi * torch.rand((b, c, 1), generator=g)
        amp = torch.rand((b, c, 1), generator=g)
        out += amp * torch.sin(2 * math.pi * freq * tt + phase)
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * (0.5 + torch.rand((b, c, 1), generator=g)) * tt)
    out = out * env
    out = out / out.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6) * amplitude
    return out


class RecordedNoise:
    """Standard-normal draws from a seeded generator; every draw is recorded in order."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.draws = []

    def randn(self, shape):
        e = torch.randn(shape, generator=self.g, dtype=torch.float32)
        self.draws.append(e.clone())
        return e

    def stacked(self):
        return torch.stack(self.draws, dim=0)


def _einsum_promoting(eq, *ops):
    """The library computes attention weights in f32; promote them for the float64 reruns."""
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = tuple(ops[0])
    dt = torch.float64 if any(o.dtype == torch.float64 for o in ops) else ops[0].dtype
    return torch.einsum(eq, *[o.to(dt) for o in ops])


_adp_modules = sys.modules["audio_diffusion_pytorch.modules"]
_adp_modules.einsum = _einsum_promoting


class ReplayNoise:
    """Replays recorded draws (in float64), to measure how sensitive a case is to rounding."""

    def __init__(self, draws):
        self.draws = list(draws)
        self.i = 0

    def randn(self, shape):
        e = self.draws[self.i].double()
        assert tuple(e.shape) == tuple(shape)
        self.i += 1
        return e


def karras(num_steps, sigma_max, sigma_min=1e-4, rho=7.0):
    return KarrasSchedule(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)(num_steps, "cpu")


def churn_gamma(s_churn, sigmas):
    n = len(sigmas) - 1
    return min(s_churn / n, math.sqrt(2) - 1)


# --------------------------------------------------------------------------------------------------
# Reference loops (spec §7.1-7.4)
# --------------------------------------------------------------------------------------------------


def denoise(model, x, sigma):
    """D(x, σ) with the library's EDM preconditioning and clamp; σ a 0-dim f32 tensor."""
    return model.diffusion.denoise_fn(x, sigma=float(sigma))


def generate(model, shape, sigmas, s_churn, num_resamples, noise, source=None, mask=None):
    """§7.1 total generation; with `source` and `mask` ([C], 1 = given): §7.2 imputation.

    The notebook's `generate_track` is one function for both: total generation calls it with
    source = 0 and mask = 0, so every step draws the noisy source 0 + σ·ε (then discards it) before
    the churn draw, 1 + 2·N·R draws in all either way (spec §7.1).
    """
    gamma = churn_gamma(s_churn, sigmas)
    x = sigmas[0] * noise.randn(shape)
    if mask is not None:
        m = mask.view(1, -1, 1)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # drawn at every step, with σ_i (not σ̂); unused for total generation, where
        # x = 0·s_noisy + 1·x leaves x unchanged
        eps = noise.randn(shape)
        if source is not None:
            s_noisy = source + sigma * eps
        for r in range(num_resamples):
            if source is not None:
                x = m * s_noisy + (1 - m) * x
            sigma_hat = sigma * (gamma + 1)
            x_hat = x + noise.randn(shape) * (sigma_hat**2 - sigma**2) ** 0.5
            d = (x_hat - denoise(model, x_hat, sigma_hat)) / sigma_hat
            x = x_hat + d * (sigma_next - sigma_hat)
            if r < num_resamples - 1:
                x = x + noise.randn(shape) * (sigma**2 - sigma_next**2) ** 0.5
    if source is not None:
        x = m * source + (1 - m) * x
    return x


def separate(model, mixture, num_sources, sigmas, s_churn, num_resamples, noise, source_id=None, gamma_coeff=None):
    """§7.3 Dirac separation (source_id given) or §7.4 Gaussian separation (gamma_coeff given)."""
    b, _, t = mixture.shape
    shape = (b, num_sources, t)
    gamma = churn_gamma(s_churn, sigmas)
    x = sigmas[0] * noise.randn(shape)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        for r in range(num_resamples):
            sigma_hat = sigma * (gamma + 1)
            x = x + noise.randn(shape) * (sigma_hat**2 - sigma**2) ** 0.5
            if source_id is not None:
                # constrain in place: x_c = y - sum_{n != c} x_n (others summed in channel order)
                others = torch.zeros_like(mixture)
                for n in range(num_sources):
                    if n != source_id:
                        others = others + x[:, n : n + 1]
                x = x.clone()
                x[:, source_id : source_id + 1] = mixture - others
                e = (x - denoise(model, x, sigma_hat)) / sigma_hat
                d = e - e[:, source_id : source_id + 1]
            else:
                e = (x - denoise(model, x, sigma_hat)) / sigma_hat
                g = gamma_coeff * sigma_hat
                d = e - (sigma_hat / (2 * g**2)) * (mixture - x.sum(dim=1, keepdim=True))
            x = x + d * (sigma_next - sigma_hat)
            if r < num_resamples - 1:
                x = x + noise.randn(shape) * (sigma**2 - sigma_next**2) ** 0.5
    return x


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def reference_kwargs(cfg):
    """The `model:` section as in the reference YAML, without `_target_`."""
    out = dict(cfg)
    out["diffusion_sigma_distribution"] = dict(SIGMA_DIST)
    out.update(TRAIN)
    return out


def write_checkpoint(model, cfg, path, epoch, global_step):
    sd_unet = model.unet.state_dict()
    state_dict = OrderedDict()
    # Lightning module stores the AudioDiffusionModel as `self.model`; Model1d registers the same UNet as
    # `unet` and `diffusion.net`, so every tensor appears twice and both entries share storage.
    for k, v in sd_unet.items():
        state_dict["model.unet." + k] = v
    for k, v in sd_unet.items():
        # a distinct tensor object on the same storage, as `Module.state_dict()` produces
        state_dict["model.diffusion.net." + k] = v.detach()
    # `Module.state_dict()` carries per-module `_metadata` (pickled via BUILD on the OrderedDict)
    meta = OrderedDict()
    for prefix in ("model.unet", "model.diffusion.net"):
        for k, v in sd_unet._metadata.items():
            meta[prefix + ("." + k if k else "")] = v
    state_dict._metadata = meta
    hp = AttributeDict()
    hp["_target_"] = "main.module_base.Model"
    for k, v in TRAIN.items():
        hp[k] = v
    for k, v in cfg.items():
        hp[k] = v
    hp["diffusion_sigma_distribution"] = LogNormalDistribution(**SIGMA_DIST)
    ckpt = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": state_dict,
        "hparams_name": "kwargs",
        "hyper_parameters": hp,
    }
    torch.save(ckpt, path)


def write_edge_checkpoint(path):
    """Tiny checkpoint exercising dtypes, strides, offsets, 0-dim tensors and nested hyper-parameters."""
    base = torch.arange(20, dtype=torch.float32)
    tensors = OrderedDict()
    tensors["a_f16"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).half()
    tensors["b_bf16"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).bfloat16()
    tensors["c_f64"] = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    tensors["d_transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # [4,3], strides (1,4)
    tensors["e_offset"] = base[5:11].view(2, 3)  # storage offset 5, storage of 20
    tensors["f_scalar"] = torch.tensor(3.5)
    tensors["g_param"] = torch.nn.Parameter(torch.arange(3, dtype=torch.float32))
    sd = OrderedDict()
    for k, v in tensors.items():
        sd["model.unet." + k] = v
    sd["model.diffusion.net.a_f16"] = tensors["a_f16"]
    hp = AttributeDict()
    inner = dict(MSDM_TINY4)
    inner["_target_"] = "main.module_base.Model"
    inner["diffusion_sigma_distribution"] = LogNormalDistribution(mean=-2.5, std=1.5)
    inner.update(TRAIN)
    hp["model"] = inner
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": sd,
        "hparams_name": "kwargs",
        "hyper_parameters": hp,
    }
    torch.save(ckpt, path)


def describe(tensors):
    return ", ".join(f"{k} {list(v.shape)}" for k, v in tensors.items())


def make_fixture(out_dir, name, cfg, seed, batch, length_factor, cases_spec, f64_check=True):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    model = build_model(cfg, seed)
    c = cfg["in_channels"]
    t = length_multiple(cfg) * length_factor
    g = torch.Generator().manual_seed(seed + 2)
    tensors = OrderedDict()
    meta = OrderedDict()

    with torch.no_grad():
        # Denoiser at several noise levels on a noisy realistic input.
        x = smooth_signals(g, (batch, c, t)) + 0.2 * torch.randn((batch, c, t), generator=g)
        sig = torch.tensor([1e-4, 0.05, 0.2, 1.0, 20.0], dtype=torch.float32)
        outs = torch.stack([denoise(model, x, s) for s in sig], dim=0)
        if f64_check:
            m64 = model.double()
            outs64 = torch.stack([denoise(m64, x.double(), s) for s in sig], dim=0)
            model.float()
            print(f"  denoise f64 rerun: max |out64 - out32| = {(outs64 - outs.double()).abs().max().item():.2e}")
        tensors["denoise.x"], tensors["denoise.sigmas"], tensors["denoise.out"] = x, sig, outs
        clamped = (outs.abs() >= 1.0).float().mean().item()
        print(f"  denoise: |out| mean {outs.abs().mean():.4f}, fraction clamped {clamped:.3f}, "
              f"|out - c_skip x| > 0: {(outs[2] - x * 0.5).abs().mean():.4f}")

        for case, spec in cases_spec.items():
            noise = RecordedNoise(seed + 100 + len(meta))
            sigmas = karras(spec["steps"], spec["sigma_max"])
            if case in ("separate_dirac", "separate_gaussian"):
                stems = smooth_signals(g, (batch, c, t))
                mixture = stems.sum(dim=1, keepdim=True)
                if case == "separate_dirac":
                    out = separate(model, mixture, c, sigmas, spec["s_churn"], spec["num_resamples"], noise,
                                   source_id=spec["source_id"])
                    meta[case] = dict(s_churn=spec["s_churn"], num_resamples=spec["num_resamples"],
                                      source_id=spec["source_id"])
                else:
                    out = separate(model, mixture, c, sigmas, spec["s_churn"], spec["num_resamples"], noise,
                                   gamma_coeff=spec["gamma_coeff"])
                    meta[case] = dict(s_churn=spec["s_churn"], num_resamples=spec["num_resamples"],
                                      gamma_coeff=spec["gamma_coeff"])
                tensors[f"{case}.mixture"] = mixture
            elif case == "impute":
                source = smooth_signals(g, (batch, c, t))
                mask = torch.tensor(spec["mask"], dtype=torch.float32)
                out = generate(model, (batch, c, t), sigmas, spec["s_churn"], spec["num_resamples"], noise,
                               source=source, mask=mask)
                tensors["impute.source"], tensors["impute.mask"] = source, mask
                meta[case] = dict(s_churn=spec["s_churn"], num_resamples=spec["num_resamples"])
            elif case == "generate":
                out = generate(model, (batch, c, t), sigmas, spec["s_churn"], spec["num_resamples"], noise)
                meta[case] = dict(s_churn=spec["s_churn"], num_resamples=spec["num_resamples"])
            else:
                raise ValueError(case)
            tensors[f"{case}.sigmas"] = sigmas
            tensors[f"{case}.noises"] = noise.stacked()
            tensors[f"{case}.out"] = out
            print(f"  {case}: {spec}, {len(noise.draws)} draws, |out| mean {out.abs().mean():.4f}")
            if f64_check:
                # the same run in float64 with the same draws: how much f32 rounding moves the output
                m64 = model.double()
                replay = ReplayNoise(noise.draws)
                s64 = sigmas.double()
                if case.startswith("separate"):
                    out64 = separate(m64, tensors[f"{case}.mixture"].double(), c, s64, spec["s_churn"],
                                     spec["num_resamples"], replay, source_id=spec.get("source_id"),
                                     gamma_coeff=spec.get("gamma_coeff"))
                elif case == "impute":
                    out64 = generate(m64, (batch, c, t), s64, spec["s_churn"], spec["num_resamples"], replay,
                                     source=tensors["impute.source"].double(), mask=tensors["impute.mask"].double())
                else:
                    out64 = generate(m64, (batch, c, t), s64, spec["s_churn"], spec["num_resamples"], replay)
                model.float()
                print(f"    f64 rerun: max |out64 - out32| = {(out64 - out.double()).abs().max().item():.2e}")

    tensors = OrderedDict((k, v.contiguous().float()) for k, v in tensors.items())
    save_file(tensors, os.path.join(d, "cases.safetensors"))
    os.chmod(os.path.join(d, "cases.safetensors"), 0o644)
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(reference_kwargs(cfg), f, indent=2)
        f.write("\n")
    write_checkpoint(model, cfg, os.path.join(d, "model.ckpt"), epoch=3, global_step=42)
    n_params = sum(p.numel() for p in model.unet.parameters())
    n_tensors = len(model.unet.state_dict())
    print(f"wrote {d}: {n_tensors} tensors, {n_params} parameters, T={t}, B={batch}")
    print(f"  cases: {describe(tensors)}")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "..", "tests", "fixtures", "parity"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output folder (default: tests/fixtures/parity)")
    ap.add_argument("--paper", action="store_true",
                    help="write only `msdm_paper/` (the paper's 405M-parameter config, ~1.6 GB checkpoint, "
                         "T=8192) into --out; meant for an extra folder given to MSDM_PARITY_DIR")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    if args.paper:
        torch.set_num_threads(os.cpu_count() or 1)
        make_fixture(
            args.out, "msdm_paper", MSDM_PAPER, seed=2023, batch=1, length_factor=1, f64_check=False,
            cases_spec=OrderedDict(
                separate_dirac=dict(steps=32, sigma_max=1.0, s_churn=0.5, num_resamples=2, source_id=0),
                separate_gaussian=dict(steps=32, sigma_max=1.0, s_churn=1.0, num_resamples=2, gamma_coeff=0.75),
                impute=dict(steps=4, sigma_max=20.0, s_churn=1.0, num_resamples=2, mask=[1.0, 0.0, 1.0, 0.0]),
                generate=dict(steps=4, sigma_max=20.0, s_churn=1.0, num_resamples=1),
            ),
        )
        return

    torch.set_num_threads(1)
    make_fixture(
        args.out, "msdm_tiny4", MSDM_TINY4, seed=1234, batch=2, length_factor=4,
        cases_spec=OrderedDict(
            separate_dirac=dict(steps=32, sigma_max=1.0, s_churn=0.5, num_resamples=2, source_id=1),
            separate_gaussian=dict(steps=32, sigma_max=1.0, s_churn=1.0, num_resamples=2, gamma_coeff=0.75),
            impute=dict(steps=6, sigma_max=20.0, s_churn=1.0, num_resamples=2, mask=[1.0, 0.0, 1.0, 0.0]),
            generate=dict(steps=6, sigma_max=20.0, s_churn=1.0, num_resamples=1),
        ),
    )
    make_fixture(
        args.out, "isdm_tiny1", ISDM_TINY1, seed=4321, batch=2, length_factor=4,
        cases_spec=OrderedDict(
            generate=dict(steps=6, sigma_max=20.0, s_churn=0.0, num_resamples=2),
        ),
    )
    edge = os.path.join(args.out, "import_edge.ckpt")
    write_edge_checkpoint(edge)
    print(f"wrote {edge}")


if __name__ == "__main__":
    main()
