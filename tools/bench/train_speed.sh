#!/usr/bin/env bash
# Training throughput of the bundled model's config (preset small, window 65,536, batch 4):
# wall time of STEPS (default 24) steps from scratch and the steps/s of the last logged interval,
# for each msdm binary given (alternate them to cancel machine noise).
#   tools/bench/train_speed.sh [MSDM_BINARY ...]     (default: target/release/msdm)
# DATA: a dataset root with train/ (default: 12 songs synthesized into a temporary folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BINS=("$@")
[[ ${#BINS[@]} -eq 0 ]] && BINS=("$ROOT/target/release/msdm")
STEPS="${STEPS:-24}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
if [[ -z "${DATA:-}" ]]; then
    DATA="$WORK/data"
    SF="${SOUNDFONT:-/usr/share/sounds/sf2/FluidR3_GM.sf2}"
    [[ -f "$SF" ]] || SF=/usr/share/sounds/sf2/TimGM6mb.sf2
    for split in train validation; do
        "${BINS[0]}" data synth --out "$DATA" --soundfont "$SF" --split "$split" --count 12 --quiet >/dev/null
    done
fi
printf "%-40s %-10s %s\n" binary seconds "steps/s (last interval)"
for bin in "${BINS[@]}"; do
    rm -rf "$WORK/run"
    start=$(date +%s.%N)
    "$bin" train --run-dir "$WORK/run" --data "$DATA" --config small --window 65536 --batch 4 \
        --steps "$STEPS" --val-every 0 --checkpoint-every 100000 --log-every 4 --quiet >/dev/null 2>&1
    end=$(date +%s.%N)
    rate=$(tail -1 "$WORK/run/train.csv" | cut -d, -f3)
    printf "%-40s %-10.1f %s\n" "$bin" "$(echo "$end - $start" | bc)" "$rate"
done
