"""Builds the Cython extensions; everything else is in pyproject.toml.

Each ``*.pyx`` under streamcodec/ (and its subpackages) becomes one extension module.
The extensions are optional: when one does not compile (no C compiler, no
Python headers) the build warns and goes on, and that module's pure-Python twin
(``*_py.py``) serves instead; ``streamcodec.IMPLEMENTATION`` then says "python".
Set STREAMCODEC_NO_EXTENSIONS=1 to install the pure-Python twins only.
"""

import glob
import os
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

CYTHON_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True}

#: What a missing or broken C toolchain raises while building one extension.
_BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError)


class optional_build_ext(build_ext):
    """Cythonizes when building (not when making an sdist), and skips, with a warning, what does not compile."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.skipped: set[str] = set()  # names of the extensions that did not compile
        if self.parallel is None:  # the modules are independent: compile them side by side
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except _BUILD_ERRORS as exc:  # e.g. no compiler could be set up at all
            self._warn("the C extensions", exc)

    def build_extensions(self) -> None:
        # Here, once run() has set up the compiler, not at import: an sdist asks build_ext for its sources and must
        # get the .pyx, and there is no point in generating C for a compiler that is not there.
        compiler = getattr(self.compiler, "compiler_so", None) or [""]
        if shutil.which(compiler[0]) is None:
            self._warn("the C extensions", f"no C compiler {compiler[0]!r}")
            self.skipped.update(ext.name for ext in self.extensions)
            return
        if any(s.endswith(".pyx") for ext in self.extensions for s in ext.sources):
            from Cython.Build import cythonize  # a build requirement; only building needs it

            generated = cythonize(self.extensions, compiler_directives=CYTHON_DIRECTIVES, quiet=True,
                                  nthreads=self.parallel if isinstance(self.parallel, int) else 0)
            c_sources = {module.name: module.sources for module in generated}
            for ext in self.extensions:  # keep setuptools' own Extension objects (finalize_options annotated them)
                ext.sources = c_sources[ext.name]
        super().build_extensions()

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except _BUILD_ERRORS as exc:
            self._warn(ext.name, exc)
            self.skipped.add(ext.name)

    def copy_extensions_to_source(self) -> None:
        # --inplace: copy what was built; a skipped module has no file to copy (its twin serves)
        every = self.extensions
        self.extensions = [ext for ext in every if ext.name not in self.skipped]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every

    @staticmethod
    def _warn(what: str, reason: object) -> None:
        print(
            f"WARNING: could not compile {what} ({reason}); the pure-Python twin is used instead "
            "(streamcodec.IMPLEMENTATION will say 'python')",
            file=sys.stderr,
        )


extensions = []
if not os.environ.get("STREAMCODEC_NO_EXTENSIONS"):
    sources = sorted(glob.glob("streamcodec/**/*.pyx", recursive=True))
    # depends: a change to a C header or an included .pxi beside the .pyx rebuilds it
    extensions = [
        Extension(path[:-4].replace("/", "."), [path], extra_compile_args=["-O3"],
                  depends=sorted(glob.glob(os.path.join(os.path.dirname(path), "*.h"))
                                 + glob.glob(os.path.join(os.path.dirname(path), "*.pxi"))))
        for path in sources
    ]

setup(ext_modules=extensions, cmdclass={"build_ext": optional_build_ext})
