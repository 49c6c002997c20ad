"""How many examples each hypothesis test runs: as written in CI, fewer for a quick local run.

    STREAMCODEC_FUZZ=quick scripts/test      # or .venv/bin/python -m pytest ...

``examples(n)`` is ``n`` by default and a tenth of it (at least 10) under ``STREAMCODEC_FUZZ=quick``;
tests write ``settings(max_examples=examples(300))`` so the profile can change what they ask for.
"""

from __future__ import annotations

import os

__all__ = ["QUICK", "examples"]

#: the quick local profile is on
QUICK: bool = os.environ.get("STREAMCODEC_FUZZ", "") == "quick"


def examples(n: int) -> int:
    """The number of examples to run for a test that asks for ``n``."""
    return max(10, n // 10) if QUICK else n
