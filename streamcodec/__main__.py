"""``python -m streamcodec``: the same as the ``streamcodec`` command."""

import sys

from .cli import main

sys.exit(main())
