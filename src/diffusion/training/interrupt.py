"""Stopping a training run cleanly on a signal.

Ctrl-C (SIGINT), a cluster's SIGTERM before a time limit or preemption, and SIGUSR1 (which
SLURM can send ahead of the limit: ``#SBATCH --signal=USR1@120``) ask the loop to stop after
the step it is in: that step is logged and checkpointed as the last one, and the run can be
resumed from it exactly. A second signal stops at once (``KeyboardInterrupt``), losing only
the steps since the last checkpoint. Handlers are installed for the loop only, and only in
the main thread (the only one Python delivers signals to); forked data-loading workers, which
Ctrl-C reaches too, inherit them but leave the decision to the training process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                if hasattr(signal, name))


class StopRequest:
    """A context manager around the training loop; ``signal`` is the name of the first stop
    signal received (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    @property
    def signal(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopRequest:
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked data-loading worker: its parent decides
            return
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping after this step with a checkpoint (send it again "
                    "to stop at once).", signal.Signals(signum).name)
