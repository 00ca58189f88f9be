"""One writer per run folder: an advisory lock, ``<run_dir>/.lock``, that names its holder (host and pid).

The lock is a POSIX record lock (``fcntl.lockf``): the kernel (or the NFS lock manager) drops it when its holder
exits, however it exits, so a killed run never leaves a folder locked; it is not inherited by forked data loader
workers. Where the file system has no locks, the file's content serves instead: a holder on this host whose pid
is gone is stale and taken over; one on another host is trusted. A second process into a folder that is being
written gets :class:`FolderBusy`, one line naming the holder. Within one process the lock is re-entrant (a sweep
that peeks at its job's folder, then runs the job in-process).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("vitstem")

NAME = ".lock"
_held: dict[Path, tuple[int, int]] = {}   # lock file -> (fd, depth), in this process
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderBusy(Exception):
    """Another process is writing this run folder; the message names it."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(run_dir: Path | str) -> str:
    """``pid 123 on host h (since 2026-12-04 20:31:02 UTC)``, as the lock file says, or ``unknown``."""
    try:
        host, pid, since = (Path(run_dir) / NAME).read_text().split()[:3]
        return f"pid {pid} on host {host} (since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(since)))})"
    except (OSError, ValueError):
        return "another process"


def _busy(run_dir: Path) -> FolderBusy:
    return FolderBusy(f"run folder {run_dir} is being written by {holder(run_dir)}; wait for it to end, or stop "
                      "it, then run the command again (a folder has one writer)")


def _stale(run_dir: Path) -> bool:
    """Without kernel locks: the lock file names a process of this host that is gone (or names nothing)."""
    try:
        host, pid = (run_dir / NAME).read_text().split()[:2]
    except (OSError, ValueError):
        return True
    return host == socket.gethostname() and not _alive(int(pid))


def acquire(run_dir: Path | str) -> None:
    """Take ``run_dir``'s lock (creating the folder) or raise :class:`FolderBusy`; release with :func:`release`."""
    run_dir = Path(run_dir)
    path = (run_dir / NAME).resolve() if run_dir.exists() else run_dir.absolute() / NAME
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            os.close(fd)
            raise _busy(run_dir) from None
        if e.errno not in _NO_LOCKS:
            os.close(fd)
            raise
        if not _stale(run_dir):  # no kernel locks here: trust the file unless its holder is gone
            os.close(fd)
            raise _busy(run_dir) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{socket.gethostname()} {os.getpid()} {time.time():.0f}\n".encode(), 0)
    _held[path] = (fd, 1)


def release(run_dir: Path | str) -> None:
    path = (Path(run_dir) / NAME).resolve()
    if path not in _held:
        return
    fd, depth = _held.pop(path)
    if depth > 1:
        _held[path] = (fd, depth - 1)
        return
    try:
        os.ftruncate(fd, 0)  # a lock file left behind names nobody
    finally:
        os.close(fd)  # drops the lock


def check_free(run_dir: Path | str) -> None:
    """Raise :class:`FolderBusy` if another process holds ``run_dir``'s lock (takes and drops it at once)."""
    run_dir = Path(run_dir)
    if not (run_dir / NAME).is_file() or (run_dir / NAME).resolve() in _held:
        return
    acquire(run_dir)
    release(run_dir)
