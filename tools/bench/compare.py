#!/usr/bin/env python3
"""Times one denoiser call D(x, sigma) of MSDM Stems (`msdm bench`) against the PyTorch reference
(audio-diffusion-pytorch 0.0.43) on the same config, the same weights, the same input and the same
thread count, alternating the two in rounds so that machine noise hits both alike.

  * The weights: `--config` is a preset (tiny, small, paper, paper-isdm), a config JSON or one of
    our model files (.safetensors). For a preset or a JSON, `msdm bench --save-model` writes the
    (seeded, PyTorch-default-initialised) model it times to a cache file once; the reference network
    is built from that file's `msdm.config` metadata and loads the file's tensors by their reference
    state-dict names (`Model1d.unet`).
  * The input: `msdm bench --dump-io` writes the x it times (seeded normal noise) and its D(x, sigma);
    the reference runs on that x and the two outputs are compared (max abs difference).
  * Threads: RAYON_NUM_THREADS for ours, torch.set_num_threads for the reference (both from
    --threads, default RAYON_NUM_THREADS or 2).

Prints a table and, as its last line, JSON with the per-round times and the ratio ours/reference
(mean of rounds of the per-call means; also the ratio of the minima).

Usage: /work/pyenv/bin/python tools/bench/compare.py --config small --length 65536 [--rounds 3]
       [--iters 3] [--threads 2] [--msdm target/release/msdm] [--cache /tmp/msdm-bench]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# torch and the reference package are imported in main(), after the OpenMP settings are known.
torch = None

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Our config keys that the reference `AudioDiffusionModel` does not take as UNet kwargs.
NOT_UNET_KWARGS = {"diffusion_sigma_distribution", "kernel_sizes_init", "learning_rate", "beta1", "beta2"}


def run_msdm(msdm, args, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    p = subprocess.run([msdm, "bench", *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"msdm bench failed ({p.returncode}):\n{p.stderr}\n{p.stdout}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def model_file_for(a):
    """Our model file for --config (created with `msdm bench --save-model` for presets/JSON)."""
    if a.config.endswith(".safetensors"):
        return a.config
    os.makedirs(a.cache, exist_ok=True)
    key = os.path.basename(a.config).replace(".json", "")
    path = os.path.join(a.cache, f"{key}.safetensors")
    if not os.path.exists(path) or a.config.endswith(".json"):
        length = a.length
        print(f"writing the {a.config} model to {path} ...", file=sys.stderr)
        run_msdm(a.msdm, ["--config", a.config, "--length", str(length), "--iters", "1", "--json",
                          "--save-model", path], a.threads)
    return path


def build_reference(path):
    from audio_diffusion_pytorch import AudioDiffusionModel, LogNormalDistribution
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        md = f.metadata()
    cfg = json.loads(md["msdm.config"])
    dist = cfg.get("diffusion_sigma_distribution") or {"mean": -3.0, "std": 1.0}
    kwargs = {k: v for k, v in cfg.items() if k not in NOT_UNET_KWARGS}
    kwargs["attentions"] = [int(x) for x in kwargs["attentions"]]
    model = AudioDiffusionModel(
        **kwargs,
        diffusion_sigma_distribution=LogNormalDistribution(**dist),
        diffusion_dynamic_threshold=0.0,
    )
    model.eval()
    state = {k: v.float() for k, v in load_file(path).items()}
    model.unet.load_state_dict(state, strict=True)
    return model, cfg


def time_reference(model, x, sigma, iters):
    with torch.inference_mode():
        y = model.diffusion.denoise_fn(x, sigma=sigma)  # warm-up
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            y = model.diffusion.denoise_fn(x, sigma=sigma)
            times.append((time.perf_counter() - t) * 1000.0)
    return y, times


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small")
    ap.add_argument("--length", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3, help="timed calls per round and side (after a warm-up)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", "2")))
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--msdm", default=os.path.join(REPO, "target", "release", "msdm"))
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "msdm-bench"))
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for PyTorch: its OpenMP threads sleep instead of spinning "
                         "(much faster for PyTorch on a machine busy with other work)")
    a = ap.parse_args()
    if a.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    global torch
    import torch as _torch
    from safetensors.torch import load_file

    torch = _torch
    if not os.path.exists(a.msdm):
        sys.exit(f"no msdm binary at {a.msdm}: build it with `cargo build --release -p msdm-cli` or pass --msdm")
    torch.set_num_threads(a.threads)

    path = model_file_for(a)
    model, cfg = build_reference(path)
    io_path = os.path.join(a.cache, f"io-{os.getpid()}.safetensors")
    common = ["--config", path, "--length", str(a.length), "--batch", str(a.batch), "--sigma", str(a.sigma),
              "--json", "--device", "cpu"]

    ours, ref, rss = [], [], []
    max_diff = None
    for r in range(a.rounds):
        extra = ["--dump-io", io_path] if r == 0 else []
        j = run_msdm(a.msdm, common + ["--iters", str(a.iters)] + extra, a.threads)
        ours.append(j["denoise_ms_mean"])
        rss.append(j.get("peak_rss_mb"))
        if r == 0:
            io = load_file(io_path)
            os.remove(io_path)
            x, y_ours = io["x"], io["y"]
            sigma = float(io["sigma"][0])
        y_ref, times = time_reference(model, x, sigma, a.iters)
        ref.append(statistics.mean(times))
        if r == 0:
            max_diff = float((y_ref - y_ours).abs().max())
        print(f"round {r + 1}: ours {ours[-1]:.1f} ms, reference {ref[-1]:.1f} ms, ratio {ours[-1] / ref[-1]:.3f}",
              file=sys.stderr)

    ratios = [o / p for o, p in zip(ours, ref)]
    res = {
        "config": a.config, "length": a.length, "batch": a.batch, "threads": a.threads, "rounds": a.rounds,
        "iters": a.iters, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_avg": os.getloadavg()[0],
        "ours_ms": ours, "reference_ms": ref,
        "ours_ms_mean": statistics.mean(ours), "reference_ms_mean": statistics.mean(ref),
        "ours_ms_min": min(ours), "reference_ms_min": min(ref),
        "ratio_mean": statistics.mean(ratios), "ratio_of_min": min(ours) / min(ref),
        "max_abs_diff": max_diff, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "ours_peak_rss_mb": max(v for v in rss if v is not None) if any(rss) else None,
        "torch": torch.__version__,
    }
    print()
    print("| config | T | threads | ours ms (mean / min) | PyTorch ms (mean / min) | ours/PyTorch (mean of rounds) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {a.config} | {a.length} | {a.threads} | {res['ours_ms_mean']:.1f} / {res['ours_ms_min']:.1f} | "
          f"{res['reference_ms_mean']:.1f} / {res['reference_ms_min']:.1f} | {res['ratio_mean']:.3f} | {max_diff:.2e} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
