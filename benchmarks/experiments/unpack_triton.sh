# Sourced by the device scripts (multicast_run.sh, patch_run.sh): Triton from carry_triton.sh unpacked into
# /tmp/t371 once, and put first on PYTHONPATH. Either its one lite part (.t371/lite.tar.xz carried by this call;
# ptxas, nvdisasm and cuobjdump then come from the machine's installed Triton, whose ptxas must be the one 3.7.1
# ships: PTXAS_SHA256) or its two parts (/tmp/part00 from the first call, .t371/part01 carried by this one).
# Returns 3 where the parts are missing or the ptxas differs.
PTXAS_SHA256=c960a4f238b17d5c5d3c01ad2bbc1ebd2c5aecc459cb4d223bff10b45f9b8fca
if [ ! -d /tmp/t371/triton ]; then
  if [ -f .t371/lite.tar.xz ]; then
    bin="$(python -c 'import os, triton; print(os.path.dirname(triton.__file__))')/backends/nvidia/bin" || return 3
    echo "$PTXAS_SHA256  $bin/ptxas" | sha256sum -c - || { echo "this machine's ptxas is not 3.7.1's"; return 3; }
    mkdir -p /tmp/t371 && tar xJf .t371/lite.tar.xz -C /tmp/t371 \
      && cp "$bin/ptxas" "$bin/nvdisasm" "$bin/cuobjdump" /tmp/t371/triton/backends/nvidia/bin/ \
      || { rm -rf /tmp/t371; return 3; }
  else
    cat /tmp/part00 .t371/part01 > /tmp/t.tar.xz && mkdir -p /tmp/t371 && tar xJf /tmp/t.tar.xz -C /tmp/t371 \
      || return 3
  fi
fi
export PYTHONPATH=/tmp/t371${PYTHONPATH:+:$PYTHONPATH}
