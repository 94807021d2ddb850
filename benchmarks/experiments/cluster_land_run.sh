#!/usr/bin/env bash
# Landed in the twenty-sixth session (the patch is in main now): this script needs a checkout before that commit.
# The device commands that decide whether experiments/moe_hopper_cluster_gate_up.patch lands (twenty-fifth session
# wrote it; nothing of it has run on a GPU in product form). Triton 3.7.1 comes from carry_triton.sh: its one lite
# part (.t371/lite.tar.xz) carried by each call, or its two parts (call 1 copies .t371/part00 to /tmp; this script,
# in call 2 with .t371/part01 carried, unpacks it).
#
#   bash benchmarks/experiments/cluster_land_run.sh tests    (~4 min: the patched checkout's two cluster tests)
#   bash benchmarks/experiments/cluster_land_run.sh rest     (up to 10 min: the rest of its GPU tests)
#   bash benchmarks/experiments/cluster_land_run.sh ab       (~5 min: toolchain_probe.py, the code before and the
#                                                            patched code in turns, 3 rounds, 1024 and 2048 tokens:
#                                                            graph replay, eager forward, MoE ms, logits checksums)
# Results under $OUT. Both steps can run on one warm machine, in either order.
set -x
source "$(dirname "$0")/unpack_triton.sh" || exit 3
if [ ! -d /tmp/patched ]; then
  cp -r . /tmp/patched && (cd /tmp/patched && git apply benchmarks/experiments/moe_hopper_cluster_gate_up.patch) \
    || { rm -rf /tmp/patched; exit 4; }
fi
case "$1" in
  tests)
    (cd /tmp/patched && timeout 280 python -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "clusters_equals or rule_with_clusters" 2>&1 | tail -5) | tee "$OUT/tests.log" ;;
  rest)
    (cd /tmp/patched && timeout 580 python -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py \
      tests/test_kernel_schedule.py tests/test_launch_gpu.py tests/test_memory_settings.py tests/test_kernel_verify.py \
      -k "not clusters_equals and not rule_with_clusters" 2>&1 | tail -5) | tee "$OUT/rest.log" ;;
  ab)
    timeout 560 python benchmarks/experiments/toolchain_probe.py --driver "$OUT/ab.json" --rounds 3 \
      --lengths 1024,2048 before= after=PROBE_ROOT=/tmp/patched 2>&1 | tail -30 ;;
  *) echo "usage: cluster_land_run.sh tests|rest|ab"; exit 2 ;;
esac
