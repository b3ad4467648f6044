"""Ctrl-C (SIGINT) in a process whose job runs on a worker thread: the first press asks the job to stop at the
next step boundary, where it saves a checkpoint; a second press ends the process at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells report for a process ended by Ctrl-C


@contextlib.contextmanager
def on_ctrl_c(first: Callable[[], None], again: Callable[[], None]) -> Iterator[None]:
    """While inside, the first SIGINT calls `first` (it may raise, e.g. KeyboardInterrupt to leave a blocking
    read); a later one calls `again` and ends the process with status 130 at once. os._exit, because a normal
    exit would tear down the interpreter under the worker thread still inside torch ("terminate called without
    an active exception"); checkpoints are written by rename, so none is ever half written. The previous handler
    comes back on leaving. Handlers belong to the main thread: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def handler(signum, frame) -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            first()
            return
        again()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
