"""Stop training cleanly on SIGTERM (schedulers, ``docker stop``) and Ctrl-C.

Inside ``with GracefulStop() as stop:`` the first SIGTERM or SIGINT only sets ``stop.requested``; the
loop checks it after each optimizer step, saves a checkpoint and exits with the resume command. A second
Ctrl-C raises KeyboardInterrupt at once (the user really wants out). The previous handlers come back when
the block ends. Signal handlers can only be set from the main thread: elsewhere this does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


class GracefulStop:
    """Turn SIGTERM and SIGINT into a request (``.requested`` = the signal number) instead of an exit.

    ``notify(signum)`` is called once, on the first signal (e.g. to print "saving a checkpoint at the end
    of this step"); keep it short, it runs inside the signal handler.
    """

    def __init__(
        self,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
        notify: Callable[[int], None] | None = None,
    ):
        self.signals = signals
        self.notify = notify
        self.requested: int | None = None
        self.active = False  # False outside the main thread: no handlers were installed
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
            self.active = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
            return
        self.requested = signum
        if self.notify is not None:
            self.notify(signum)

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(
                signum, signal.SIG_DFL if previous is None else previous
            )  # None: set outside Python
        self._previous.clear()
        self.active = False

    def describe(self) -> str:
        """The requested signal's name ("SIGTERM", "SIGINT"), or "" when none came."""
        if self.requested is None:
            return ""
        try:
            return signal.Signals(self.requested).name
        except ValueError:
            return f"signal {self.requested}"
