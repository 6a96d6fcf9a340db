"""Clocks, memory meters and FLOP counts shared by every side of the benchmark.

Each figure is a median over repeats taken after warm-up. On CUDA a repeat is timed with CUDA
events and ends in a synchronisation, so queued kernels are counted; on the CPU a monotonic
clock suffices. Peak memory is the CUDA allocator's high-water mark on a GPU and the process's
resident-set high-water mark on the CPU (reset through ``/proc/self/clear_refs`` on Linux, so
each measurement sees only its own peak).
"""

from __future__ import annotations

import ctypes
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

MIB = 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _elapsed(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds for ``calls`` back-to-back calls, counting all the device work they queued."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - start


@dataclass
class Timing:
    """Seconds per call, one value per timed repeat (each the mean over ``calls`` calls)."""

    seconds: list[float]
    calls: int
    warmup_seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "repeats_s": self.seconds, "calls_per_repeat": self.calls,
                "warmup_s": self.warmup_seconds}


def warm_up(fn: Callable[[], object], device: torch.device, calls: int) -> list[float]:
    """Run ``fn`` untimed-for-the-result ``calls`` times (at least once); returns each call's
    seconds (the last one calibrates how many calls a timed repeat needs)."""
    return [_elapsed(fn, 1, device) for _ in range(max(1, calls))]


def calls_per_repeat(fn: Callable[[], object], device: torch.device, min_time_s: float,
                     last_call_s: float, max_calls: int = 10_000) -> int:
    """How many calls make a repeat last ``min_time_s``: from the last warm-up call when it
    was long enough to judge by, else by timing 2, 4, 8, ... calls (a prefetching data
    loader makes its first few calls look free)."""
    calls, elapsed = 1, last_call_s
    while elapsed < min_time_s / 4 and calls < max_calls:
        calls *= 2
        elapsed = _elapsed(fn, calls, device)
    return max(1, min(max_calls, math.ceil(calls * min_time_s / max(elapsed, 1e-9))))


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
                     min_time_s: float, warmup: dict[str, list[float]]) -> dict[str, Timing]:
    """Time every function ``repeats`` times, taking turns (A, B, A, B, ...), so that a noisy
    machine slows all of them alike. A repeat makes enough calls to last ``min_time_s``."""
    calls = {name: calls_per_repeat(fn, device, min_time_s, warmup[name][-1])
             for name, fn in fns.items()}
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            seconds[name].append(_elapsed(fn, calls[name], device) / calls[name])
    return {name: Timing(seconds[name], calls[name], warmup[name]) for name in fns}


# ---------------------------------------------------------------------------------- memory


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), so that memory freed by an
    earlier measurement cannot hide the next one's allocations from the RSS peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of a block, in MiB, above what was in use when it began.

    ``kind`` says what was measured: ``cuda max_memory_allocated``, ``process RSS peak``, or
    ``process max RSS`` where the peak cannot be reset (then it is the process-lifetime peak).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float = 0.0
        self.kind = ""

    def __enter__(self) -> MemoryMeter:
        synchronize(self.device)
        if self.device.type == "cuda":
            self.kind = "cuda max_memory_allocated"
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _release_free_heap()
        if _proc_status_kib("VmRSS") is not None and _reset_rss_peak():
            self.kind = "process RSS peak"
            self._base = _proc_status_kib("VmRSS") * 1024
        else:
            self.kind = "process max RSS"
            self._base = 0
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind == "process RSS peak":
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:  # ru_maxrss is KiB on Linux, bytes on macOS
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak *= 1 if sys.platform == "darwin" else 1024
        self.peak_mib = max(0.0, peak - self._base) / MIB


# ------------------------------------------------------------------------- FLOPs and peak


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the aten ops ``fn`` runs (forward and, if it calls it, backward), as
    ``torch.utils.flop_counter`` counts them: matmuls, convolutions and attention."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                      repeats: int = 5) -> float:
    """Best measured FLOP/s of an ``n x n`` matrix multiply in ``dtype`` on ``device``: the
    denominator of MFU, measured rather than read off a datasheet."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    warm_up(lambda: a @ b, device, 3)
    calls = 10
    best = min(_elapsed(lambda: a @ b, calls, device) / calls for _ in range(repeats))
    return 2 * n**3 / best


# ------------------------------------------------------------------------------- profiling


def top_ops(fn: Callable[[], object], device: torch.device, calls: int = 2, rows: int = 12) -> str:
    """torch.profiler's table of the ops ``fn`` spends most time in (self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


# ---------------------------------------------------------------------------------- tables


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
