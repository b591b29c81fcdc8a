"""Prometheus metrics of one agent, on their own registry, served over HTTP on `--metrics_port`.

Labels are bounded: kind (backup/restore), engine (the registered engines), result (the five results),
type (full/incremental/restore) and code (gRPC status names).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.catalog.summary import BackupSummary
from agent.errors import ConfigError
from agent.operations import Kind, Operation, OperationRunner, Result
from agent.tablet import ArchiveState

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


class _Current(Collector):
    """Values read at scrape time: the operation in progress, binlog files not yet backed up."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily(
            "tablet_agent_operation_in_progress", "1 while an operation of this kind runs", labels=["kind"]
        )
        current = self._m.runner.current
        for kind in Kind:
            running.add_metric([kind.value], 1.0 if current is not None and current.kind is kind else 0.0)
        yield running
        archive = self._m.archive
        if archive is not None:
            yield GaugeMetricFamily(
                "tablet_agent_binlog_archive_gap",
                "1 while binlogs were purged before they were archived (point-in-time restores cannot cross it)",
                value=1.0 if archive.gap else 0.0,
            )
            yield GaugeMetricFamily(
                "tablet_agent_binlog_archiving",
                "1 while this agent archives the shard's binlogs",
                value=1.0 if archive.active else 0.0,
            )
        verification = self._m.summary.newest.full_verification if self._m.summary is not None else None
        if verification is not None and verification.ok:
            yield GaugeMetricFamily(
                "tablet_agent_backup_verified_timestamp_seconds",
                "when the newest full backup last passed verification",
                value=verification.verified_at.timestamp(),
            )
        if self._m.binlog_files_pending is not None:
            yield GaugeMetricFamily(
                "tablet_agent_binlog_files_pending",
                "closed binary logs holding transactions that no backup of the shard covers yet",
                value=self._m.binlog_files_pending,
            )


class AgentMetrics:
    def __init__(
        self,
        runner: OperationRunner,
        summary: BackupSummary | None = None,
        archive: ArchiveState | None = None,
        archive_interval: float = 0.0,
    ) -> None:
        self.runner = runner
        self.summary = summary
        self.archive = archive
        self.registry = CollectorRegistry()
        self.binlog_files_pending: int | None = None
        r = self.registry
        self.operations = Counter(
            "tablet_agent_operations", "finished operations", ["kind", "engine", "result"], registry=r
        )
        self.bytes = Counter(
            "tablet_agent_operation_bytes",
            "bytes copied by finished operations",
            ["kind", "engine"],
            registry=r,
        )
        self.duration = Histogram(
            "tablet_agent_operation_duration_seconds",
            "duration of finished operations",
            ["kind", "engine", "result"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "tablet_agent_last_success_timestamp_seconds",
            "end time of the last successful operation of each type",
            ["type"],
            registry=r,
        )
        self.phases = Histogram(
            "tablet_agent_phase_duration_seconds",
            "duration of the phases of finished operations",
            ["kind", "phase"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter("tablet_agent_errors", "failed operations by gRPC status", ["code"], registry=r)
        interval = Gauge(
            "tablet_agent_binlog_archive_interval_seconds",
            "--binlog_archive_interval (0: continuous archiving is off)",
            registry=r,
        )
        interval.set(archive_interval)
        r.register(_Current(self))
        self._server: Any = None
        runner.on_finish(self.observe)

    def observe(self, op: Operation) -> None:
        engine = op.engine or "unknown"
        for timing in op.timings:
            self.phases.labels(op.kind.value, timing.phase).observe(timing.seconds)
        self.operations.labels(op.kind.value, engine, op.result.value).inc()
        self.bytes.labels(op.kind.value, engine).inc(op.bytes_done)
        if op.ended is not None:
            self.duration.labels(op.kind.value, engine, op.result.value).observe(
                (op.ended - op.started).total_seconds()
            )
        if op.result is Result.SUCCEEDED and op.ended is not None:
            kind = "restore" if op.kind is Kind.RESTORE else "incremental" if op.incremental else "full"
            self.last_success.labels(kind).set(op.ended.timestamp())
        if op.result is Result.FAILED and op.error is not None:
            self.errors.labels(op.error.code.name).inc()

    def serve(self, address: str, port: int) -> int:
        """Serve /metrics on a background thread; the bound port."""
        try:
            self._server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as e:
            raise ConfigError(
                f"cannot serve metrics on {address}:{port}: {e.strerror or e}; choose another --metrics_port"
            ) from None
        bound: int = self._server.server_port
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
