"""Fork safety for the locks and threads flowtel owns, as the OpenTelemetry SDK does it.

``os.fork`` copies a process with only the calling thread: a lock another thread held at that
moment stays held in the child for ever, and flowtel's worker threads are simply gone. Servers
that preload the app and fork workers (gunicorn ``--preload``, uWSGI, multiprocessing's ``fork``)
do exactly that. Every object that owns a lock or a thread registers here; in the child each
gets fresh locks and runs its own restart hook. Registration holds the object weakly, so an
object that is gone costs nothing at fork time.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any


def reinit_after_fork(owner: object, *lock_attributes: str, restart: Callable[[Any], None] | None = None) -> None:
    """In a forked child, give ``owner`` new locks (or events / conditions) for ``lock_attributes``, then call
    ``restart(owner)`` (an unbound function, so the registration does not keep ``owner`` alive)."""
    if not hasattr(os, "register_at_fork"):  # Windows: no fork
        return
    ref = weakref.ref(owner)

    def in_child() -> None:
        target = ref()
        if target is None:
            return
        for name in lock_attributes:
            setattr(target, name, _fresh(getattr(target, name)))
        if restart is not None:
            restart(target)

    os.register_at_fork(after_in_child=in_child)


def _fresh(old: object) -> object:
    """A new synchronisation object of the same kind as ``old`` (its state in the parent is meaningless here)."""
    if isinstance(old, threading.Event):
        return threading.Event()
    if isinstance(old, threading.Condition):
        return threading.Condition()
    if isinstance(old, type(threading.RLock())):
        return threading.RLock()
    return threading.Lock()
