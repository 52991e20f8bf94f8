"""Writing files safely: through a uniquely named temporary file in the target folder, then a rename.

Many writers may share a folder (a sweep's threads, two processes on one ``cache_dir``): each gets
its own temporary file (``tempfile.mkstemp`` creates it exclusively, never through an existing
link), so no writer can clobber another's half-written file, and a reader sees the old file or
the new one, never a torn one.  A full disk or a read-only folder is reported as what it is, and
leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text", "DiskFullError", "run_lock"]


class DiskFullError(OSError):
    """No space left on the device that holds a run's output."""


def _full_disk(err: BaseException) -> bool:
    """ENOSPC, or torch.save's RuntimeError on a full disk ("unexpected pos ...")."""
    return getattr(err, "errno", None) == errno.ENOSPC or any(m in str(err) for m in ("No space left", "unexpected pos"))


def _explain(err: BaseException, path: Path) -> BaseException:
    if _full_disk(err):
        return DiskFullError(errno.ENOSPC, f"no space left on device: {path.parent} (writing {path.name}). Free "
                             f"some space or point the run at another folder; the files written before are kept.")
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionError(err.errno, f"cannot write {path} ({err.strerror}): the folder is read-only or not "
                               f"yours. Fix its permissions or choose another folder.")
    return err


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp_path)`` into a fresh temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise _explain(err, path) from None
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) or _full_disk(err):
            raise _explain(err, path) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, poll_s: float = 0.2):
    """Hold ``path`` (a lock file holding this process's id) while a run trains into a shared folder.

    A second writer of the same run waits here until the first one finishes, then finds its result;
    a lock left by a process that died (a kill) is taken over.  Yields True when this call had to wait.
    Threads of one process share a pid, so they serialise on an in-process lock first.
    """
    path = Path(path)
    waited = False
    with _thread_lock(str(path)):
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(path.read_text() or "0")
                except (OSError, ValueError):
                    pid = 0
                if (pid and pid != os.getpid() and _alive(pid)) or (not pid and time.time() - _mtime(path) < 5):
                    waited = True
                    time.sleep(poll_s)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # stale: its process is gone
                continue
            except OSError as err:
                raise _explain(err, path) from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            break
        try:
            yield waited
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


_THREAD_LOCKS: dict[str, list] = {}  # key -> [lock, number of threads holding or waiting]; dropped at 0
_GUARD = threading.Lock()


@contextlib.contextmanager
def _thread_lock(key: str):
    with _GUARD:
        entry = _THREAD_LOCKS.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _GUARD:
            entry[1] -= 1
            if entry[1] == 0:
                del _THREAD_LOCKS[key]
