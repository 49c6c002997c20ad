"""``python -m streamcodec.demo``: the same as ``streamcodec demo``."""

import sys

from .experiment import main

sys.exit(main())
