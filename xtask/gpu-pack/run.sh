#!/usr/bin/env bash
# The MLAE GPU check, packed by `cargo xtask gpu-check --pack DIR`. Needs no network and no
# Rust toolchain: only this folder and a Python with torch 2.11.0 (CUDA build for the GPU
# steps). Usage: bash run.sh OUTDIR [more `gpu-check` flags, e.g. --no-compile]
# The report is OUTDIR/gpu-check.md (and gpu-check.json, logs/). Exit 0 when no step fails.
# The check asks for `--device cuda` unless a --device flag is given: without a usable GPU it
# fails, saying why (a CPU-only libtorch, the NVIDIA driver, or no GPU visible), instead of
# quietly running the CPU variant.
# The binaries need glibc @GLIBC@ or newer (the newest GLIBC_ symbol version they ask for).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: bash run.sh OUTDIR [gpu-check flags]}"
shift
need_glibc="@GLIBC@"
have_glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}' || true)"
if [ -n "$have_glibc" ] && [ "${need_glibc#@}" = "$need_glibc" ] &&
   [ "$(printf '%s\n%s\n' "$need_glibc" "$have_glibc" | sort -V | head -n1)" != "$need_glibc" ]; then
  echo "run.sh: the binaries need glibc $need_glibc or newer; this machine has glibc $have_glibc" >&2
  exit 2
fi
case " $* " in
  *" --device "*|*" --device="*) ;;
  *) set -- --device cuda "$@" ;;
esac
py="${MLAE_PYTHON:-}"
if [ -z "$py" ]; then
  for c in /opt/torch/.venv/bin/python python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then py="$(command -v "$c")"; break; fi
  done
fi
if [ -z "$py" ]; then
  echo "run.sh: no Python with torch found; set MLAE_PYTHON to one" >&2
  exit 2
fi
# mlae-engine links libtorch: use the one of that Python's torch (2.11.0, as the build's).
torchlib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bin="$here/bin"
if [ ! -x "$bin/xtask" ] || [ ! -x "$bin/mlae-engine" ] || [ ! -x "$bin/mlae-cli" ]; then
  # The copy lost the executable bits: run copies.
  bin="$(mktemp -d)"
  cp "$here"/bin/* "$bin"/
  chmod +x "$bin"/*
fi
echo "run.sh: python $py, libtorch $torchlib" >&2
exec "$bin/xtask" gpu-check --bin-dir "$bin" --script "$here/python/bench_pytorch.py" \
  --python "$py" --out "$out" "$@"
