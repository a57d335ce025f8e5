"""Ctrl-C and SIGTERM end a command with one line on stderr and exit status 130 or 143, at any moment.

Python turns SIGINT into KeyboardInterrupt but lets SIGTERM kill the process at once, without a word and
without the clean-up of `finally` blocks and context managers (closing the results store, the progress
bar). While `handled()` is active, SIGTERM raises `Terminated`, a KeyboardInterrupt, in the main thread,
so both signals take the same path; `report` prints the line and gives the exit status.

While PyTorch is imported, `install(defer=True)` only notes the signals, for `pending()` afterwards: an
exception raised in the middle of that import can be swallowed (inside a weakref callback CPython only
prints "Exception ignored") or abort the process from PyTorch's extension code.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

_received: list[int] = []   # signals received and not yet reported
reported: int | None = None   # the exit status once report() has run
threads_left = False          # a library's thread was left running in native code (leave_thread_behind)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _on_signal(signum, frame):
    _received.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _note_signal(signum, frame):
    _received.append(signum)


def install(defer: bool = False) -> dict:
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt from now on, or with defer=True both are only
    noted for pending() (main thread only; a signal that is ignored or has someone else's handler is left
    alone). Returns the previous handlers, for restore()."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if old[s] in (default, _on_signal, _note_signal):
            signal.signal(s, _note_signal if defer else _on_signal)
    return old


def ours() -> dict:
    """The handlers of SIGINT and SIGTERM that are this module's (main thread), to put back with reinstall()."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGINT, signal.SIGTERM) if (h := signal.getsignal(s)) in (_on_signal, _note_signal)}


def reinstall(handlers: dict) -> None:
    """Put back this module's handlers (from ours()) after a library replaced them: Ray's init installs a SIGTERM
    handler of its own that ends the process with a stack dump and no word of what was stored. Handlers that were
    not ours are left as the library set them."""
    if threading.current_thread() is threading.main_thread():
        for s, h in handlers.items():
            signal.signal(s, h)


def restore(old: dict) -> None:
    """Reinstall the signal handlers that install() returned."""
    for s, h in old.items():
        if h is not None:
            signal.signal(s, h)


@contextmanager
def handled():
    """install() for the block; the previous handlers are restored after it."""
    old = install()
    try:
        yield
    finally:
        restore(old)


def pending() -> KeyboardInterrupt | None:
    """The interrupt of a signal noted but not reported (deferred, or its exception swallowed), if any."""
    if not _received:
        return None
    return Terminated() if signal.SIGTERM in _received else KeyboardInterrupt()


def check() -> None:
    """Raise the interrupt of a signal received but neither raised through nor reported: its exception was
    swallowed, for instance because it arrived while a weakref callback or __del__ ran (CPython then only
    prints "Exception ignored"), as tensors are freed all the time in a training loop. Called where raising
    is safe (each epoch end, before a file is written); a no-op unless the CLI's handlers noted a signal."""
    if reported is None and _received:
        raise pending()


def _terminated(exc: BaseException) -> bool:
    """Whether the interrupt comes from SIGTERM: its exception says so, or the signal was received (a library that
    catches our Terminated may raise a plain KeyboardInterrupt in its place; Ray's waits do)."""
    return isinstance(exc, Terminated) or signal.SIGTERM in _received


def exit_status(exc: BaseException) -> int:
    """128 + the signal number: 143 for SIGTERM, 130 for Ctrl-C (SIGINT)."""
    return 128 + (signal.SIGTERM if _terminated(exc) else signal.SIGINT)


def report(exc: BaseException, note=None, stream=None) -> int:
    """Print `smoothness: interrupted` (or `terminated (SIGTERM)`) and what note() returns, one line;
    return the exit status.

    Further SIGINT/SIGTERM are ignored from here on (main thread), so a second Ctrl-C cannot turn the
    message into a traceback; the caller is about to exit (handled() restores the handlers)."""
    global reported
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    try:
        extra = note() if note is not None else ""
    except Exception:   # the message must not fail
        extra = ""
    what = "terminated (SIGTERM)" if _terminated(exc) else "interrupted"
    print(f"smoothness: {what}{extra}", file=stream or sys.stderr, flush=True)
    reported = exit_status(exc)
    _received.clear()
    return reported



def _exit_now(signum, frame):
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    import os
    os._exit(128 + signum)


def leave_thread_behind() -> None:
    """Note that a thread is left running in a library's native code (Ray's connection to a cluster that does not
    answer): the command then ends with os._exit after flushing its output (python -m smoothness), as the
    interpreter's finalization could abort on that thread instead of returning the exit status."""
    global threads_left
    threads_left = True


def finishing() -> None:
    """The command's work is done: a SIGINT or SIGTERM from now on (while the interpreter shuts down and runs its
    atexit callbacks, where an exception would only be printed as "Exception ignored" and the exit status would
    be 0) ends the process at once with 130 or 143, quietly (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) in (_on_signal, _note_signal, signal.default_int_handler, signal.SIG_DFL):
                signal.signal(s, _exit_now)
