#!/usr/bin/env bash
# Trains (or resumes training of) the default model in the background.
#
# 1. Generates the mini-Slakh data with the FluidR3 GM SoundFont (`msdm data synth`) if a split is
#    missing or incomplete (each finished split leaves a `.complete` marker; an incomplete one is
#    regenerated from scratch — it is deterministic per seed).
# 2. Builds the CLI and copies the binary into the run directory (so rebuilding the tree during a
#    long run never swaps the binary under it).
# 3. Starts `msdm train` with nohup, or resumes it if the run directory already holds a run; does
#    nothing if that run is already training. Safe to re-run at any time.
#
# Stop it with `kill $(cat runs/default/train.pid)` (SIGTERM): it checkpoints and exits.
# Everything can be overridden through the environment (MSDM_BIN: use this prebuilt binary), e.g.
#   STEPS=200000 LR=1e-4 tools/train/run_default.sh
# The per-stem σ model (issue 15) is fine-tuned from the bundled model:
#   RUN=runs/stems CONFIG=tools/train/stem-sigmas.json INIT=assets/msdm-small.safetensors LR=1e-4 SEED=1515 EMA=0.999 \
#     tools/train/run_default.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="${DATA:-$ROOT/data/minislakh}"
RUN="${RUN:-$ROOT/runs/default}"
SOUNDFONT="${SOUNDFONT:-/usr/share/sounds/sf2/FluidR3_GM.sf2}"
TRAIN_TRACKS="${TRAIN_TRACKS:-500}"
VAL_TRACKS="${VAL_TRACKS:-20}"
TEST_TRACKS="${TEST_TRACKS:-30}"
CONFIG="${CONFIG:-small}"
WINDOW="${WINDOW:-65536}"
BATCH="${BATCH:-4}"
LR="${LR:-3e-4}"
SEED="${SEED:-12345}"
STEPS="${STEPS:-}"            # empty: train until stopped
CHECKPOINT_EVERY="${CHECKPOINT_EVERY:-250}"
VAL_EVERY="${VAL_EVERY:-1000}"
LOG_EVERY="${LOG_EVERY:-25}"
EMA="${EMA:-0.9995}"           # decay of the weight average (ema.safetensors); 0: none
INIT="${INIT:-}"               # a model file to start a new run from (train --init), e.g. assets/msdm-small.safetensors
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"

mkdir -p "$RUN"
PIDFILE="$RUN/train.pid"
LOG="$RUN/train.log"

if [[ -f "$PIDFILE" ]]; then
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q " train "; then
        echo "already training (pid $pid); log: $LOG"
        exit 0
    fi
fi

if [[ ! -f "$SOUNDFONT" ]]; then
    echo "SoundFont $SOUNDFONT not found: install Debian's fluid-soundfont-gm (apt-get install fluid-soundfont-gm) or set SOUNDFONT=" >&2
    exit 1
fi

BIN="$RUN/msdm-bin"
if [[ -n "${MSDM_BIN:-}" ]]; then
    cp "$MSDM_BIN" "$BIN.new" && mv "$BIN.new" "$BIN"   # a prebuilt binary
else
    (cd "$ROOT" && cargo build --release -p msdm-cli)
    cp "$ROOT/target/release/msdm" "$BIN.new" && mv "$BIN.new" "$BIN"
fi
if ! "$BIN" train --help >/dev/null 2>&1; then
    echo "this build of msdm has no 'train' command yet (cli/src/train.rs is not wired into cli/src/main.rs)" >&2
    exit 1
fi

for split_count in "train:$TRAIN_TRACKS" "validation:$VAL_TRACKS" "test:$TEST_TRACKS"; do
    split="${split_count%%:*}"
    count="${split_count##*:}"
    marker="$DATA/$split/.complete"
    if [[ -f "$marker" && "$(cat "$marker")" == "$count $SOUNDFONT" ]]; then
        continue
    fi
    echo "generating $count $split tracks into $DATA/$split"
    "$BIN" data synth --out "$DATA" --soundfont "$SOUNDFONT" --split "$split" --count "$count" --force --quiet
    echo "$count $SOUNDFONT" > "$marker"
done

args=(train --checkpoint-every "$CHECKPOINT_EVERY" --val-every "$VAL_EVERY" --log-every "$LOG_EVERY" --ema "$EMA")
[[ -n "$STEPS" ]] && args+=(--steps "$STEPS")
if [[ -f "$RUN/trainer.json" ]]; then
    args+=(--resume "$RUN")
    what="resuming"
else
    args+=(--run-dir "$RUN" --data "$DATA" --config "$CONFIG" --window "$WINDOW" --batch "$BATCH" --lr "$LR" --seed "$SEED")
    [[ -n "$INIT" ]] && args+=(--init "$INIT")
    what="starting"
fi

echo "$(date -Is) $what: $BIN ${args[*]}" >> "$LOG"
nohup nice -n 19 "$BIN" "${args[@]}" >> "$LOG" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
echo "$what training in the background (pid $!); log: $LOG; progress: $RUN/train.csv"
