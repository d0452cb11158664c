#!/usr/bin/env bash
# The GPU benchmark on a lent machine (issue 14 item 4), as one prepared command: see bench/device/pack.sh
# for how to pack and call it. Runs in the repository root of the device's copy of the working tree, with
# .device-kit/ and .gl/ carried; writes everything under $OUT (the device tool brings it back):
#
#   log.txt          this script's output (machine, adapter, each step, timings)
#   stages.txt       bench/stages.ts: the stages alone, cpu and webgpu, without and with the mask
#   RESULTS-gpu.md   bench/run.ts on a generated CORR-like run: read ceiling (N readers), localise cpu with N
#                    workers, webgpu fed by 1 and N readers, start-up; per stage; accuracy against truth.json
#
# Every step has its own time limit and the script goes on after a failed one, so that one call returns
# what could be measured. SIZE_GB (default 4) sets the generated run's image data + mask, CONFIGS the
# bench configurations (default: with a hardware adapter readN,cpuN,webgpu1,webgpuN,startup,startup-cold).
set -u
OUT=${OUT:-/tmp/xfel-redu-device-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
kit=$root/.device-kit
bin=/tmp/xfel-redu-kit/bin
t0=$(date +%s)
step() { echo "== $(($(date +%s) - t0)) s: $*"; }

step "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true

step "node from the kit"
mkdir -p "$bin"
if [ ! -x "$bin/node" ]; then
  if command -v xz >/dev/null; then
    xz -dc "$kit/node.xz" >"$bin/node"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$kit/node.xz" "$bin/node"
  fi
  chmod +x "$bin/node"
fi
export PATH="$bin:$PATH"
echo "$(command -v node)"
node -v || { echo "check.sh: the kit's node does not run here"; exit 1; }

step "dist and modules"
tar -xzf "$kit/modules.tar.gz" || exit 1

step "Vulkan and EGL loaders"
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then export VK_DRIVER_FILES=$icd; fi
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
ldconfig -p | grep -E 'libvulkan.so.1 |libEGL.so.1 ' || true

step "WebGPU adapter"
XFEL_REDU_DEBUG=1 timeout 60 node --input-type=module -e '
  const m = await import("./dist/src/gpu/device.js");
  const d = await m.getGpuDevice();
  console.log("adapter:", d ? `${d.adapterName}${d.software ? " (software)" : ""}` : "none");
  process.exit(d && !d.software ? 0 : 3);
'
adapter=$?

step "stages alone (bench/stages.ts)"
for mask in "" --mask; do
  timeout 120 node dist/bench/stages.js --backend cpu,webgpu --frames 256 --batches 24 $mask 2>&1 |
    tee -a "$OUT/stages.txt"
done

step "end to end (bench/run.ts; generating the run first)"
configs=readN,cpuN,startup,startup-cold
[ "$adapter" = 0 ] && configs=readN,cpuN,webgpu1,webgpuN,startup,startup-cold
configs=${CONFIGS:-$configs}
timeout 420 node dist/bench/run.js --size-gb "${SIZE_GB:-4}" --configs "$configs" --out "$OUT/RESULTS-gpu.md"
step "done (exit $?)"
