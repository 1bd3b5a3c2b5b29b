#!/usr/bin/env python3
"""Times one training step of MSDM Stems (`msdm train`) against the PyTorch reference
(audio-diffusion-pytorch 0.0.43) on the same config, the same initial weights, the same batch shape,
the same optimiser and the same thread count, alternating the two in rounds so that machine noise hits
both alike.

A training step is, on both sides: draw σ per item (the config's log-normal) and ε, x_noisy = x + σ·ε,
D(x_noisy, σ) with EDM preconditioning and the clamp, the weighted squared error (the library's
`Diffusion.forward` loss, spec §5), backward, and one Adam step (lr and betas from the config, default
1e-4 and (0.9, 0.99), eps 1e-8).

  * Ours: `msdm train --init MODEL --config CFG --window L --batch B --steps W+S --log-every 1 --ema 0
    --val-every 0` on a small synthesized dataset (or --data); the step times are 1/steps_per_s of the
    rows of its train.csv (each row covers one step: batch read, noise, forward, backward, Adam), the
    first W rows (warm-up) left out. No weight average (the reference keeps none). Its batch comes from
    WAV files in the page cache, read per step.
  * Reference: a child process builds `AudioDiffusionModel` from the same model file (`compare.py`'s
    `build_reference`: the config from `msdm.config`, the tensors by their reference names), makes
    `torch.optim.Adam(model.parameters(), lr, betas)` and times W+S steps of
    `zero_grad(); loss = model(x); loss.backward(); opt.step()` on a fixed in-memory batch x
    [B, C, L] (the library draws σ and ε inside `forward`).
  * The model file: `msdm bench --save-model` writes the (seeded) model of --config once to --cache,
    as compare.py does; both sides start from its weights.
  * Threads: RAYON_NUM_THREADS for ours, torch.set_num_threads (and OMP_NUM_THREADS) for the
    reference, both from --threads.
  * Peak RSS: each side runs as a child process and its ru_maxrss comes from os.wait4 (the kernel's
    figure that /usr/bin/time -v reports as "Maximum resident set size"), in MiB.

Rounds alternate the order (ours first in odd rounds, PyTorch first in even ones). Prints per-round
times on stderr, a Markdown table, and, as its last line, one JSON object: per config the per-round
mean step times, their means and minima, the ratio ours/PyTorch as the mean of the per-round ratios
and as the ratio of the minima, and both peak RSS figures.

Usage: /work/pyenv/bin/python tools/bench/compare_train.py --config small --config wide128
       [--rounds 3] [--steps 5] [--warmup 1] [--threads 2] [--batch 4] [--length 65536]
       [--msdm target/release/msdm] [--data DIR] [--cache /tmp/msdm-bench] [--omp-passive]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

# Config names that are files in the repository (anything else goes to msdm as is: a preset or a path).
NAMED_CONFIGS = {"wide128": os.path.join(REPO, "tools", "train", "wide128.json")}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def run_child(cmd, env, out_path, err_path):
    """Runs cmd to completion; returns (exit code, peak RSS in MiB, wall seconds)."""
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss / 1024.0, wall


def tail(path, n=30):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# The reference side (child process)
# --------------------------------------------------------------------------------------------------


def reference_worker(a):
    import torch

    torch.set_num_threads(a.threads)
    import compare  # build_reference: the same network and weights as compare.py uses

    model, cfg = compare.build_reference(a.worker_ref)
    model.train()
    lr = cfg.get("learning_rate") or 1e-4
    betas = (cfg.get("beta1") or 0.9, cfg.get("beta2") or 0.99)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    g = torch.Generator().manual_seed(a.seed)
    channels = cfg["in_channels"]
    # a fixed batch of audio-like values (the content does not change the work done)
    x = (0.1 * torch.randn((a.batch, channels, a.length), generator=g)).clamp(-1.0, 1.0)
    torch.manual_seed(a.seed)
    times, losses = [], []
    for _ in range(a.warmup + a.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "step_s": times[a.warmup:], "warmup_s": times[:a.warmup], "loss": losses, "params": n_params,
        "lr": lr, "betas": list(betas), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


def run_reference(a, model_path, work):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    if a.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-ref", model_path, "--threads", str(a.threads),
           "--batch", str(a.batch), "--length", str(a.length), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--seed", str(a.seed)]
    out, err = os.path.join(work, "ref.out"), os.path.join(work, "ref.err")
    rc, rss, wall = run_child(cmd, env, out, err)
    if rc != 0:
        sys.exit(f"the reference step failed ({rc}):\n{tail(err)}")
    res = json.loads(tail(out, 1))
    res["peak_rss_mb"], res["wall_s"] = rss, wall
    return res


# --------------------------------------------------------------------------------------------------
# Our side
# --------------------------------------------------------------------------------------------------


def ensure_data(a):
    """A small synthesized dataset (train/ and validation/) in the cache, unless --data is given."""
    if a.data:
        return a.data
    root = os.path.join(a.cache, "train-data")
    stamp = os.path.join(root, ".complete")
    if not os.path.exists(stamp):
        sf = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
        if not os.path.exists(sf):
            sf = "/usr/share/sounds/sf2/TimGM6mb.sf2"
        print(f"synthesizing a small dataset into {root} ...", file=sys.stderr)
        for split, count in (("train", 4), ("validation", 1)):
            p = subprocess.run([a.msdm, "data", "synth", "--out", root, "--soundfont", sf, "--split", split,
                                "--count", str(count), "--seconds", "20", "30", "--force", "--quiet"],
                               env=dict(os.environ, RAYON_NUM_THREADS=str(a.threads)), capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"msdm data synth failed ({p.returncode}):\n{p.stderr}")
        open(stamp, "w").close()
    return root


def run_ours(a, cfg_arg, model_path, data, work):
    run_dir = os.path.join(work, "run")
    subprocess.run(["rm", "-rf", run_dir], check=True)
    cmd = [a.msdm, "train", "--run-dir", run_dir, "--data", data, "--config", cfg_arg, "--init", model_path,
           "--window", str(a.length), "--batch", str(a.batch), "--steps", str(a.warmup + a.steps),
           "--log-every", "1", "--val-every", "0", "--checkpoint-every", "1000000", "--ema", "0",
           "--device", "cpu", "--quiet"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out, err = os.path.join(work, "ours.out"), os.path.join(work, "ours.err")
    rc, rss, wall = run_child(cmd, env, out, err)
    if rc != 0:
        sys.exit(f"msdm train failed ({rc}): {' '.join(cmd)}\n{tail(err)}{tail(out)}")
    with open(os.path.join(run_dir, "train.csv")) as f:
        rows = [line.strip().split(",") for line in f.readlines()[1:] if line.strip()]
    # step,loss,steps_per_s,elapsed_s,val_loss,ema_val_loss; one row per step (--log-every 1)
    if len(rows) != a.warmup + a.steps:
        sys.exit(f"expected {a.warmup + a.steps} rows in {run_dir}/train.csv, found {len(rows)}")
    times = [1.0 / float(r[2]) for r in rows]
    losses = [float(r[1]) for r in rows]
    return {"step_s": times[a.warmup:], "warmup_s": times[:a.warmup], "loss": losses, "peak_rss_mb": rss,
            "wall_s": wall}


# --------------------------------------------------------------------------------------------------


def bench_config(a, name, data):
    import compare

    cfg_arg = NAMED_CONFIGS.get(name, name)
    ns = argparse.Namespace(config=cfg_arg, cache=a.cache, length=a.length, msdm=a.msdm, threads=a.threads)
    model_path = compare.model_file_for(ns)
    work = tempfile.mkdtemp(prefix="msdm-train-bench-")
    ours, ref, ours_rss, ref_rss = [], [], [], []
    ours_loss, ref_loss = [], []
    params = torch_version = None
    for r in range(a.rounds):
        order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
        for side in order:
            if side == "ours":
                o = run_ours(a, cfg_arg, model_path, data, work)
                ours.append(statistics.mean(o["step_s"]))
                ours_rss.append(o["peak_rss_mb"])
                ours_loss.append(o["loss"])
            else:
                p = run_reference(a, model_path, work)
                ref.append(statistics.mean(p["step_s"]))
                ref_rss.append(p["peak_rss_mb"])
                ref_loss.append(p["loss"])
                params, torch_version = p["params"], p["torch"]
        print(f"[{name}] round {r + 1}/{a.rounds} (load {os.getloadavg()[0]:.2f}): ours {ours[-1]:.3f} s/step "
              f"(peak RSS {ours_rss[-1]:.0f} MiB), PyTorch {ref[-1]:.3f} s/step (peak RSS {ref_rss[-1]:.0f} MiB), "
              f"ratio {ours[-1] / ref[-1]:.3f}", file=sys.stderr)
    subprocess.run(["rm", "-rf", work], check=True)
    ratios = [o / p for o, p in zip(ours, ref)]
    return {
        "config": name, "config_arg": cfg_arg, "params": params, "torch": torch_version,
        "ours_step_s": ours, "pytorch_step_s": ref,
        "ours_step_s_mean": statistics.mean(ours), "pytorch_step_s_mean": statistics.mean(ref),
        "ours_step_s_min": min(ours), "pytorch_step_s_min": min(ref),
        "ratio_mean": statistics.mean(ratios), "ratio_of_min": min(ours) / min(ref),
        "ours_peak_rss_mb": max(ours_rss), "pytorch_peak_rss_mb": max(ref_rss),
        "ours_loss_first_last": [ours_loss[0][0], ours_loss[0][-1]],
        "pytorch_loss_first_last": [ref_loss[0][0], ref_loss[0][-1]],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append",
                    help="small, wide128 (tools/train/wide128.json), another preset or a config JSON; repeatable "
                         "(default: small)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round and side (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per round and side")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RAYON_NUM_THREADS", "2")))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=65536, help="training window in samples")
    ap.add_argument("--seed", type=int, default=0, help="the reference's batch and draws")
    ap.add_argument("--msdm", default=os.path.join(REPO, "target", "release", "msdm"))
    ap.add_argument("--data", help="dataset root for ours (default: 4 + 1 synthesized songs in --cache)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "msdm-bench"))
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE for PyTorch (its OpenMP threads sleep instead of spinning)")
    ap.add_argument("--worker-ref", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_ref:
        return reference_worker(a)
    if a.warmup < 0 or a.steps < 1 or a.rounds < 1:
        sys.exit("--steps and --rounds must be at least 1, --warmup at least 0")
    configs = a.config or ["small"]
    if not os.path.exists(a.msdm):
        sys.exit(f"no msdm binary at {a.msdm}: build it with `cargo build --release -p msdm-cli` or pass --msdm")
    os.makedirs(a.cache, exist_ok=True)
    load_start = os.getloadavg()
    start = time.strftime("%Y-%m-%d %H:%M")
    data = ensure_data(a)
    results = {name: bench_config(a, name, data) for name in configs}
    res = {
        "date": start, "cpu": cpu_name(), "cores": os.cpu_count(), "load_avg_start": list(load_start),
        "load_avg_end": list(os.getloadavg()), "threads": a.threads, "batch": a.batch, "length": a.length,
        "rounds": a.rounds, "steps": a.steps, "warmup": a.warmup,
        "omp_wait_policy": "PASSIVE" if a.omp_passive else os.environ.get("OMP_WAIT_POLICY"),
        "configs": results,
    }
    print()
    print("| config | params | ours s/step (mean / min) | PyTorch s/step (mean / min) | ours/PyTorch (mean of rounds) "
          "| ratio of minima | peak RSS ours / PyTorch (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['params']:,} | {r['ours_step_s_mean']:.3f} / {r['ours_step_s_min']:.3f} | "
              f"{r['pytorch_step_s_mean']:.3f} / {r['pytorch_step_s_min']:.3f} | {r['ratio_mean']:.3f} | "
              f"{r['ratio_of_min']:.3f} | {r['ours_peak_rss_mb']:.0f} / {r['pytorch_peak_rss_mb']:.0f} |")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
