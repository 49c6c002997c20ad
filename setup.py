"""Builds the Cython extensions; everything else is in pyproject.toml.

Each ``*.pyx`` under streamcodec/ (and its subpackages) becomes one extension module.
Set STREAMCODEC_NO_EXTENSIONS=1 to install the pure-Python twins only.
"""

import glob
import os

from setuptools import Extension, setup

extensions = []
if not os.environ.get("STREAMCODEC_NO_EXTENSIONS"):
    from Cython.Build import cythonize

    sources = sorted(glob.glob("streamcodec/**/*.pyx", recursive=True))
    extensions = cythonize(
        [Extension(path[:-4].replace("/", "."), [path], extra_compile_args=["-O3"]) for path in sources],
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True},
    )

setup(ext_modules=extensions)
