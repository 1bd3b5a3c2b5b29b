#!/usr/bin/env python3
"""Clicks at the seams of sequential generation and imputation.

`msdm generate` and `msdm impute` make a clip longer than one window (65,536 samples at 22,050 Hz,
2.97 s) window by window; each window after the first is given the previous window's last quarter
and makes the rest. Where a window's own samples start there can be a jump, heard as a click.

For each stem file this prints, at every seam, the largest second difference within 2 ms of the
seam divided by the 99.9th percentile of the second difference over the whole file ("seam / p99.9";
above 1 means the seam is sharper than almost anything in the music), and the share of seams above
1. Music has its own sharp edges (drum hits), so look at the tonal stems (bass, guitar, piano).

Usage (the venv needs numpy and soundfile):
  python tools/eval/seams.py DIR_OR_WAV... [--window 65536] [--rate 22050]
Prints one line per file and, as its last line, JSON.
"""
import argparse
import json
import os
import sys

import numpy as np
import soundfile as sf


def seam_times(seconds, window, rate):
    """Where each window after the first starts its own samples (as the engine's sequential plan)."""
    overlap = window // 4
    hop = window - overlap
    total = int(round(seconds * rate))
    count = 1 if total <= window else 1 + -(-(total - window) // hop)
    return [(i * hop + overlap) / rate for i in range(1, count)]


def score(path, window, rate):
    x, r = sf.read(path, always_2d=True)
    x = x.mean(axis=1)
    e = np.abs(np.diff(x, 2))
    if len(e) == 0 or not np.any(e):
        return None
    ref = np.percentile(e, 99.9)
    w = max(1, int(0.002 * r))
    out = []
    for t in seam_times(len(x) / r, window, rate):
        i = int(round(t * r))
        if i + w < len(e):
            out.append(float(e[max(0, i - w):i + w].max() / ref))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--window", type=int, default=65536)
    ap.add_argument("--rate", type=int, default=22050)
    a = ap.parse_args()
    files = []
    for p in a.paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                files += [os.path.join(root, n) for n in sorted(names) if n.endswith(".wav")]
        else:
            files.append(p)
    report = {}
    for f in sorted(files):
        s = score(f, a.window, a.rate)
        if s is None:
            print(f"{f}: silent")
            continue
        report[f] = s
        print(f"{f}: seam / p99.9 " + " ".join(f"{v:.2f}" for v in s) + f"; above 1: {sum(v > 1 for v in s)} of {len(s)}")
    by_stem = {}
    for f, s in report.items():
        by_stem.setdefault(os.path.basename(f)[:-4], []).extend(s)
    summary = {k: {"seams": len(v), "above_1": sum(x > 1 for x in v), "median": float(np.median(v))} for k, v in by_stem.items() if v}
    for k, v in summary.items():
        print(f"{k}: {v['above_1']} of {v['seams']} seams sharper than the file's 99.9th percentile; median ratio {v['median']:.2f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
