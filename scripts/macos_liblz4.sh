#!/usr/bin/env bash
# Builds liblz4 from its own release for the macOS deployment target of the wheels and installs
# it under PREFIX (cibuildwheel's before-all on macOS, [tool.cibuildwheel.macos]). Homebrew's
# liblz4 is built for the runner's macOS, which delocate refuses to bundle into a wheel that
# claims an older one. The release is checked out by tag and verified against its commit.
# Usage: scripts/macos_liblz4.sh DEPLOYMENT_TARGET PREFIX
set -euo pipefail
target=$1
prefix=$2
LZ4_TAG=v1.10.0
LZ4_COMMIT=ebb370ca83af193212df4dcbadcc5d87bc0de2f0

source_dir=$(mktemp -d)
trap 'rm -rf "$source_dir"' EXIT
git clone -q --depth 1 --branch "$LZ4_TAG" https://github.com/lz4/lz4.git "$source_dir"
actual=$(git -C "$source_dir" rev-parse HEAD)
if [ "$actual" != "$LZ4_COMMIT" ]; then
    echo "macos_liblz4: $LZ4_TAG is $actual, expected $LZ4_COMMIT" >&2
    exit 1
fi
export MACOSX_DEPLOYMENT_TARGET=$target
make -s -C "$source_dir/lib" PREFIX="$prefix" CFLAGS="-O3 -mmacosx-version-min=$target" \
    install
# delocate bundles the dylib by its install name, which must name where it now lives.
otool -D "$prefix/lib/liblz4.dylib"
