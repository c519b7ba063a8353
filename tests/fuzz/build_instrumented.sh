#!/bin/sh
# Build a copy of the feedhandler package whose compiled decoder (ext/decode.pyx) carries
# libFuzzer's coverage instrumentation and AddressSanitizer, so that the fuzzers see the C
# decoder's branches and out-of-bounds accesses abort. Needs clang; see docs/fuzzing.md.
#
#   sh tests/fuzz/build_instrumented.sh [OUT]      (OUT defaults to build/fuzz)
#
# then run a harness with the environment it prints.
set -eu
cd "$(dirname "$0")/../.."
OUT=${1:-build/fuzz}
mkdir -p "$OUT"
python3 -m cython -3 -I ext -X embedsignature=True --module-name feedhandler.wire._decode ext/decode.pyx -o "$OUT/decode.c"
rm -rf "$OUT/feedhandler"
cp -r feedhandler "$OUT/feedhandler"
find "$OUT/feedhandler" -name __pycache__ -prune -exec rm -rf {} +
suffix=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
clang -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,fuzzer-no-link \
    -DNPY_NO_DEPRECATED_API=NPY_2_0_API_VERSION \
    -I"$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
    -I"$(python3 -c 'import numpy; print(numpy.get_include())')" -Iext \
    "$OUT/decode.c" -llz4 -o "$OUT/feedhandler/wire/_decode$suffix"
atheris_dir=$(python3 -c 'import atheris; print(atheris.path())')
echo "export PYTHONPATH=$PWD/$OUT LD_PRELOAD=$atheris_dir/asan_with_fuzzer.so ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1"
