"""Logging helpers: problems on hot paths are logged once per reason, and counted elsewhere."""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger("flowtel")
_seen: set[str] = set()
_lock = threading.Lock()


def _reinit_lock() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a fork while another thread logs must not leave the lock held
    os.register_at_fork(after_in_child=_reinit_lock)


def warn_once(key: str, message: str, *args: object) -> None:
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    logger.warning(message, *args)
