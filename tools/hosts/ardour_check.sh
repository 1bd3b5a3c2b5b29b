#!/usr/bin/env bash
# MSDM Stems in a real DAW: headless Ardour 7 (Debian package `ardour`, its `ardour7-lua` session tool) loads the
# VST3 on a stereo track, rolls 2 s (the plugin captures), stops (the plugin renders for real, into an empty stem
# cache), exports, saves, reloads and finds the plugin again with its state. RUNS sessions in a row (the stress
# form for host crashes), one line each, then "N of RUNS runs passed". Exit status 0 only if all passed.
#   tools/hosts/ardour_check.sh [RUNS] [PATH_TO.vst3]   (default 1, target/bundled/MSDM Stems.vst3)
# ARDOUR_CACHE=DIR shares one stem cache between runs (after the first, renders are cache hits).
# ARDOUR_CONTROL=1 runs the same session without the plugin (a control: a crash there is the host's);
# ARDOUR_CONTROL=1 ARDOUR_AVX512=1 tools/hosts/ardour_check.sh 20 shows Ardour's own AVX-512F crash.
# ARDOUR_PRELOAD=lib.so preloads a library into Ardour only (e.g. libasan for an ASan-built plugin:
# tools/hosts/ardour_asan.sh).
# Build the bundle first: cargo xtask bundle msdm-plugin --release
#
# Ardour 7's AVX-512F mixing routines (x86_functions_avx512f.cc, Ardour 7.3 to 8.4, fixed upstream in 8.5 by
# commit d023ea0d77 "Fix potential memory corruption in AVX512f DSP") write up to 7 floats past the end of
# their destination when source and destination are never both 64-byte aligned at the same time: the
# alignment loop steps 8 or 4 frames without checking that so many are left. The export does exactly that
# (PortExportChannel::read mixes its delay line into a 1024-float heap buffer), so on a CPU with AVX-512F
# about one session in three corrupts the heap and aborts at the export or at close ("double free or
# corruption (!prev)", "free(): invalid next size", "munmap_chunk(): invalid pointer", SIGSEGV), with or
# without this plugin in the session (docs/plugin.md, "Host robustness"). So this check hands Ardour the
# CPU's FPU flags without AVX-512F (PBD::FPU reads ARDOUR_FPU_FLAGS instead of probing the CPU), and Ardour
# uses its AVX/FMA routines. ARDOUR_FPU_FLAGS set by the caller wins; ARDOUR_AVX512=1 leaves Ardour's own
# choice (to see the host bug).
set -u
if [ -z "${ARDOUR_FPU_FLAGS:-}" ] && [ "${ARDOUR_AVX512:-0}" != 1 ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  # PBD::FPU::Flags: FlushToZero 1, DenormalsAreZero 2, SSE 4, SSE2 8, AVX 0x10, FMA 0x40 (AVX512F 0x80 left out)
  cpu=$(grep -m1 '^flags' /proc/cpuinfo)
  f=0
  grep -qw sse <<<"$cpu" && f=$((f | 0x1 | 0x4))
  grep -qw sse2 <<<"$cpu" && f=$((f | 0x2 | 0x8))
  grep -qw avx <<<"$cpu" && f=$((f | 0x10))
  grep -qw fma <<<"$cpu" && f=$((f | 0x40))
  export ARDOUR_FPU_FLAGS=$f
fi
runs=${1:-1}; vst=${2:-target/bundled/MSDM Stems.vst3}
here=$(cd "$(dirname "$0")" && pwd)
[ -d "$vst" ] || { echo "no VST3 bundle at $vst (build it with: cargo xtask bundle msdm-plugin --release)"; exit 2; }
if ! command -v ardour7-lua >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -q --no-install-recommends ardour >/dev/null || { echo "cannot install ardour"; exit 2; }
fi
# Ardour's headless tool reads only its VST3 cache and trusts an entry only when the module file is strictly older
# (in whole seconds) than the cache file the scanner writes; a copy and a scan in the same second is skipped
# silently. So: install, backdate the module, scan.
mkdir -p ~/.vst3 && rm -rf ~/.vst3/"MSDM Stems.vst3" && cp -r "$vst" ~/.vst3/
find ~/.vst3/"MSDM Stems.vst3" -exec touch -m -d "@$(( $(date +%s) - 120 ))" {} +
rm -f ~/.cache/ardour7/vst3_x64_blacklist.txt
LD_PRELOAD=${ARDOUR_PRELOAD:-} LD_LIBRARY_PATH=/usr/lib/ardour7 /usr/lib/ardour7/ardour-vst3-scanner -f ~/.vst3/"MSDM Stems.vst3" >/dev/null 2>&1

# Peak of a WAV file (PCM 16/24/32 or float 32), printed as a number.
peak() {
  python3 - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
pos, fmt, bits, data = 12, None, None, None
while pos + 8 <= len(d):
    cid, size = d[pos:pos+4], struct.unpack('<I', d[pos+4:pos+8])[0]
    body = d[pos+8:pos+8+size]
    if cid == b'fmt ':
        fmt, bits = struct.unpack('<H', body[0:2])[0], struct.unpack('<H', body[14:16])[0]
        if fmt == 0xFFFE: fmt = struct.unpack('<H', body[24:26])[0]
    elif cid == b'data':
        data = body
    pos += 8 + size + (size & 1)
w = bits // 8
if fmt == 3: vals = struct.unpack('<%df' % (len(data) // 4), data[:len(data)//4*4])
else:
    n = len(data) // w
    vals = [int.from_bytes(data[i*w:(i+1)*w], 'little', signed=True) / float(1 << (bits - 1)) for i in range(n)]
print(max((abs(v) for v in vals), default=0.0))
PY
}

work=$(mktemp -d); bad=0
for i in $(seq 1 "$runs"); do
  d=$work/$i; mkdir -p "$d"
  MSDM_CACHE_DIR=${ARDOUR_CACHE:-$d/cache} ARDOUR_CHECK_DIR=$d LD_PRELOAD=${ARDOUR_PRELOAD:-} timeout 600 ardour7-lua "$here/ardour_session.lua" >"$d/log" 2>&1; rc=$?
  val() { grep -m1 "^$1" "$d/log" | awk '{print $2}'; }
  why=""
  [ $rc = 0 ] && grep -q '^DONE' "$d/log" || why="ardour exited with $rc: $(grep -E -i 'AddressSanitizer|corrupt|double free|invalid|munmap|abort|segmentation|assert' "$d/log" | grep -v -i mp3 | head -1)"
  if [ "${ARDOUR_CONTROL:-0}" != 1 ]; then
    [ -z "$why" ] && [ "$(val OUTPUTS)" != 10 ] && why="plugin reports $(val OUTPUTS) outputs, expected 10"
    [ -z "$why" ] && [ "$(val RENDERED)" != yes ] && why="the render did not reach the stem cache"
  fi
  wav=$(find "$d/out" -name '*.wav' 2>/dev/null | head -1)
  [ -z "$why" ] && [ -z "$wav" ] && why="no exported file"
  p=$([ -n "$wav" ] && peak "$wav" || echo 0)
  [ -z "$why" ] && python3 -c "import sys; sys.exit(0 if float('$p') > 1e-3 else 1)" || { [ -z "$why" ] && why="exported file is silent (peak $p)"; }
  if [ "${ARDOUR_CONTROL:-0}" != 1 ]; then
    [ -z "$why" ] && [ "$(val RELOADED_INSTANCES)" != 1 ] && why="plugin not found after reload"
    # The plugin's state (base64 in the session file) must hold the take it rendered.
    state=$(grep -o '<chunk>[^<]*' "$d/sess/sess.ardour" 2>/dev/null | head -1 | sed 's/<chunk>//' | base64 -d 2>/dev/null | tr -d '\0')
    [ -z "$why" ] && ! grep -q stems_key <<<"$state" && why="the saved plugin state holds no take"
  fi
  if [ -z "$why" ]; then
    if [ "${ARDOUR_CONTROL:-0}" = 1 ]; then echo "run $i: ok (no plugin; export peak $p)"
    else echo "run $i: ok (outputs $(val OUTPUTS), export peak $p, reloaded with its take)"; fi
  else
    bad=$((bad+1)); echo "run $i: FAILED: $why (log: $d/log)"
  fi
done
echo "$((runs-bad)) of $runs runs passed"
[ $bad = 0 ]
