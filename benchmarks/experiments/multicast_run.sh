#!/usr/bin/env bash
# The device command for experiments/moe_hopper_multicast.patch (twenty-fifth session): unpacks Triton 3.7.1 from
# the part carried by the first call (/tmp/part00) and this call's .t371/part01 (carry_triton.sh), applies the
# patch, and for each cluster-barrier variant (GPTOSS_CLUSTER_SYNC: 0 gl.barrier(cluster=True), 1 relaxed arrive +
# wait, 2 the wait and refill after the step's wgmma) times one 20b layer and runs the bit-equality test.
# GPTOSS_CLUSTER_SCRATCH=1 in the environment: the epilogue's layout change through the dead activation stages.
# MC_K: the tests' -k expression ("none": no tests). Safe to run again on the same warm machine.
#
#   bash benchmarks/experiments/multicast_run.sh [SYNC ...]      (default: 0 1 2; results under $OUT)
set -x
source "$(dirname "$0")/unpack_triton.sh" || exit 3
if git apply --check benchmarks/experiments/moe_hopper_multicast.patch 2>/dev/null; then
  git apply benchmarks/experiments/moe_hopper_multicast.patch || exit 4
fi
tag=s${GPTOSS_CLUSTER_SCRATCH:-0}
for s in ${*:-0 1 2}; do
  GPTOSS_CLUSTER_SYNC=$s timeout 250 python benchmarks/moe_hopper.py --out "$OUT/sync${s}_$tag.json" \
    --counts 1024 2048 --tiles auto "128+32 nonarrow" "128+32 c2" "128+32 s2 c2" "128+64 c2" 2>&1 \
    | grep -v Warn | tail -14
  if [ "${MC_K:-}" != none ]; then
    GPTOSS_CLUSTER_SYNC=$s timeout 200 python -m pytest -q -x -p no:cacheprovider tests/test_kernels_gpu.py \
      -k "${MC_K:-clusters_equals and 128}" 2>&1 | tail -3 | tee "$OUT/test_sync${s}_$tag.log"
  fi
done
