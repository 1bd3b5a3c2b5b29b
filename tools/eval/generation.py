#!/usr/bin/env python3
"""Do stems generated from nothing fit each other? Objective checks for `msdm generate`.

The script generates --clips clips with `msdm generate` (seeds --seed0, --seed0 + 1, ...; all four
stems at once, at 22,050 Hz) and scores how well each clip's stems agree, in two pairings:

- together: each stem against the other stems of its own clip (what the model made as one piece);
- shuffled: each stem against the other stems of the NEXT clip (i + 1 mod N): stems that play, with
            the model's own sound, but not together (the chance level).
A model that makes stems which fit scores clearly higher "together" than "shuffled"; a model that
makes four good-sounding but unrelated stems scores the same in both rows.

Scores between stems (higher is better; energy-weighted over frames, so silence does not count):
- harmony agreement (bass, guitar, piano): share of the stem's pitch-class power (40 Hz - 1 kHz,
  8192-point STFT, musicality.chroma) that falls, frame by frame, on the three strongest pitch
  classes of the other two pitched stems summed (bass against guitar + piano, and so on); frames
  where those others are near silent (below 1e-3 of their loudest frame) are left out, since there
  is nothing to agree with. Three of twelve pitch classes, yet chance is not simply 0.25: it
  depends on how many keys the clips share and how focused each stem's notes are, hence the
  shuffled row (real mini-Slakh songs: about 0.65-0.71 together, 0.13-0.19 shuffled);
- rhythm lock (bass, guitar, piano): correlation of the stem's onset strength (below 1 kHz) with
  the drums' onset strength, the drums widened by +-2 frames (+-23 ms) (musicality.rhythm_lock).

Per-stem diagnostics (the same stems in both rows, so the same numbers):
- pitched: share of each frame's pitch-class power on its three strongest pitch classes
  (about 0.25 for noise, 0.8-0.95 for mini-Slakh bass lines); tells "no clear notes" from
  "wrong notes" when harmony agreement is low;
- level:   RMS in dBFS.
A stem below -80 dBFS counts as silent: no pitched or level score (the count goes to stderr and
the JSON), and no harmony or rhythm score where it would be the only thing to agree with.

--real DIR scores real songs instead (a mini-Slakh split folder, DIR/TrackNNNNN/{stem}.wav, the
first --clips tracks whose meta.json has all four stems present and audible in their first
--seconds seconds; tracks whose stem waits out that part are skipped, with a note on stderr):
the sanity check that "together" beats "shuffled" when the stems do belong together.

Usage (the venv needs numpy and soundfile):
  python tools/eval/generation.py [--clips 8] [--seconds 12] [--seed0 0] [--model M.safetensors] \
      [--msdm target/release/msdm] [--out /tmp/msdm-generation] [--score-only] [--spectrograms] \
      [--real DIR] [-- extra generate args, e.g. --steps 16]
(--score-only scores the clips an earlier run left in --out/generated, without generating again.)
(--spectrograms also writes --out/spectrograms/{clip}-{stem}.png with sox, if sox is installed.)
Prints per-clip lines on stderr, a Markdown table, and, as its last line, JSON.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import musicality  # noqa: E402  (the sibling script's helpers, so both scripts measure alike)

SR = musicality.SR
REPO = musicality.REPO
STEMS = ["bass", "drums", "guitar", "piano"]
PITCHED = ["bass", "guitar", "piano"]  # the stems with notes; drums only count for rhythm
QUIET = 1e-3  # frames of the others below this share of their loudest frame hold nothing to agree with
SILENT_DB = -80.0  # a stem quieter than this plays nothing; its level would drag the mean towards -120 dB


def harmony_agreement(c_stem, c_others):
    """Energy-weighted share of c_stem's pitch-class power on the 3 strongest classes of c_others.

    Both are [frames, 12] from musicality.chroma of equally long signals, so frames line up.
    """
    energy = c_others.sum(axis=1)
    if energy.max() <= 0:
        return float("nan")
    keep = energy >= QUIET * energy.max()
    top = np.argsort(c_others[keep], axis=1)[:, -3:]
    mask = np.zeros((int(keep.sum()), 12))
    np.put_along_axis(mask, top, 1.0, axis=1)
    return musicality.share_on(c_stem[keep], mask)


def score_pair(own, context):
    """Scores of `own`'s stems against `context`'s stems (the same clip, or the next one).

    own / context: {"audio": {stem: samples}, "chroma": {stem: [frames, 12]}}.
    """
    s = {}
    for stem in PITCHED:
        others = sum(context["chroma"][o] for o in PITCHED if o != stem)
        s[f"{stem}_harmony"] = harmony_agreement(own["chroma"][stem], others)
    for stem in PITCHED:
        s[f"{stem}_rhythm"] = musicality.rhythm_lock(own["audio"][stem], context["audio"]["drums"])
    for stem in STEMS:
        level = musicality.level_db(own["audio"][stem])
        s[f"{stem}_silent"] = level < SILENT_DB
        s[f"{stem}_pitched"] = float("nan") if level < SILENT_DB else musicality.pitched(own["chroma"][stem])
        s[f"{stem}_level_db"] = float("nan") if level < SILENT_DB else level
    return s


def load_clip(files, n):
    """Loads a clip's four stems, cut or zero-padded to n samples, and their chroma."""
    audio = {stem: musicality.mono(files[stem], n) for stem in STEMS}
    return {"audio": audio, "chroma": {stem: musicality.chroma(audio[stem])[0] for stem in STEMS}}


def real_clips(folder, count, seconds):
    """(name, {stem: path}, samples) for the first `count` tracks of a split with all four stems."""
    if not os.path.isdir(folder):
        raise SystemExit(f"--real {folder}: no such folder")
    clips = []
    for name in sorted(os.listdir(folder)):
        meta_path = os.path.join(folder, name, "meta.json")
        if not os.path.isfile(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        if not all(meta.get("present", {}).get(stem) for stem in STEMS):
            continue
        files = {stem: os.path.join(folder, name, f"{stem}.wav") for stem in STEMS}
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            raise SystemExit(f"{meta_path} says all stems are present, but {', '.join(missing)} is missing")
        n = min(int(seconds * SR), int(meta.get("samples", sf.info(files["bass"]).frames)))
        # "present" is about the whole song; a stem that waits out the scored part (an intro) would
        # leave nothing to agree with, so such a track is skipped rather than scored half-empty.
        silent = [stem for stem in STEMS if musicality.level_db(musicality.mono(files[stem], n)) < SILENT_DB]
        if silent:
            print(f"{name}: skipped, {', '.join(silent)} silent in the first {n / SR:g} s", file=sys.stderr)
            continue
        clips.append((name, files, n))
        if len(clips) == count:
            break
    if len(clips) < 2:
        raise SystemExit(f"--real {folder}: need at least 2 tracks with all four stems "
                         f"(meta.json 'present'), found {len(clips)}")
    return clips


def generated_clips(a):
    """Generates (unless --score-only) and returns (name, {stem: path}, samples) per clip, and timings."""
    gen_dir = os.path.join(a.out, "generated")
    clips, timings = [], []
    if not a.score_only and not (os.path.isfile(a.msdm) and os.access(a.msdm, os.X_OK)):
        raise SystemExit(f"msdm binary not found or not executable: {a.msdm} "
                         "(build it with `cargo build --release`, or pass --msdm)")
    for i in range(a.clips):
        name = f"clip{i}"
        dest = os.path.join(gen_dir, name)
        files = {stem: os.path.join(dest, f"{stem}.wav") for stem in STEMS}
        if not a.score_only:
            # --rate 22050: msdm writes 44.1 kHz by default, but the scores (and the model) use 22,050 Hz.
            cmd = [a.msdm, "generate", "-o", dest, "--seconds", str(a.seconds), "--seed", str(a.seed0 + i),
                   "--rate", str(SR), "--force", "--quiet"]
            if a.model:
                cmd += ["--model", a.model]
            cmd += a.generate_args
            print(f"{name}: {' '.join(cmd)}", file=sys.stderr)
            t0 = time.time()
            try:
                subprocess.run(cmd, check=True)
            except subprocess.CalledProcessError as e:
                raise SystemExit(f"{name}: msdm generate failed (exit {e.returncode}): {' '.join(cmd)}")
            timings.append(time.time() - t0)
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            hint = "run without --score-only first" if a.score_only else "msdm generate did not write them"
            raise SystemExit(f"{name}: missing {', '.join(missing)} ({hint})")
        clips.append((name, files, sf.info(files["bass"]).frames))
    return clips, timings


def spectrograms(clips, out, seconds):
    sox = shutil.which("sox")
    if sox is None:
        print("--spectrograms: sox is not installed (e.g. `apt-get install sox`); skipping the pictures",
              file=sys.stderr)
        return
    folder = os.path.join(out, "spectrograms")
    os.makedirs(folder, exist_ok=True)
    for name, files, _ in clips:
        for stem in STEMS:
            png = os.path.join(folder, f"{name}-{stem}.png")
            # trim: real songs are longer than the part we score; remix 1: one channel, one picture.
            cmd = [sox, files[stem], "-n", "trim", "0", str(seconds), "remix", "1", "rate", str(SR),
                   "spectrogram", "-o", png, "-x", "800", "-y", "257", "-z", "90", "-t", f"{name} {stem}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"--spectrograms: sox failed on {files[stem]}: {r.stderr.strip()}", file=sys.stderr)
                return
    print(f"spectrograms in {folder}", file=sys.stderr)


COLUMNS = (
    [(f"{s}_harmony", f"{s} harmony", 3) for s in PITCHED]
    + [(f"{s}_rhythm", f"{s} rhythm lock", 3) for s in PITCHED]
    + [(f"{s}_pitched", f"{s} pitched", 2) for s in STEMS]
    + [(f"{s}_level_db", f"{s} level (dBFS)", 1) for s in STEMS]
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips to generate (or real tracks to score); at least 2")
    ap.add_argument("--seconds", type=float, default=12.0, help="clip length (generated) or part scored (real)")
    ap.add_argument("--seed0", type=int, default=0, help="clip i uses seed seed0 + i")
    ap.add_argument("--model", default=None, help="model file (default: msdm's bundled model)")
    ap.add_argument("--msdm", default=os.path.join(REPO, "target", "release", "msdm"))
    ap.add_argument("--out", default="/tmp/msdm-generation")
    ap.add_argument("--score-only", action="store_true", help="score the clips an earlier run left in --out")
    ap.add_argument("--spectrograms", action="store_true", help="also write PNG spectrograms with sox")
    ap.add_argument("--real", default=None, metavar="DIR", help="score real songs of a mini-Slakh split instead")
    ap.add_argument("generate_args", nargs="*", help="extra `msdm generate` arguments (after --)")
    a = ap.parse_args()
    if a.clips < 2:
        raise SystemExit("--clips must be at least 2 (the shuffled pairing needs another clip)")
    if a.seconds <= 0:
        raise SystemExit("--seconds must be positive")
    # Scoring needs at least one chroma frame (8192 samples); shorter clips would score nothing.
    if int(a.seconds * SR) < 8192:
        raise SystemExit(f"--seconds {a.seconds}: too short to score (need at least {8192 / SR:.2f} s)")

    if a.real:
        clips, timings = real_clips(a.real, a.clips, a.seconds), []
    else:
        clips, timings = generated_clips(a)
    if a.spectrograms:
        spectrograms(clips, a.out, a.seconds)

    rows = []
    for i, (name, files, n) in enumerate(clips):
        nxt_name, nxt_files, _ = clips[(i + 1) % len(clips)]
        own = load_clip(files, n)
        other = load_clip(nxt_files, n)  # the next clip, cut or padded to this clip's length
        row = {"clip": name, "shuffled_with": nxt_name, "samples": n,
               "together": score_pair(own, own), "shuffled": score_pair(own, other)}
        if not a.real:
            row["seed"] = a.seed0 + i
        rows.append(row)
        t, s = row["together"], row["shuffled"]
        print(f"{name}: " + "; ".join(
            f"{label} {t[k]:.{d}f} / {s[k]:.{d}f}" for k, label, d in COLUMNS[:6]
        ) + "  (together / shuffled); " + "; ".join(
            f"{stem} pitched {t[f'{stem}_pitched']:.2f}, {t[f'{stem}_level_db']:.1f} dBFS" for stem in STEMS
        ), file=sys.stderr)

    keys = [k for k, _, _ in COLUMNS]
    # nanmean: a silent stem (possible in generated clips) has no harmony or rhythm score.
    with np.errstate(all="ignore"):
        mean = {w: {k: float(np.nanmean([r[w][k] for r in rows])) for k in keys} for w in ["together", "shuffled"]}
    silent = {stem: sum(bool(r["together"][f"{stem}_silent"]) for r in rows) for stem in STEMS}
    if any(silent.values()):
        print("silent stems (no pitched or level score): " + ", ".join(
            f"{stem} {k}/{len(rows)}" for stem, k in silent.items()), file=sys.stderr)
    what = f"real songs ({a.real})" if a.real else "generated"
    print(f"| {what} | " + " | ".join(label for _, label, _ in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for w, label in [("together", "together (own clip)"), ("shuffled", "shuffled (next clip's stems)")]:
        print(f"| {label} | " + " | ".join(f"{mean[w][k]:.{d}f}" for k, _, d in COLUMNS) + " |")
    if timings:
        print(f"\ngeneration: {np.mean(timings):.1f} s per {a.seconds:g} s clip (wall clock)", file=sys.stderr)
    print(json.dumps({
        "mode": "real" if a.real else "generated", "real": a.real, "clips": len(rows), "seconds": a.seconds,
        "model": a.model, "seed0": None if a.real else a.seed0, "generate_args": a.generate_args,
        "generate_wall_s": timings, "mean": mean, "silent": silent, "per_clip": rows,
    }))


if __name__ == "__main__":
    main()
