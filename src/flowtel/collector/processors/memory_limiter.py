"""``memory_limiter`` processor: refuse new data while the process is over its memory budget.

Like the upstream processor it checks resident memory every ``check_interval`` and,
while usage is above ``limit_mib - spike_limit_mib``, receivers answer 503 / UNAVAILABLE
(retryable, so well-behaved OTLP clients back off and resend). Above ``limit_mib`` it
also asks Python's garbage collector to run.

Resident memory is what the kernel charges (and what a container's OOM killer reads), but
glibc's allocator keeps freed memory mapped: after a spike of held spans was delivered, RSS
stayed at its peak and the limiter refused every request for as long as the process lived.
So while over the soft limit, each check hands free heap memory back to the OS
(``malloc_trim``, glibc only; ``allocator.py``) before it measures again: intake resumes as
soon as the data is gone. Where the allocator cannot give all of it back (musl and macOS
have no such call; fragmentation), the limiter also asks what the collector holds (queued,
held and export-queued data): once a spike of data is gone, refusing cannot free anything,
so it takes data again while it holds none (freed memory is reused first), and refuses
again while the data it took is held. A limit below the idle process's memory still refuses.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable

from pydantic import Field, model_validator

from flowtel._log import logger, warn_once

from ..refusal import Refused
from ..settings import Model, PositiveDuration
from .allocator import release_free_memory

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryLimiterConfig(Model):
    check_interval: PositiveDuration = 1.0
    #: Hard limit in MiB; or ``limit_percentage`` of the memory available to the process (its cgroup limit
    #: in a container, otherwise the machine's).
    limit_mib: int | None = Field(None, gt=0)
    limit_percentage: int | None = Field(None, gt=0, le=100)
    #: Headroom for a burst between checks; defaults to 20% of the limit.
    spike_limit_mib: int | None = Field(None, ge=0)
    spike_limit_percentage: int | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def _one_limit(self) -> MemoryLimiterConfig:
        if (self.limit_mib is None) == (self.limit_percentage is None):
            raise ValueError("exactly one of limit_mib, limit_percentage")
        limit, spike = self.limits_mib()
        if spike >= limit:
            raise ValueError("a spike limit below the limit")
        return self

    def limits_mib(self) -> tuple[int, int]:
        total = available_mib()
        limit = self.limit_mib if self.limit_mib is not None else total * (self.limit_percentage or 0) // 100
        if self.spike_limit_mib is not None:
            spike = self.spike_limit_mib
        elif self.spike_limit_percentage is not None:
            spike = total * self.spike_limit_percentage // 100
        else:
            spike = limit // 5
        return limit, spike


def available_mib() -> int:
    """The cgroup memory limit when there is one (containers), else the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw) // 2**20
    try:
        return os.sysconf("SC_PHYS_PAGES") * _PAGE // 2**20
    except (ValueError, OSError, AttributeError):
        return 1024


def resident_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # macOS and friends: peak, not current, but better than nothing

        return maxrss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sys.platform)


def maxrss_mib(ru_maxrss: int, platform: str) -> float:
    """``getrusage``'s peak RSS in MiB: macOS reports it in bytes, Linux and the BSDs in KiB."""
    return ru_maxrss / (2**20 if platform == "darwin" else 1024)


class MemoryLimiter:
    def __init__(self, processor_id: str, config: MemoryLimiterConfig,
                 holding: Callable[[], float] | None = None) -> None:
        """``holding``: how much data the collector holds now (any unit; 0 when it holds nothing)."""
        self.id = processor_id
        self._config = config
        self._holding = holding
        self._limit, spike = config.limits_mib()
        self._soft = self._limit - spike
        self._over = False
        self._held_while_over = False  # data was held while over the soft limit: a spike, not a low limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"flowtel-{processor_id}", daemon=True)

    def start(self) -> None:
        self._check()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._config.check_interval):
            self._check()

    def _check(self) -> None:
        used = resident_mib()
        if used > self._limit:
            gc.collect()
        if used > self._soft and release_free_memory():
            used = resident_mib()
        over = used > self._soft
        if not over:
            self._held_while_over = False
        elif self._holding is not None:
            if self._holding():
                self._held_while_over = True
            elif self._held_while_over:  # a spike of data was delivered; what is left is the allocator's
                warn_once(f"memory-held:{self.id}", "%s: memory %.0f MiB is still above the soft limit %d MiB "
                          "although the collector holds no data (memory the allocator keeps); accepting data "
                          "while it holds none", self.id, used, self._soft)
                over = False
        if over != self._over and not self._held_while_over:
            logger.warning("%s: memory %.0f MiB is %s the soft limit %d MiB; %s", self.id, used,
                           "above" if over else "back below", self._soft,
                           "refusing data (retryable)" if over else "accepting data again")
        elif over != self._over:  # taking data only while holding none: it flips at every check, so once
            warn_once(f"memory-held-refusing:{self.id}", "%s: memory %.0f MiB is above the soft limit %d MiB; "
                      "refusing data while the collector holds some", self.id, used, self._soft)
        self._over = over

    def check(self) -> None:
        if self._over:
            raise Refused("memory_limit", f"collector is over its memory limit ({self._soft} MiB); retry later",
                          retry_after_s=self._config.check_interval)

    def shutdown(self) -> None:
        self._stop.set()
