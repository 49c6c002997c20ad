"""``streamcodec demo``: Kubernetes' watch-list experiment against ``streamcodec serve`` (see :mod:`.experiment`)."""

from .experiment import main

__all__ = ["main"]
