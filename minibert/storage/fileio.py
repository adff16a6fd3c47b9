"""Files that are never half-written, and one writer per directory (host side).

`atomic_write` is the one way Mini-BERT writes a file that someone may read: checkpoints, sidecars, `latest`,
config.json, vocab.txt, metrics.jsonl rewrites and exported transformers folders. The content goes to a temporary
`.NAME.tmp-PID` in the same directory, is fsynced, renamed over NAME (atomic on POSIX) and the directory is
fsynced. A reader sees the old file or the new one, never a part. A failed write removes its temporary; one that
was killed (SIGKILL, power loss) leaves it, and `remove_stale_temporaries` deletes it at the next start.

`DirectoryLock` makes a directory single-writer: an exclusive `flock` on `DIR/.lock`, which the operating system
drops when the process dies, so a killed writer never leaves a lock behind.
"""
from __future__ import annotations

import errno
import hashlib
import fcntl
import json
import os
import re
from pathlib import Path

TEMPORARY_GLOB = ".*.tmp-*"          # what a writer killed mid-write leaves behind (never under a real name)
LOCK_FILE = ".lock"


def atomic_write(path, write) -> Path:
    """Create `path` by calling `write(temporary_path)`, then fsync, rename and fsync the directory.

    On any error the temporary is removed and the old `path` (if any) is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def sha256_file(path) -> str:
    """The sha256 hex digest of a file's content, read 4 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, json_bytes(obj))


def os_error_from(exc: Exception, filename) -> Exception:
    """An OSError (errno, strerror, filename) for a library error that wraps one as text, e.g. safetensors'
    `SafetensorError: ... No space left on device (os error 28)`; `exc` itself when it names no OS error."""
    match = re.search(r"os error (\d+)", str(exc))
    if match is None:
        return exc
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(filename))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory, locked: bool = True) -> list[Path]:
    """Delete the temporaries that killed writers left in `directory`. `locked`: the caller holds the directory's
    lock, so every temporary is stale; otherwise only those whose writer process is gone."""
    removed = []
    for tmp in Path(directory).glob(TEMPORARY_GLOB):
        pid = tmp.name.rsplit("-", 1)[-1]
        if locked or not pid.isdigit() or not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class DirectoryLockedError(RuntimeError):
    """Another process is writing the directory."""


class DirectoryLock:
    """An exclusive lock on a directory for as long as it is held (a context manager): `flock` on `DIR/.lock`,
    which holds the holder's pid. A second writer gets DirectoryLockedError naming the directory and that pid.

    The lock file is removed on release. Taking the lock checks, after `flock`, that the file still is
    `DIR/.lock` (not one a releasing holder just removed), so two holders can never both succeed."""

    def __init__(self, directory, what: str = "directory"):
        self.directory, self.what, self._fd = Path(directory), what, None

    def acquire(self) -> "DirectoryLock":
        path = self.directory / LOCK_FILE
        while self._fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise DirectoryLockedError(
                    f"{self.what} {self.directory} is in use by another process (pid {holder}), which holds "
                    f"{path}: one writer at a time; wait for it to finish or stop it first") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
            else:                     # the file was removed by a holder releasing it: take the new one
                os.close(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
