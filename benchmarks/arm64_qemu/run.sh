#!/usr/bin/env bash
# Run a Python script on an emulated arm64 CPU: Debian's arm64 python3.11 under qemu-user, with the aarch64 wheels of
# the host venv's ONNX Runtime, onnx and numpy, and slimkit's src/ (the parts that need neither PyTorch nor compiled
# code of ours). Correctness only: emulated speed means nothing.
#
#   sudo benchmarks/arm64_qemu/run.sh [--cpu max|cortex-a53] SCRIPT.py ARGS...
#
# --cpu max emulates a core with the dot product (SDOT/UDOT: ORT's arm64-dotprod kernels); cortex-a53 one without
# (ARMv8.0 widening multiplies). ORT reads its CPU features from the aux vector, which qemu fills for the emulated
# core; /proc/cpuinfo (the host's, x86) is replaced by an arm64 one with matching flags in a private mount namespace,
# which also keeps pytorch-cpuinfo inside ORT from failing on x86 text. Needs root: apt (qemu-user-static, the arm64
# .debs, fetched once into the cache) and unshare -m.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cpu=max
if [ "${1:-}" = "--cpu" ]; then cpu=$2; shift 2; fi
cache=${ARM64_QEMU_CACHE:-/tmp/slimkit-arm64-qemu}
py=${PYTHON:-$repo/.venv/bin/python}
debs="libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libcrypt1
  libncursesw6 libtinfo6 libreadline8 libdb5.3 libgdbm6 libnsl2 libtirpc3 python3.11-minimal libpython3.11-minimal
  libpython3.11-stdlib"
mkdir -p "$cache"
if ! command -v qemu-aarch64-static >/dev/null; then
  apt-get install -y -q qemu-user-static >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q qemu-user-static >/dev/null; }
fi
if [ ! -x "$cache/root/usr/bin/python3.11" ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then dpkg --add-architecture arm64; fi
  apt-get update -q >/dev/null
  rm -rf "$cache/debs" "$cache/root.tmp" && mkdir -p "$cache/debs" "$cache/root.tmp"
  # shellcheck disable=SC2086
  (cd "$cache/debs" && apt-get download -q $(for p in $debs; do echo "$p:arm64"; done) media-types >/dev/null 2>&1)
  for deb in "$cache"/debs/*.deb; do dpkg -x "$deb" "$cache/root.tmp"; done
  rm -rf "$cache/root" && mv "$cache/root.tmp" "$cache/root"
fi
versions=$("$py" -c "import numpy, onnx, onnxruntime; print(f'numpy=={numpy.__version__} onnx=={onnx.__version__} onnxruntime=={onnxruntime.__version__}')")
if [ ! -f "$cache/site/.versions" ] || [ "$(cat "$cache/site/.versions")" != "$versions" ]; then
  rm -rf "$cache/site.tmp"
  # shellcheck disable=SC2086
  "$py" -m pip install -q --disable-pip-version-check --target "$cache/site.tmp" --python-version 3.11 \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --only-binary=:all: $versions 2>&1 \
    | grep -v "^WARNING: Location" || true
  echo "$versions" > "$cache/site.tmp/.versions"
  rm -rf "$cache/site" && mv "$cache/site.tmp" "$cache/site"
fi
features="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
part=0xd03  # Cortex-A53
if [ "$cpu" != cortex-a53 ]; then features="$features atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"; part=0xd0c; fi
for i in 0 1; do
  printf 'processor\t: %s\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 0\n\n' \
    "$i" "$features" "$part"
done > "$cache/cpuinfo-$cpu"
exec unshare -m --propagation private bash -c '
  mount --bind "$1" /proc/cpuinfo || exit 2
  cache=$2 cpu=$3 src=$4; shift 4
  PYTHONPATH="$cache/site:$src" exec qemu-aarch64-static -cpu "$cpu" -L "$cache/root" "$cache/root/usr/bin/python3.11" "$@"
' _ "$cache/cpuinfo-$cpu" "$cache" "$cpu" "$repo/src" "$@"
