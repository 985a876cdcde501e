"""The coordinator's telemetry: ``metrics`` (Prometheus: what the dispatch loop records once per
step, and the collector computing everything else at scrape time) and ``tracing`` (the
submission span and the trace context stored with each task). Off unless configured."""
