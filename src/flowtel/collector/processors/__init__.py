"""The collector's own processors: ``memory_limiter`` and ``batch``, registered in ``flowtel.collector.components``.

The ``flowtel`` processor has no module here: its config is ``flowtel.config.FlowtelConfig`` and its logic is the
shared span pipeline, ``flowtel.processors`` (the top-level ``processors/`` directory), run by the traces pipeline.
"""
