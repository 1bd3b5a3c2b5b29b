#!/usr/bin/env python3
"""Times the PyTorch reference network (audio-diffusion-pytorch 0.0.43, eager, as the MSDM reference
code runs it) on a CUDA GPU, for comparison with `msdm bench --device cuda --window-separation`:

  * one denoiser call D(x, sigma) at batch 1 (mean and min over --iters, after a warm-up);
  * one window's worth of sampler calls: --calls denoiser calls (default 300 = 150 steps x 2
    resamples) inside a Dirac-separation loop (churn noise, constraint, Euler step, re-noise), the
    noise drawn on the GPU.

Each in f32 and in bf16 autocast. The weights come from one of our model files (`msdm bench --config
paper --save-model paper.safetensors` writes one), loaded by their reference state-dict names.

Usage (on the GPU machine): python3 tools/bench/gpu_reference.py --model paper.safetensors
       [--length 262144] [--iters 10] [--calls 300] [--dtypes f32,bf16]
Prints a table and, as its last line, JSON.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (build_reference)


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--length", type=int, default=262144)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--dtypes", default="f32,bf16")
    a = ap.parse_args()
    compare.torch = torch
    model, cfg = compare.build_reference(a.model)
    model = model.cuda()
    denoise = model.diffusion.denoise_fn
    c = cfg["in_channels"]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, c, a.length, device="cuda", generator=g)
    mix = x.sum(1, keepdim=True) * 0.25
    steps = a.calls // 2
    sigmas = torch.cat([torch.linspace(1.0, 1e-4, steps), torch.zeros(1)]).tolist()
    res = {"length": a.length, "calls": 2 * steps, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for dt in a.dtypes.split(","):
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dt == "bf16" else torch.inference_mode
        with torch.inference_mode(), ctx():
            denoise(x, sigma=0.3)
            times = [timed(lambda: denoise(x, sigma=0.3)) * 1000 for _ in range(a.iters)]

            def window():
                s = torch.randn(1, c, a.length, device="cuda", generator=g)
                for i in range(steps):
                    sig, nxt = sigmas[i], sigmas[i + 1]
                    for r in range(2):
                        s = s + torch.randn_like(s) * 0.0
                        s[:, -1:] = mix - s[:, :-1].sum(1, keepdim=True)
                        d = denoise(s, sigma=sig)
                        e = (s - d) / sig
                        e = e - e[:, -1:]
                        s = s + e * (nxt - sig)
                        if r == 0:
                            s = s + torch.randn_like(s) * max(sig * sig - nxt * nxt, 0.0) ** 0.5
                return s

            w = timed(window)
        res[dt] = {"denoise_ms_mean": sum(times) / len(times), "denoise_ms_min": min(times), "window_seconds": w}
        print(f"{dt}: denoiser call mean {res[dt]['denoise_ms_mean']:.1f} ms, min {res[dt]['denoise_ms_min']:.1f} ms; "
              f"{2 * steps} calls in a separation loop: {w:.2f} s", file=sys.stderr)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
