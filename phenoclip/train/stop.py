"""The stop request of a training run: SIGTERM and SIGUSR1 recorded instead of obeyed.

Kept free of torch and of the rest of the package, so that a command can start listening before
its slow imports: a batch system's pre-timeout signal in the first seconds of a job would
otherwise kill the process with nothing saved. The training loop reads the flag at each step
boundary (:mod:`phenoclip.train.loop`).
"""

from __future__ import annotations

import signal


class StopFlag:
    """Records SIGTERM/SIGUSR1 instead of dying, so the loop can checkpoint first.

    Nested uses share the outermost flag: a command enters one before its slow setup (opening
    stores, building the model), and the loop's own sees a signal that arrived then; without it
    a signal during setup kills the process with nothing saved.
    """

    _active: "StopFlag | None" = None

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        self._outer: StopFlag | None = None

    def __enter__(self) -> "StopFlag":
        if StopFlag._active is not None:
            self._outer = StopFlag._active
            return self._outer
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        StopFlag._active = self
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        if self._outer is not None:
            self._outer = None
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        StopFlag._active = None
