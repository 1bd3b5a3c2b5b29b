#!/usr/bin/env python3
"""Does an imputed bass line fit the song it was imputed for? Objective checks for `msdm impute`.

For each mini-Slakh track (its meta.json holds the chord progression and key the synthesizer used),
the script imputes the bass from the given drums, guitar and piano with `msdm impute`, then scores
three bass lines against the song:

- imputed: the model's bass;
- true:    the song's own bass (what a perfect model would reach);
- other:   a real bass line from another song (next track in the list), cut or padded to length:
           a bass that plays real notes and rhythms, but not this song's (the chance level).

Scores (higher is better; all energy-weighted over frames, so silence does not count):
- chord tones: share of the bass's pitch-class energy (40 Hz - 1 kHz, 8192-point STFT) on the
  current chord's pitch classes (a triad is 3 of 12 pitch classes);
- in key:      share on the seven pitch classes of the song's key (natural minor for minor keys);
- rhythm lock: correlation of the bass's onset strength (log spectral flux, 11.6 ms hop) with the
  drums' onset strength, the drums widened by +-2 frames (+-23 ms).

Two diagnostics tell "wrong notes" from "no clear notes" (chord tones near chance can be either):
- pitched: share of each frame's pitch-class power on its three strongest pitch classes,
  energy-weighted (about 0.25 for noise, 0.8-0.95 for our songs' bass lines);
- level:   RMS in dBFS (guidance, for one, makes the imputed stem louder than the song's own).

Usage (the venv needs numpy and soundfile):
  python tools/eval/musicality.py --data /work/data/evalset/test --tracks 10 [--stem bass|guitar|piano] \
      [--model M.safetensors] [--msdm target/release/msdm] [--out /tmp/musicality] [--score-only] \
      [-- extra impute args]
(--score-only scores the stems an earlier run left in --out, without imputing again.)
(--stem guitar or piano imputes that stem from the other three and scores it the same way.)
Prints a Markdown table and, as its last line, JSON.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SR = 22050
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]


def mono(path, n=None):
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != SR:
        raise SystemExit(f"{path}: expected {SR} Hz, got {sr}")
    x = x.mean(axis=1)
    if n is not None:
        x = np.pad(x[:n], (0, max(0, n - len(x))))
    return x


def stft_power(x, n_fft, hop):
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # [frames, bins]


def chroma(x, n_fft=8192, hop=1024):
    """Pitch-class power per frame ([frames, 12], C = 0) and each frame's centre time in seconds."""
    p = stft_power(x, n_fft, hop)
    f = np.fft.rfftfreq(n_fft, 1 / SR)
    keep = (f >= 40) & (f <= 1000)
    pc = np.round(12 * np.log2(f[keep] / 440.0) + 69).astype(int) % 12
    c = np.zeros((p.shape[0], 12))
    for k in range(12):
        c[:, k] = p[:, keep][:, pc == k].sum(axis=1)
    t = (np.arange(p.shape[0]) * hop + n_fft / 2) / SR
    return c, t


def share_on(c, weights_mask):
    """Energy-weighted share of pitch-class power inside the per-frame mask ([frames, 12] of 0/1)."""
    total = c.sum()
    return float((c * weights_mask).sum() / total) if total > 0 else float("nan")


def chord_mask(meta, t):
    m = np.zeros((len(t), 12))
    for ch in meta.get("chords", []):
        sel = (t >= ch["start_s"]) & (t < ch["end_s"])
        for pcl in ch["pitch_classes"]:
            m[sel, pcl % 12] = 1
    return m


def key_mask(meta, t):
    scale = MINOR if meta.get("key_mode") == "minor" else MAJOR
    m = np.zeros((len(t), 12))
    for s in scale:
        m[:, (meta["key_tonic"] + s) % 12] = 1
    return m


def onset_strength(x, n_fft=1024, hop=256, fmax=None):
    p = stft_power(x, n_fft, hop)
    if fmax is not None:
        p = p[:, : int(fmax * n_fft / SR) + 1]
    logp = np.log1p(1000.0 * p)
    return np.maximum(np.diff(logp, axis=0), 0).sum(axis=1)


def rhythm_lock(bass, drums):
    b = onset_strength(bass, fmax=1000)
    d = onset_strength(drums)
    d = np.max(np.stack([np.roll(d, s) for s in range(-2, 3)]), axis=0)  # +-2 frames of tolerance
    if b.std() == 0 or d.std() == 0:
        return float("nan")
    return float(np.corrcoef(b, d)[0, 1])


def pitched(c):
    """Energy-weighted share of each frame's pitch-class power on its three strongest classes."""
    total = c.sum()
    return float(np.sort(c, axis=1)[:, -3:].sum() / total) if total > 0 else float("nan")


def level_db(x):
    return float(10 * np.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-12)))


def scores(bass, drums, meta):
    c, t = chroma(bass)
    return {
        "chord_tones": share_on(c, chord_mask(meta, t)),
        "in_key": share_on(c, key_mask(meta, t)),
        "rhythm_lock": rhythm_lock(bass, drums),
        "pitched": pitched(c),
        "level_db": level_db(bass),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a split folder of mini-Slakh tracks (TrackNNNNN/ with meta.json)")
    ap.add_argument("--tracks", type=int, default=10)
    ap.add_argument("--model", default=None)
    ap.add_argument("--msdm", default=os.path.join(REPO, "target", "release", "msdm"))
    ap.add_argument("--out", default="/tmp/msdm-musicality")
    ap.add_argument("--seconds", type=float, default=24.0, help="score the first this many seconds of each track")
    ap.add_argument("--stem", default="bass", choices=["bass", "guitar", "piano"],
                    help="the stem to impute from the other three (default bass)")
    ap.add_argument("--score-only", action="store_true", help="score what an earlier run left in --out; do not impute")
    ap.add_argument("impute_args", nargs="*", help="extra `msdm impute` arguments (after --)")
    a = ap.parse_args()

    tracks = sorted(d for d in os.listdir(a.data) if os.path.isfile(os.path.join(a.data, d, "meta.json")))
    target = a.stem
    tracks = [d for d in tracks if json.load(open(os.path.join(a.data, d, "meta.json")))["present"].get(target)]
    tracks = tracks[: a.tracks]
    if len(tracks) < 2:
        raise SystemExit(f"need at least 2 tracks with a {target}")
    rows = []
    for i, name in enumerate(tracks):
        src = os.path.join(a.data, name)
        meta = json.load(open(os.path.join(src, "meta.json")))
        n = min(int(a.seconds * SR), meta["samples"])
        clip = os.path.join(a.out, "given", name)
        os.makedirs(clip, exist_ok=True)
        given = []
        for stem in [s for s in ["bass", "drums", "guitar", "piano"] if s != target]:
            if not os.path.isfile(os.path.join(src, f"{stem}.wav")):  # a stem the song lacks stays silent
                given += ["--given", f"{stem}=silence"]
                continue
            p = os.path.join(clip, f"{stem}.wav")
            sf.write(p, mono(os.path.join(src, f"{stem}.wav"), n), SR, subtype="FLOAT")
            given += ["--given", f"{stem}={p}"]
        dest = os.path.join(a.out, "imputed", name)
        cmd = [a.msdm, "impute", *given, "-o", dest, "--force", "--quiet"]
        if a.model:
            cmd += ["--model", a.model]
        if a.score_only:
            if not os.path.isfile(os.path.join(dest, f"{target}.wav")):
                raise SystemExit(f"--score-only: {dest}/{target}.wav is missing; run without --score-only first")
        else:
            subprocess.run(cmd + a.impute_args, check=True)
        drums_file = os.path.join(src, "drums.wav")
        drums = mono(drums_file, n) if os.path.isfile(drums_file) else np.zeros(n, dtype=np.float32)
        other = tracks[(i + 1) % len(tracks)]
        row = {
            "track": name,
            "key": meta.get("key"),
            "style": meta.get("style"),
            "imputed": scores(mono(os.path.join(dest, f"{target}.wav"), n), drums, meta),
            "true": scores(mono(os.path.join(src, f"{target}.wav"), n), drums, meta),
            "other": scores(mono(os.path.join(a.data, other, f"{target}.wav"), n), drums, meta),
        }
        rows.append(row)
        print(f"{name} ({row['key']}, {row['style']}): " + "; ".join(
            f"{k} " + " / ".join(f"{row[w][k]:.2f}" for w in ["imputed", "true", "other"]) for k in row["true"]
        ) + "  (imputed / true / other)", file=sys.stderr)

    mean = {w: {k: float(np.nanmean([r[w][k] for r in rows])) for k in rows[0]["true"]} for w in ["imputed", "true", "other"]}
    print(f"| {target} | chord tones | in key | rhythm lock | pitched | level (dBFS) |")
    print("|---|---|---|---|---|---|")
    for w, label in [("imputed", "imputed (model)"), ("true", f"the song's own {target}"), ("other", f"another song's {target}")]:
        m = mean[w]
        print(f"| {label} | {m['chord_tones']:.3f} | {m['in_key']:.3f} | {m['rhythm_lock']:.3f} | {m['pitched']:.2f} | {m['level_db']:.1f} |")
    print(json.dumps({"stem": target, "tracks": len(rows), "model": a.model, "impute_args": a.impute_args, "mean": mean, "per_track": rows}))


if __name__ == "__main__":
    main()
