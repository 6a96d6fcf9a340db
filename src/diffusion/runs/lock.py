"""One writer per run folder.

A process that trains into a run folder holds an exclusive lock on ``<run>/.writer.lock``
(``flock``), so a second ``diffusion.train`` that would write there (a resume of a run still
training, two resumes at once, two new runs given the same ``hydra.run.dir``) stops in one
sentence naming the process that holds it, before it writes anything. The lock belongs to
the process: the system drops it when the process ends, a SIGKILL included, so nothing stale
is ever left to clean up. Readers (sample, evaluate, report) take no lock. Within one process
the lock is re-entrant, so the command line's checks and the training they lead to share it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from diffusion.errors import RunError

LOCK_NAME = ".writer.lock"
_held: dict[Path, list[int]] = {}  # run folder -> [file descriptor, holds]


def _holder(path: Path) -> str:
    """The pid holding ``path``'s flock, from ``/proc/locks`` (Linux), else a description."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                if "FLOCK" in fields and "->" not in fields:
                    at = fields.index("FLOCK")
                    if fields[at + 4].rsplit(":", 1)[-1] == str(inode):
                        return f"process {fields[at + 3]}"
    except (OSError, IndexError):
        pass
    return "another process"


class WriterLock:
    """``with WriterLock(run):`` holds the run folder's writer lock (``acquire`` alone holds it
    until the process ends); a held lock raises ``RunError`` saying who holds it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()

    def acquire(self) -> WriterLock:
        if self.run_dir in _held:
            _held[self.run_dir][1] += 1
            return self
        path = self.run_dir / LOCK_NAME
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)  # a new run's folder: made here
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            raise RunError(f"Cannot write to the run folder {self.run_dir} ({reason}): make it "
                           "writable, or copy the run to a writable place and use the copy."
                           ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(f"{self.run_dir} is being written by {_holder(path)} (a "
                           "training still running): wait for it to end or stop it, "
                           "then try again.") from None
        _held[self.run_dir] = [fd, 1]
        return self

    def release(self) -> None:
        entry = _held.get(self.run_dir)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.run_dir]
            os.close(entry[0])  # closing the descriptor drops the flock

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
