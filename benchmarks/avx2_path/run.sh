#!/usr/bin/env bash
# Run a command on ONNX Runtime's x86 AVX2 int8 path (VPMADDUBSW, saturating) on an AVX-512 VNNI machine.
#
#   sudo benchmarks/avx2_path/run.sh .venv/bin/python benchmarks/quant_cpu_bench.py --phase all
#
# How: a copy of ORT's native module whose cpuid instructions trap (patch_cpuid.py), an LD_PRELOAD handler that
# answers them with every AVX-512 and VNNI bit cleared (cpuid_mask.c), and, in a private mount namespace, that copy
# bind-mounted over the real one and a /proc/cpuinfo without those flags (so slimkit's own detection says
# x86-avx2 too). The kernels are the ones an AVX2-only CPU runs; their speed is this CPU's, not a Zen 2's.
# Needs root (unshare -m), gcc and objdump. PyTorch is not masked: only ORT's kernels change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-.venv/bin/python}
cache=${AVX2_PATH_CACHE:-/tmp/slimkit-avx2-path}
mkdir -p "$cache"
if [ ! -f "$cache/cpuid_mask.so" ] || [ "$here/cpuid_mask.c" -nt "$cache/cpuid_mask.so" ]; then
  gcc -O2 -shared -fPIC -o "$cache/cpuid_mask.so" "$here/cpuid_mask.c"
fi
native=$("$py" -c "import glob, os, onnxruntime.capi as c; print(glob.glob(os.path.join(os.path.dirname(c.__file__), 'onnxruntime_pybind11_state*.so'))[0])")
patched="$cache/$(basename "$native").$(stat -c %s-%Y "$native")"
if [ ! -f "$patched" ]; then
  "$py" "$here/patch_cpuid.py" "$native" "$patched.tmp" && mv "$patched.tmp" "$patched"
fi
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|avx_vnni[a-z0-9_]*|amx[a-z0-9_]*)//g' /proc/cpuinfo > "$cache/cpuinfo"
exec unshare -m --propagation private bash -c '
  mount --bind "$1" "$2" && mount --bind "$3" /proc/cpuinfo || exit 2
  export LD_PRELOAD="$4${LD_PRELOAD:+:$LD_PRELOAD}"
  shift 4 && exec "$@"
' _ "$patched" "$native" "$cache/cpuinfo" "$cache/cpuid_mask.so" "$@"
