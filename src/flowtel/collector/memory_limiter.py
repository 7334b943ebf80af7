"""``memory_limiter`` processor: refuse new data while the process is over its memory budget.

Like the upstream processor it checks resident memory every ``check_interval`` and,
while usage is above ``limit_mib - spike_limit_mib``, receivers answer 503 / UNAVAILABLE
(retryable, so well-behaved OTLP clients back off and resend). Above ``limit_mib`` it
also asks Python's garbage collector to run.
"""

from __future__ import annotations

import gc
import os
import threading

from pydantic import Field, model_validator

from flowtel._log import logger

from .refusal import Refused
from .settings import Model, PositiveDuration

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryLimiterConfig(Model):
    check_interval: PositiveDuration = 1.0
    limit_mib: int = Field(gt=0)
    #: Headroom for a burst between checks; defaults to 20% of ``limit_mib``.
    spike_limit_mib: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _spike_below_limit(self) -> MemoryLimiterConfig:
        if self.spike_limit_mib is not None and self.spike_limit_mib >= self.limit_mib:
            raise ValueError("spike_limit_mib below limit_mib")
        return self


def resident_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # macOS and friends: peak, not current, but better than nothing

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryLimiter:
    def __init__(self, processor_id: str, config: MemoryLimiterConfig) -> None:
        self.id = processor_id
        self._config = config
        spike = config.spike_limit_mib if config.spike_limit_mib is not None else config.limit_mib // 5
        self._soft = config.limit_mib - spike
        self._over = False
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
        if used > self._config.limit_mib:
            gc.collect()
            used = resident_mib()
        over = used > self._soft
        if over != self._over:
            logger.warning("%s: memory %.0f MiB is %s the soft limit %d MiB; %s", self.id, used,
                           "above" if over else "back below", self._soft,
                           "refusing data (retryable)" if over else "accepting data again")
        self._over = over

    def check(self) -> None:
        if self._over:
            raise Refused("memory_limit", f"collector is over its memory limit ({self._soft} MiB); retry later",
                          retry_after_s=self._config.check_interval)

    def shutdown(self) -> None:
        self._stop.set()
