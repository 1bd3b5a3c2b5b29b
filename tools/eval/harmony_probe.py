#!/usr/bin/env python3
"""Does the denoiser know the song's notes where imputation picks them? A sampler-free probe.

Runs `cargo run --release -p msdm --example harmony_probe` (the bass of the first songs of a
split noised at σ 0.5 / 1 / 2 / 3 / 5 and denoised once, with the song's own drums, guitar and
piano and with the next song's), then scores each bass estimate's pitch classes against the
song's chords and key (meta.json), as musicality.py scores an imputed bass:

- own:   chord-tone share of the estimate made with the song's own stems;
- other: the same estimate made with another song's stems (what the noisy bass alone tells);
- gap:   own - other, the harmony the network reads from the other stems.

A network that has learned the harmony shows a gap at the σ where the noisy bass no longer tells
the notes (other falls towards chance, about 0.28 here, while own stays up). Imputation decides
the notes around σ 1 to 5, so that is where a gap matters. A gap near zero everywhere means the
network has not learned the harmony, whatever the sampler does.

Usage (the venv needs numpy and soundfile):
  python tools/eval/harmony_probe.py --model M.safetensors [--data data/minislakh/validation]
      [--tracks 8] [--windows 4] [--out /tmp/msdm-harmony-probe] [--score-only]
Prints a Markdown table and, as its last line, JSON.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import musicality  # noqa: E402  (the same chroma, chord and key masks)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIGMAS = ["0.5", "1", "2", "3", "5"]  # as the example names its folders


def score(path, meta):
    return score_array(musicality.mono(path), meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.path.join(REPO, "data", "minislakh", "validation"))
    ap.add_argument("--tracks", type=int, default=8)
    ap.add_argument("--windows", type=int, default=4, help="model windows from each song's start (4: about 12 s)")
    ap.add_argument("--out", default="/tmp/msdm-harmony-probe")
    ap.add_argument("--score-only", action="store_true", help="score what an earlier run left in --out")
    a = ap.parse_args()
    if not os.path.isdir(a.data):
        raise SystemExit(f"{a.data}: no such split folder (make it with tools/train/run_default.sh or msdm data synth)")
    if not a.score_only:
        cmd = ["cargo", "run", "--quiet", "--release", "-p", "msdm", "--example", "harmony_probe", "--",
               a.model, a.data, a.out, str(a.tracks), str(a.windows)]
        subprocess.run(cmd, check=True, cwd=REPO)
    listing = os.path.join(a.out, "tracks.txt")
    if not os.path.isfile(listing):
        raise SystemExit(f"{listing} is missing: run without --score-only first")
    tracks = open(listing).read().split()
    metas = {t: json.load(open(os.path.join(a.data, t, "meta.json"))) for t in tracks}
    n = len(musicality.mono(os.path.join(a.out, f"sigma-{SIGMAS[0]}", tracks[0], "own.wav")))
    truth = [score_array(musicality.mono(os.path.join(a.data, t, "bass.wav"), n), metas[t]) for t in tracks]
    rows = {}
    for s in SIGMAS:
        own = [score(os.path.join(a.out, f"sigma-{s}", t, "own.wav"), metas[t]) for t in tracks]
        other = [score(os.path.join(a.out, f"sigma-{s}", t, "other.wav"), metas[t]) for t in tracks]
        rows[s] = {
            "own": float(np.mean([o[0] for o in own])),
            "other": float(np.mean([o[0] for o in other])),
            "own_in_key": float(np.mean([o[1] for o in own])),
            "other_in_key": float(np.mean([o[1] for o in other])),
            # songs where the song's own stems gave more chord tones than another song's
            "own_wins": int(sum(o[0] > p[0] for o, p in zip(own, other))),
        }
    print(f"{len(tracks)} songs, {n / musicality.SR:.1f} s each; the song's own bass: chord tones "
          f"{np.mean([t[0] for t in truth]):.3f}, in key {np.mean([t[1] for t in truth]):.3f}")
    print("| σ | chord tones, own stems | another song's stems | gap | songs where own wins | in key, own / other |")
    print("|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {r['own']:.3f} | {r['other']:.3f} | {r['own'] - r['other']:+.3f} | {r['own_wins']} of {len(tracks)} "
              f"| {r['own_in_key']:.3f} / {r['other_in_key']:.3f} |")
    print(json.dumps({"model": a.model, "tracks": tracks, "seconds": n / musicality.SR, "sigmas": rows}))


def score_array(x, meta):
    c, t = musicality.chroma(x)
    return musicality.share_on(c, musicality.chord_mask(meta, t)), musicality.share_on(c, musicality.key_mask(meta, t))


if __name__ == "__main__":
    main()
