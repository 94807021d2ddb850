#!/usr/bin/env bash
# The device steps that decide whether an experiment patch lands: its GPU tests, and the 20b forward before and
# after it in turns. Written as cluster_land_run.sh for moe_hopper_cluster_gate_up.patch (twenty-fifth session; run
# and landed in the twenty-sixth), made general in the twenty-sixth. Triton 3.7.1 comes from carry_triton.sh: its
# one lite part (.t371/lite.tar.xz, carried by each call), or its two parts (call 1 copies .t371/part00 to /tmp; this
# script, in call 2 with .t371/part01 carried, unpacks it).
#
#   bash benchmarks/experiments/patch_run.sh PATCH tests [K]   (the patched checkout's GPU tests selected by pytest's
#                                                              -k expression K; default: all GPU test files)
#   bash benchmarks/experiments/patch_run.sh PATCH ab [LENGTHS] (toolchain_probe.py: the code before and the patched
#                                                              code in turns, 3 rounds, default 1024,2048: graph
#                                                              replay, eager forward, MoE ms, logits checksums)
# PATCH is a path in the checkout (git apply, onto the commit it names). Results under $OUT. The steps can run on one
# warm machine, in either order: the patched copy (/tmp/patched) is made once.
# Twenty-sixth session: PATCH=benchmarks/experiments/moe_hopper_cluster_gate_up.patch, with tests
# "clusters_equals or rule_with_clusters" (~3 min) and "not clusters_equals and not rule_with_clusters" (~5 min).
set -x
patch="$1" step="$2"
source "$(dirname "$0")/unpack_triton.sh" || exit 3
if [ ! -d /tmp/patched ]; then
  cp -r . /tmp/patched && (cd /tmp/patched && git apply "$patch") || { rm -rf /tmp/patched; exit 4; }
fi
case "$step" in
  tests)
    (cd /tmp/patched && timeout 580 python -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      tests/test_kernel_schedule.py tests/test_launch_gpu.py tests/test_memory_settings.py tests/test_kernel_verify.py \
      ${3:+-k "$3"} 2>&1 | tail -5) | tee "$OUT/tests.log" ;;
  ab)
    timeout 560 python benchmarks/experiments/toolchain_probe.py --driver "$OUT/ab.json" --rounds 3 \
      --lengths "${3:-1024,2048}" before= after=PROBE_ROOT=/tmp/patched 2>&1 | tail -30 ;;
  *) echo "usage: patch_run.sh PATCH tests [K] | ab [LENGTHS]"; exit 2 ;;
esac
