#!/usr/bin/env python3
"""Separation of stereo mixes: panned test songs, separated by `msdm separate`, scored per channel.

The evaluation songs are mono stems. `make` pans each stem of each song to its own place (a
constant-power pan law, seeded per song: bass and drums near the centre, guitar and piano anywhere
from 90 % left to 90 % right, as a producer pans mono instrument tracks) and writes the stereo
stems and their sum, `mix.wav`. `score` separates every `mix.wav` with the `msdm` binary (the
options after `--` are passed on, e.g. `-- --stereo channels`) and scores every channel as its own
track with the paper's metric (SI-SNRi on 4 s windows with a 2 s hop, windows where at most one
stem is sounding left out; the same as `msdm eval`), so mono and stereo figures compare.

`make --haas MS` also delays guitar and piano by 0 to MS ms in the channel away from their pan
(the precedence-effect widening producers use), which colours the mid with comb filtering.
What this does not cover: stereo reverb and stereo-recorded instruments.

Usage (the venv needs numpy and soundfile):
  python tools/eval/stereo.py make data/evalset/test data/stereo_test [--seconds 15]
  python tools/eval/stereo.py score data/stereo_test runs/stereo_out [--msdm target/release/msdm] [-- ARGS...]
Prints a table and, as its last line, JSON.
"""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

STEMS = ["bass", "drums", "guitar", "piano"]
# how far from the centre each stem may be panned (1 = hard left or right)
SPREAD = {"bass": 0.2, "drums": 0.3, "guitar": 0.9, "piano": 0.9}
WINDOW, HOP, EPS, SILENCE = 88_200, 44_100, 1e-8, 1.5e-5


def pan_gains(u):
    """Constant-power pan law for a position u in [-1, 1], unity gain per channel at the centre."""
    theta = (u + 1.0) * math.pi / 4.0
    return math.sqrt(2.0) * math.cos(theta), math.sqrt(2.0) * math.sin(theta)


def make(src, dst, seconds, haas_ms=0.0):
    tracks = sorted(t for t in os.listdir(src) if os.path.isfile(os.path.join(src, t, "meta.json")))
    for k, track in enumerate(tracks):
        rng = np.random.default_rng(1000 + k)
        out = os.path.join(dst, track)
        os.makedirs(out, exist_ok=True)
        mono, rate = {}, None
        for stem in STEMS:
            path = os.path.join(src, track, f"{stem}.wav")
            if os.path.isfile(path):  # a stem the song does not have stays silence
                x, rate = sf.read(path, dtype="float32", always_2d=True)
                mono[stem] = x.mean(axis=1)[: int(seconds * rate) if seconds else None]
        t = min(len(x) for x in mono.values())
        mix = np.zeros((t, 2), dtype=np.float32)
        for stem in STEMS:
            x = mono.get(stem, np.zeros(t, dtype=np.float32))[:t]
            u = rng.uniform(-SPREAD[stem], SPREAD[stem])
            gl, gr = pan_gains(u)
            st = np.stack([gl * x, gr * x], axis=1).astype(np.float32)
            if haas_ms and stem in ("guitar", "piano"):
                # the channel away from the pan comes later (a precedence-effect widening)
                d = int(rng.uniform(0.0, haas_ms) * rate / 1000.0)
                far = 1 if u < 0 else 0
                st[:, far] = np.concatenate([np.zeros(d, np.float32), st[: t - d, far]])
            sf.write(os.path.join(out, f"{stem}.wav"), st, rate, subtype="FLOAT")
            mix += st
        sf.write(os.path.join(out, "mix.wav"), mix, rate, subtype="FLOAT")
    print(f"{len(tracks)} stereo songs in {dst}")


def si_snr(est, ref):
    n = min(len(est), len(ref))
    est, ref = est[:n].astype(np.float64), ref[:n].astype(np.float64)
    ss = ref @ ref
    alpha = (est @ ref + EPS) / (ss + EPS)
    return 10 * math.log10((alpha * alpha * ss + EPS) / (np.sum((alpha * ref - est) ** 2) + EPS))


def silent(x):
    return len(x) == 0 or math.sqrt(float(x.astype(np.float64) @ x.astype(np.float64))) / len(x) < SILENCE


def channel_windows(est, refs):
    """SI-SNRi rows (one per kept window) of one channel: est and refs are 4 mono signals."""
    t = min(len(x) for x in est + refs)
    est, refs = [x[:t] for x in est], [x[:t] for x in refs]
    mix = sum(refs)
    rows = []
    count = 0 if t <= HOP else -(-(t - HOP) // HOP)
    for w in range(count):
        a, b = w * HOP, min(w * HOP + WINDOW, t)
        if sum(not silent(r[a:b]) for r in refs) <= 1:
            continue
        rows.append([si_snr(e[a:b], r[a:b]) - si_snr(mix[a:b], r[a:b]) for e, r in zip(est, refs)])
    return rows


def score(data, out, msdm, args):
    rows = []
    tracks = sorted(t for t in os.listdir(data) if os.path.isfile(os.path.join(data, t, "mix.wav")))
    for track in tracks:
        dst = os.path.join(out, track)
        cmd = [msdm, "separate", os.path.join(data, track, "mix.wav"), "-o", dst, "--force", "-q"] + args
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        est = [sf.read(os.path.join(dst, f"{s}.wav"), dtype="float32", always_2d=True)[0] for s in STEMS]
        refs = [sf.read(os.path.join(data, track, f"{s}.wav"), dtype="float32", always_2d=True)[0] for s in STEMS]
        for c in range(refs[0].shape[1]):
            rows += channel_windows([e[:, c] for e in est], [r[:, c] for r in refs])
    means = np.mean(np.array(rows), axis=0) if rows else np.full(4, np.nan)
    result = {"per_stem": dict(zip(STEMS, [round(float(m), 2) for m in means])),
              "all": round(float(np.mean(means)), 2), "windows": len(rows), "tracks": len(tracks), "args": args}
    print("        " + "  ".join(f"{s:>7}" for s in STEMS + ["All"]))
    print("SI-SNRi " + "  ".join(f"{m:>+7.2f}" for m in list(means) + [np.mean(means)]))
    print(json.dumps(result))


def main():
    argv = sys.argv[1:]
    passed = []
    if "--" in argv:
        i = argv.index("--")
        argv, passed = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("src")
    m.add_argument("dst")
    m.add_argument("--seconds", type=float, default=0.0, help="keep only the first SECONDS of each song")
    m.add_argument("--haas", type=float, default=0.0, metavar="MS",
                   help="also delay guitar and piano in the channel away from their pan by 0 to MS ms")
    s = sub.add_parser("score")
    s.add_argument("data")
    s.add_argument("out")
    s.add_argument("--msdm", default="target/release/msdm")
    a = ap.parse_args(argv)
    if a.cmd == "make":
        make(a.src, a.dst, a.seconds, a.haas)
    else:
        score(a.data, a.out, a.msdm, passed)


if __name__ == "__main__":
    main()
