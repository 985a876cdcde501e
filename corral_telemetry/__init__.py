"""Telemetry shared by the coordinator and the actors: structured logs, trace propagation and
export, Prometheus exposition.

Owns the parts both processes use and that depend on neither (``actor/`` imports nothing from
``coordinator/`` and the reverse): ``logs`` (the JSON formatter, task fields on log lines),
``tracing`` (W3C trace-context helpers, tracer set-up, the JSON-lines span exporter) and
``prometheus`` (lock-free histogram state read at scrape time, the scrape server).

Everything here is off unless configured: with no exporter configured there is no tracer and no
span; with no metrics address there is no server and no collector.
"""
