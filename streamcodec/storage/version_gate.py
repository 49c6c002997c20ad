"""The watch-progress gate: whether this etcd cluster may be sent watch-progress requests.

etcd's RequestProgress is unsafe before the fixes for etcd bugs #15220 (a progress notification
could overtake unsent events) and #17507; Kubernetes gates it the same way (``etcdfeature``).
:func:`supports_watch_progress` judges one server version; :class:`ProgressGate` decides for a
cluster from every member's version, keeping the decision only when every member answered.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Awaitable, Callable, Dict, Iterable, Optional, Tuple

from .errors import Unavailable

__all__ = ["ProgressGate", "lowest_version", "parse_version", "supports_watch_progress", "version_key"]

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def parse_version(version: str) -> Optional[Tuple[int, int, int]]:
    """``(major, minor, patch)`` of an etcd version such as ``"3.5.16"`` or ``"v3.6.0-rc.1"``; None if unparsable."""
    match = _VERSION.match(version.strip())
    if not match:
        return None
    major, minor, patch = (int(x) for x in match.groups())
    return major, minor, patch


def version_key(version: str) -> Tuple[int, ...]:
    """A sort key for versions; an unparsable one sorts lowest."""
    return parse_version(version) or (0, 0, 0)


def lowest_version(versions: Iterable[str]) -> str:
    """The lowest of ``versions`` (at least one)."""
    return min(versions, key=version_key)


def supports_watch_progress(version: str) -> bool:
    """Whether an etcd server ``version`` answers watch-progress requests correctly.

    RequestProgress is unsafe before the fixes for etcd bugs #15220 (progress
    could overtake unsent events) and #17507: they shipped in 3.4.31 and
    3.5.13, and every 3.6+ has them.  Unparsable versions count as unsafe.
    """
    parsed = parse_version(version)
    if parsed is None:
        return False
    major, minor, patch = parsed
    if major != 3:
        return major > 3
    if minor >= 6:
        return True
    if minor == 5:
        return patch >= 13
    if minor == 4:
        return patch >= 31
    return False


#: what the gate asks: every member's endpoint and version, None for a member that did not answer
MemberVersions = Callable[[], Awaitable[Dict[str, Optional[str]]]]


class ProgressGate:
    """The gate of one cluster, decided from ``member_versions()``.

    True when every member is at or above the gate.  The decision is kept
    (members are assumed not to be downgraded) only when every member
    answered: one that is down may be below the gate and serve watches once
    back, so while any is silent the answer is False and the question is
    asked again later, at most every ``recheck_interval`` seconds.
    Concurrent askers share one round of questions.
    """

    def __init__(self, member_versions: MemberVersions, recheck_interval: float) -> None:
        self._member_versions = member_versions
        self.recheck_interval = recheck_interval
        #: the gate, once decided with every member answering
        self.decided: Optional[bool] = None
        #: the round deciding the gate now, shared by concurrent askers
        self._check: Optional["asyncio.Future[bool]"] = None
        #: loop time before which an undecided gate is answered False without asking again
        self._recheck_at = 0.0

    async def allowed(self) -> bool:
        """Whether progress requests may be sent now (False while undecided).

        Raises :class:`~streamcodec.storage.errors.Unavailable` when no member answers.
        """
        if self.decided is not None:
            return self.decided
        loop = asyncio.get_running_loop()
        check = self._check
        if check is None or check.done():
            if loop.time() < self._recheck_at:
                return False  # undecided, and asked too recently to ask again
            check = self._check = asyncio.ensure_future(self._decide())
            # its failure is retrieved here too, in case every asker was cancelled meanwhile
            check.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shielded: one caller's cancellation must not cancel the round the others wait for
        return await asyncio.shield(check)

    async def _decide(self) -> bool:
        versions = await self._member_versions()
        answered = [v for v in versions.values() if v is not None]
        if not answered:
            raise Unavailable("no etcd member answered Status: " + ", ".join(versions))
        if len(answered) < len(versions):
            silent = [endpoint for endpoint, version in versions.items() if version is None]
            log.info("watch-progress gate undecided (no Status from %s): no progress requests for now", silent)
            self._recheck_at = asyncio.get_running_loop().time() + self.recheck_interval
            return False
        self.decided = supports_watch_progress(lowest_version(answered))
        return self.decided
