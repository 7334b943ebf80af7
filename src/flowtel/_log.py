"""Logging helpers: problems on hot paths are logged once per reason, and counted elsewhere."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("flowtel")
_seen: set[str] = set()
_lock = threading.Lock()


def warn_once(key: str, message: str, *args: object) -> None:
    with _lock:
        if key in _seen:
            return
        _seen.add(key)
    logger.warning(message, *args)
