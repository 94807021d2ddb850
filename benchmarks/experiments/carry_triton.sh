#!/usr/bin/env bash
# Triton for the GPU machine (Python 3.12, torch 2.11 with Triton 3.6), in parts small enough to carry: the wheel
# from PyPI without CUPTI, ptxas-blackwell, Proton and the test plugins, libtriton.so stripped of its symbols,
# xz-compressed and split into 25 MB parts under .t371/ (ignored by git). Twenty-fourth session: 198 MB -> 49.5 MB.
#
#   benchmarks/experiments/carry_triton.sh [VERSION]          (default 3.7.1: what the pinned torch 2.13 brings)
#
# Then, on one warm machine (it is handed back after 30 s idle), call after call:
#   run(carry=[".t371/part00"], "cp .t371/part00 /tmp/part00")
#   run(carry=[".t371/part01"], "cat /tmp/part00 .t371/part01 > /tmp/t.tar.xz && mkdir -p /tmp/t371 &&
#       tar xJf /tmp/t.tar.xz -C /tmp/t371 && PYTHONPATH=/tmp/t371 python ...")
# (A call's carry replaces the folder there, so each part is copied out of it before the next call.) Scripts that
# run in the second call source unpack_triton.sh for that step.
#
#   benchmarks/experiments/carry_triton.sh --lite [VERSION]   (twenty-sixth session: one part, .t371/lite.tar.xz,
#                                                              36.5 MB, carried with the ~29 MB tree in ONE call)
# --lite also leaves out ptxas, nvdisasm and cuobjdump (40 MB unpacked). 3.7.1's ptxas is byte for byte Triton 3.6's
# (CUDA 12.8.93, sha256 c960a4f2...), so unpack_triton.sh copies the three from the GPU machine's own Triton after
# checking that hash (PTXAS_SHA256 below; it stops where they differ). Each call can then bring Triton itself:
#   run(carry=[".t371/lite.tar.xz"], "source benchmarks/experiments/unpack_triton.sh && python ...")
set -euo pipefail
cd "$(dirname "$0")/../.."
lite=0
if [ "${1:-}" = "--lite" ]; then lite=1; shift; fi
version="${1:-3.7.1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$work" "triton==$version"
(cd "$work" && mkdir x && cd x && unzip -q ../triton-*.whl \
  && rm -rf triton/backends/nvidia/lib/cupti triton/backends/nvidia/bin/ptxas-blackwell triton/instrumentation \
            triton/_C/libproton.so triton/plugins triton/FileCheck \
  && if [ $lite = 1 ]; then rm triton/backends/nvidia/bin/{ptxas,nvdisasm,cuobjdump}; fi \
  && strip --strip-unneeded triton/_C/libtriton.so \
  && tar cf - triton triton-*.dist-info | xz -9e -T2 > "$work/t.tar.xz")
grep -qx "/.t371/" .git/info/exclude 2>/dev/null || echo "/.t371/" >> .git/info/exclude
if [ $lite = 1 ]; then
  mkdir -p .t371 && mv "$work/t.tar.xz" .t371/lite.tar.xz && ls -l .t371 && exit 0
fi
rm -rf .t371 && mkdir .t371
split -b 25000000 -d "$work/t.tar.xz" .t371/part
ls -l .t371
