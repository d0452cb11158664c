#!/usr/bin/env bash
# Packs what bench/device/check.sh needs on a lent GPU machine that has no Node and reaches no registry
# (the `device` tool's nvidia-h200: a CUDA image, nothing fetched there). Run here, once per session that
# has a device, from the repository root:
#
#   bash bench/device/pack.sh        # builds dist/, writes .device-kit/ and .gl/ (both git-ignored)
#
# then, with the device tool, one call (about 4-6 minutes of the machine, start not counted):
#
#   run  command: bash bench/device/check.sh   carry: [".device-kit", ".gl"]   timeout_s: 540
#
# .device-kit/ holds this machine's Node binary (xz), and a tarball of dist/ (compiled sources, benches,
# fixtures) with the runtime modules: h5wasm, h5wasm-plugins and webgpu (its linux-x64 Dawn only). .gl/
# holds the Vulkan and EGL loaders as Debian packages, which check.sh unpacks there when the machine has
# none. Together with the working tree they must stay under the tool's 64 MiB: this prints their size.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(uname -m)" = x86_64 ] || { echo "pack.sh: the device is x86-64; this machine is $(uname -m)" >&2; exit 1; }
npx tsc -p tsconfig.build.json
kit=.device-kit
rm -rf "$kit"
mkdir -p "$kit"
node_bin=$(node -p process.execPath)
echo "pack.sh: $node_bin ($(node -v)), xz..." >&2
xz -T0 -6 -c "$node_bin" >"$kit/node.xz"
tar -czf "$kit/modules.tar.gz" \
  --exclude='node_modules/webgpu/dist/darwin-*' --exclude='node_modules/webgpu/dist/win32-*' \
  --exclude='node_modules/webgpu/dist/linux-arm64' \
  package.json dist node_modules/h5wasm node_modules/h5wasm-plugins node_modules/webgpu
# The loaders, as the device tool's README says (amd64 packages whatever apt's own architecture).
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
kitb=$(du -cb "$kit" .gl | tail -1 | cut -f1)
echo "pack.sh: .device-kit + .gl $((kitb >> 20)) MiB, tracked tree $((tree >> 20)) MiB (limit 64 MiB)" >&2
[ $((kitb + tree)) -lt $((62 << 20)) ] || { echo "pack.sh: too large for the device tool" >&2; exit 1; }
