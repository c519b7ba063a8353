"""Build the Cython extensions in ext/ against numpy and the system liblz4.

Release builds (the default, and what the wheels ship) carry no debug info: every extension in
EXTENSIONS gets RELEASE_COMPILE_ARGS and RELEASE_LINK_ARGS. FEEDHANDLER_DEBUG_BUILD=1 keeps
the interpreter's own `-g` instead, for gdb and perf.
Cython writes its generated .c files (and the public header of producer_link) under
build/cython, so ext/ holds only the sources and the sdist can take ext/ by glob (MANIFEST.in).
"""

import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG_BUILD = os.environ.get("FEEDHANDLER_DEBUG_BUILD") == "1"
# -g0 overrides the `-g` in the interpreter's CFLAGS; the linker's -s also drops the symbol table
# (the module's exported symbols stay in .dynsym). Apple's ld ignores -s, so only -g0 there.
RELEASE_COMPILE_ARGS = ["-g0"]
RELEASE_LINK_ARGS = ["-s"] if sys.platform.startswith("linux") else []


def extension(name: str, source: str, libraries=()) -> Extension:
    return Extension(
        f"feedhandler.{name}",
        [f"ext/{source}"],
        include_dirs=[numpy.get_include()],
        libraries=list(libraries),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=["-O3"],
    )


EXTENSIONS = [
    extension("wire._decode", "decode.pyx", libraries=["lz4"]),
    extension("wire._soupbin", "soupbin.pyx"),
    extension("kafka._records", "records.pyx"),
    extension("kafka._batched", "batched.pyx"),
    extension("kafka._producer_link", "producer_link.pyx", libraries=["dl"]),
]

if not DEBUG_BUILD:
    for ext in EXTENSIONS:
        ext.extra_compile_args += RELEASE_COMPILE_ARGS
        ext.extra_link_args += RELEASE_LINK_ARGS

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        include_path=["ext"],
        build_dir="build/cython",
        nthreads=os.cpu_count() or 1,
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
    # The extensions compile independently: one compiler per core.
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
)
