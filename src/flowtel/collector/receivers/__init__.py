"""The collector's receivers: ``otlp`` (gRPC and HTTP transports in front of one intake per signal) and ``feedback``.

Each is registered in ``flowtel.collector.components`` by its type.
"""
