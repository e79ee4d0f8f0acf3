"""Deadlines for calls into an engine: a stuck call ends the run with an error, never a hang.

:func:`deadline` arms a timer around a block. When it fires, :class:`EngineTimeout` is raised in the
thread that runs the block (at its next Python bytecode: vLLM's engine loop is Python). If the
thread is stuck in native code and does not return within ``grace_s`` more seconds, the process
prints the same message and exits with status 124: files already written (checkpoints, trajectories,
metrics) are complete, since the run writes them atomically.

May import: nothing from agentrl.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class EngineTimeout(TimeoutError):
    """An engine call ran past its deadline."""


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Schedule ``exc_type`` in thread ``thread_id`` at its next bytecode (``None``: cancel it)."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None  # None passes NULL: cancel
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


@contextmanager
def deadline(seconds: float | None, what: str, grace_s: float = 60.0) -> Iterator[None]:
    """Run the block with a time limit of ``seconds`` (``None`` or ``<= 0``: no limit).

    Raises :class:`EngineTimeout` naming ``what`` when the limit passes; exits the process (status
    124) if the block is still running ``grace_s`` seconds later.
    """
    if not seconds or seconds <= 0:
        yield
        return
    message = (
        f"{what} did not finish within {seconds:g} s: the engine is stuck or far too slow for this "
        "workload (raise engine.generate_timeout_s / engine.start_timeout_s, or use engine.name=hf)"
    )
    thread_id = threading.get_ident()
    done = threading.Event()
    fired = threading.Event()

    def hard_exit() -> None:
        if not done.wait(grace_s):
            print(
                f"agentrl: {message}; no response to the timeout in {grace_s:g} s, exiting", file=sys.stderr
            )
            sys.stderr.flush()
            os._exit(124)

    def fire() -> None:
        if done.is_set():
            return
        fired.set()
        _raise_in(thread_id, EngineTimeout)
        threading.Thread(target=hard_exit, daemon=True).start()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except EngineTimeout:
        raise EngineTimeout(message) from None
    finally:
        done.set()
        timer.cancel()
        if fired.is_set():
            # The async exception may still be pending if the block ended just as it fired.
            _raise_in(thread_id, None)
