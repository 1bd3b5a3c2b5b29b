#!/usr/bin/env bash
# Peak memory (max RSS) of `msdm separate` on 1-, 5- and 10-minute stereo 44.1 kHz mixes made by
# tiling assets/demo.wav. Memory does not depend on the step count, so STEPS (default 2) keeps
# the run short; set STEPS= to use the model's defaults.
#   tools/bench/memory.sh [MSDM_BINARY]          (default: target/release/msdm)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/msdm}"
STEPS="${STEPS-2}"
WORK="${WORK:-$(mktemp -d)}"
MINUTES="${MINUTES:-1 5 10}"
python3 - "$ROOT/assets/demo.wav" "$WORK" $MINUTES <<'PY'
import sys, wave
src, out, minutes = sys.argv[1], sys.argv[2], [int(m) for m in sys.argv[3:]]
with wave.open(src) as w:
    p, frames = w.getparams(), w.readframes(w.getnframes())
for m in minutes:
    need = m * 60 * p.framerate * p.nchannels * p.sampwidth
    data = (frames * (need // len(frames) + 1))[:need]
    with wave.open(f"{out}/mix-{m}min.wav", "wb") as o:
        o.setparams(p)
        o.writeframes(data)
PY
printf "%-8s %-10s %-12s %s\n" minutes seconds peak_MiB
for m in $MINUTES; do
    rm -rf "$WORK/out-$m"
    args=(separate "$WORK/mix-${m}min.wav" -o "$WORK/out-$m" --quiet)
    [[ -n "$STEPS" ]] && args+=(--steps "$STEPS")
    /usr/bin/time -f "%e %M" -o "$WORK/time-$m" "$BIN" "${args[@]}" > /dev/null
    read -r secs kib < "$WORK/time-$m"
    printf "%-8s %-10s %-12s\n" "$m" "$secs" "$((kib / 1024))"
done
rm -rf "$WORK"
