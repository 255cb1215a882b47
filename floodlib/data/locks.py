"""Exclusive use of a folder by one process at a time: a run folder, a model's checkpoint folder.

Two pipelines on one run folder, or two trainings of one model into one stage folder, would each take the
other's files for their own (a live ``last.ckpt`` read as an interrupted run's). :func:`hold_folder` takes an
exclusive lock (``filelock``: an OS-level lock the kernel drops when its process ends, even by ``kill -9``,
so a crashed holder never blocks the next run) and records who holds it, so the refused process can say.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from floodlib.data.store import atomic_json

LOCK_NAME = ".floodlib.lock"
HOLDER_NAME = ".floodlib.lock.holder"


class FolderBusyError(RuntimeError):
    """Another process holds the folder; the message says which (pid, host, command, since when)."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe_holder(folder: str | Path) -> str:
    """Who holds ``folder``'s lock, in words (as recorded by the holder; "unknown" when it left no record)."""
    try:
        holder = json.loads((Path(folder) / HOLDER_NAME).read_text())
        return (f"process {holder['pid']} on {holder['host']} since {holder['since']} "
                f"({holder['command'] or 'no command line'})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it left no record of itself)"


@contextmanager
def hold_folder(folder: str | Path, *, what: str) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) exclusively for the ``with`` block; ``what`` names its use in the
    error (e.g. "run folder", "training of Arch_02").

    Raises :class:`FolderBusyError` within a fifth of a second, without waiting for the holder, when another
    process (or another holder in this one) has it. A folder this call created is removed again if it is left empty.
    """
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, is_singleton=False)
    try:
        # A fraction of a second, not an instant: a holder that has just finished removes the lock file, and a
        # lock this process took on that removed file in between is discarded by filelock (>= 3.21), which then
        # tries again on the path's new file rather than report the folder busy.
        lock.acquire(timeout=0.2)
    except Timeout:
        raise FolderBusyError(f"{folder}: the {what} is in use by {describe_holder(folder)}; two at once would "
                              "take each other's files for their own. Wait for it to finish, or use another "
                              "folder.") from None
    try:
        atomic_json(_holder(), folder / HOLDER_NAME)
        yield folder
    finally:
        (folder / HOLDER_NAME).unlink(missing_ok=True)
        # Removed while still held: a process that opens it now finds it locked, and one that had opened it
        # before and locks it after the release holds a removed file, which filelock discards; one that comes
        # later makes a new one. Its work done, this holder no longer needs the exclusion.
        (folder / LOCK_NAME).unlink(missing_ok=True)
        lock.release()
        for path in created:  # nothing was made in them: leave no empty folders behind
            try:
                path.rmdir()
            except OSError:
                break


def exit_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> None:
    """End this process (exit status 1) within ``poll_s`` seconds of the end of its parent, ``parent_pid``
    (default: the parent it has now).

    For worker processes (simulation, tuning, training ranks): when what started them is killed (``kill -9``
    of the pipeline ends its notebook kernel the same way), they would otherwise run on as orphans, still
    writing into the run folder. Call it first thing in the worker, with the starter's pid where the starter
    may already be gone by then (a pool's ``initializer=exit_with_parent, initargs=(os.getpid(),)``); a
    daemon thread watches the parent.
    """
    import threading

    parent = os.getppid() if parent_pid is None else parent_pid

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="floodlib-exit-with-parent", daemon=True).start()
