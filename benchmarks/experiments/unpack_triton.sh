# Sourced by the device scripts (multicast_run.sh, cluster_land_run.sh): Triton from carry_triton.sh's two parts
# unpacked into /tmp/t371 once (/tmp/part00 from the first call, .t371/part01 carried by this one), and put first
# on PYTHONPATH. Returns 3 where the parts are missing.
if [ ! -d /tmp/t371/triton ]; then
  cat /tmp/part00 .t371/part01 > /tmp/t.tar.xz && mkdir -p /tmp/t371 && tar xJf /tmp/t.tar.xz -C /tmp/t371 || return 3
fi
export PYTHONPATH=/tmp/t371${PYTHONPATH:+:$PYTHONPATH}
