"""Stopping a run cleanly when the machine is about to be taken away.

Preemptible cloud machines send SIGTERM some seconds before they stop; Ctrl-C
sends SIGINT. Inside :class:`StopRequest` either signal only sets a flag: the
training loop finishes the step it is in, writes a checkpoint, waits for it
and returns, and the same command resumes from there. A second SIGINT
interrupts at once, for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Turns SIGTERM and SIGINT into a request to stop, for the duration of a ``with`` block.

    ``requested`` is the name of the first signal received (``"SIGTERM"``), or
    None. Outside the main thread (where Python cannot install handlers) it
    never requests anything.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested is None:
            self.requested = signal.Signals(number).name

    def install(self) -> StopRequest:
        """Catches the signals from now on (in the main thread); returns self."""
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def restore(self) -> None:
        """Gives the signals back to the handlers they had before :meth:`install`."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()
