"""Build the Cython extensions in ext/ against numpy and the system liblz4."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup


def extension(name: str, source: str, libraries=()) -> Extension:
    return Extension(
        f"feedhandler.{name}",
        [f"ext/{source}"],
        include_dirs=[numpy.get_include()],
        libraries=list(libraries),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        extra_compile_args=["-O3"],
    )


setup(
    ext_modules=cythonize(
        [extension("wire._decode", "decode.pyx", libraries=["lz4"]),
         extension("wire._soupbin", "soupbin.pyx"),
         extension("kafka._records", "records.pyx"),
         extension("kafka._producer_link", "producer_link.pyx", libraries=["dl"])],
        include_path=["ext"],
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)
