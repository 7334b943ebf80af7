"""``batch`` processor settings: how the pipeline worker groups spans into export requests.

The flowtel pipeline already runs on its own worker, so ``batch`` does not add a stage:
it sets how often the worker sends (``timeout``), how many queued spans wake it early
(``send_batch_size``) and the largest request it sends: ``send_batch_max_size`` spans (0 for
no limit), with the upstream processor's names and defaults, and ``send_batch_max_bytes``
of encoded request, below the 4 MiB a gRPC server takes by default: one large span must not
make a whole batch of other clients' spans undeliverable. A span that alone exceeds the
byte limit is dropped and counted (``too_large``).
"""

from __future__ import annotations

from pydantic import Field

from ..settings import Model, PositiveDuration


class BatchConfig(Model):
    send_batch_size: int = Field(8192, ge=1)
    timeout: PositiveDuration = 0.2
    send_batch_max_size: int = Field(0, ge=0)
    send_batch_max_bytes: int = Field(4_000_000, ge=0)
