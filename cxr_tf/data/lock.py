"""A folder held by one process at a time: the lock of a run directory or a dataset folder.

`hold(folder, command)` creates `<folder>/.cxr_tf.lock` holding the holder's host, PID,
command and start time, and removes it when the block ends, also on an exception or
Ctrl-C. A second process asking for the folder gets `FolderInUse`, whose message names the
holder. A lock left by a process that ended without cleanup (killed) is stale: on the same
host its PID no longer runs, and the next holder takes it over with a note on stderr. A lock
from another host cannot be checked from here; the message says which file to delete when
that process is gone.

It sits in the data layer so that both conversion (a dataset folder) and training (a run
directory, `cxr_tf.runs`) use it. The file appears complete or not at all (written aside,
then hard-linked into place, which fails when a lock is there), so no reader sees half of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = ".cxr_tf.lock"

# Folders this process holds (resolved path -> depth), so that a nested `hold` of the same
# folder (a command calling another in-process) is not refused by its own lock.
_HELD: dict[Path, int] = {}
_TOKENS: dict[Path, str] = {}


class FolderInUse(RuntimeError):
    """The folder is held by another live process; the message names it."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of `folder`."""
    return Path(folder) / LOCK_FILE


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's record; None when there is none; {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_reason(record: dict[str, Any], folder: Path) -> str | None:
    """Why a lock record no longer holds (None: it does, or it cannot be told from here)."""
    if not record:
        return "its lock file is unreadable"
    if record.get("host") != socket.gethostname():
        return None
    pid = record.get("pid")
    if not isinstance(pid, int):
        return "its lock file names no process"
    if pid == os.getpid() and folder.resolve() not in _HELD:
        return f"PID {pid} is this very process (a lock left by an earlier one)"
    if not _alive(pid):
        return f"PID {pid} no longer runs"
    return None


def describe(record: dict[str, Any]) -> str:
    """`fit (PID 123 on host, since 2024-05-01 10:00:00)`."""
    return (
        f"{record.get('command', '?')} (PID {record.get('pid', '?')} on "
        f"{record.get('host', '?')}, since {record.get('started', '?')})"
    )


def holder(folder: str | Path) -> dict[str, Any] | None:
    """The record of the live process holding `folder`; None when it is free or its lock
    is stale. A lock from another host counts as held."""
    folder = Path(folder)
    record = _read(lock_path(folder))
    if record is None or _stale_reason(record, folder) is not None:
        return None
    return record


def in_use_message(folder: Path, record: dict[str, Any]) -> str:
    """The line a refused process prints."""
    text = f"{folder} is in use by {describe(record)}"
    if record.get("host") != socket.gethostname():
        return text + f"; if that process has ended, delete {lock_path(folder)}"
    return text + "; wait for it to end or stop it (Ctrl-C)"


def check_free(folder: str | Path) -> None:
    """Raises FolderInUse when another live process holds `folder` (this one may)."""
    folder = Path(folder)
    record = holder(folder)
    if record is not None and folder.resolve() not in _HELD:
        raise FolderInUse(in_use_message(folder, record))


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Puts the lock file in place unless one is there; True when it was created."""
    aside = path.with_name(f"{LOCK_FILE}.{record['token']}")
    aside.write_text(json.dumps(record) + "\n")
    try:
        os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)


def _acquire(folder: Path, command: str) -> str:
    """Takes the lock (over a stale one, with a note); returns this holder's token."""
    path = lock_path(folder)
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": command,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }
    for _ in range(3):
        if _create(path, record):
            return record["token"]
        found = _read(path)
        if found is None:  # released in the meantime
            continue
        reason = _stale_reason(found, folder)
        if reason is None:
            raise FolderInUse(in_use_message(folder, found))
        # Move the stale lock aside under a name of our own: of two processes taking it
        # over at once, only one moves it; the other then finds the new, live lock.
        with contextlib.suppress(FileNotFoundError):
            aside = path.with_name(f"{LOCK_FILE}.stale-{record['token']}")
            os.rename(path, aside)
            aside.unlink()
            print(
                f"note: {folder} was held by {describe(found) if found else 'an unknown process'}"
                f", which has ended ({reason}); taking it over",
                file=sys.stderr,
            )
    raise FolderInUse(f"{folder}: could not take its lock {path}; try again")


def _release(folder: Path, token: str) -> None:
    path = lock_path(folder)
    record = _read(path)
    if record and record.get("token") == token:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(folder: str | Path, command: str) -> Iterator[Path]:
    """Holds `folder` (created if missing) for the block; yields the folder.

    A folder this block created is removed again when it is left empty (a refused or
    failed start leaves nothing behind).

    Raises:
        FolderInUse: another live process holds it (the message names that process).
        NotADirectoryError: `folder`, or a parent, is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotADirectoryError(f"cannot create the folder {folder}: {err.strerror}") from err
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    try:
        token = _acquire(folder, command)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    _HELD[key], _TOKENS[key] = 1, token
    try:
        yield folder
    finally:
        del _HELD[key]
        _release(folder, _TOKENS.pop(key))
        if created:
            with contextlib.suppress(OSError):  # not empty: it holds the work
                folder.rmdir()
