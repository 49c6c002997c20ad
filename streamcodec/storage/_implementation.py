"""Which etcd wire codec storage uses: the compiled ``_wire``, or its pure-Python twin ``_wire_py``
when ``STREAMCODEC_PURE_PYTHON`` is set (same switch as the codec's) or the compiled one is not built.

Every storage module imports ``wire`` from here, so the choice is made once, on first import, and
no module depends on another having run first.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["PURE_PYTHON", "IMPLEMENTATION", "wire"]

#: a non-empty value other than "0" forces the twin
PURE_PYTHON: bool = os.environ.get("STREAMCODEC_PURE_PYTHON", "") not in ("", "0")

wire: ModuleType
if PURE_PYTHON:
    from . import _wire_py as wire
else:
    try:
        from . import _wire as wire  # type: ignore[no-redef]
    except ImportError:  # not built: the twin, and IMPLEMENTATION says so
        from . import _wire_py as wire  # type: ignore[no-redef]

#: "cython" when the compiled wire codec is in use, else "python"
IMPLEMENTATION: str = "python" if wire.__name__.endswith("_py") else "cython"
