"""Prometheus metrics of one agent, on their own registry, served over HTTP on `--metrics_port`.

Labels are bounded: kind (backup/restore/verify), engine (the registered engines), result (the five
results), type (full/incremental/restore), code (gRPC status names) and problem (ops.health.PROBLEM_KINDS).
The operation metrics share one label set: kind, engine, result. Dry-run restores are not counted.
The backup gauges come from the cached listing (catalog/summary.py), so they are right after a restart.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.catalog.listing import BackupEntry
from agent.catalog.summary import BackupSummary
from agent.errors import ConfigError
from agent.operations import Kind, Operation, OperationRunner, Result
from agent.ops.health import PROBLEM_KINDS
from agent.tablet import ArchiveState

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)


class _Current(Collector):
    """Values read at scrape time: the operation in progress, binlog files not yet backed up."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
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
        yield from self._backups()
        removed = CounterMetricFamily(
            "tablet_agent_backups_removed",
            "backups removed (by retention or RemoveBackup), by type",
            labels=["type"],
        )
        for backup_type in ("full", "incremental", "incomplete"):
            removed.add_metric([backup_type], float(self._m.backups_removed[backup_type]))
        yield removed
        if self._m.health_problems is not None:
            health = GaugeMetricFamily(
                "tablet_agent_health_problem",
                "1 while the tablet has this kind of health problem (Status has the sentence)",
                labels=["problem"],
            )
            for problem in PROBLEM_KINDS:
                health.add_metric([problem], 1.0 if problem in self._m.health_problems else 0.0)
            yield health

    def _backups(self) -> Iterator[Metric]:
        """The shard's newest backups and the recovery point, from the cached listing."""
        if self._m.summary is None or not self._m.summary.newest.listed_at:
            return
        newest = self._m.summary.newest
        stamp = GaugeMetricFamily(
            "tablet_agent_newest_backup_timestamp_seconds",
            "BackupTime of the shard's newest complete backup of each type",
            labels=["type"],
        )
        size = GaugeMetricFamily(
            "tablet_agent_newest_backup_size_bytes",
            "stored bytes of the shard's newest complete backup of each type",
            labels=["type"],
        )
        for kind, entry in (("full", newest.full), ("incremental", newest.incremental)):
            t = _backup_time(entry)
            if t is not None and entry is not None and entry.manifest is not None:
                stamp.add_metric([kind], t)
                size.add_metric([kind], float(entry.stored_size))
        yield stamp
        yield size
        point = newest.recovery_point
        if point is not None:
            yield GaugeMetricFamily(
                "tablet_agent_recovery_point_timestamp_seconds",
                "time of the newest transaction a restore can reach (newest incremental's last transaction, "
                "else the newest full backup's time)",
                value=point.timestamp(),
            )
            yield GaugeMetricFamily(
                "tablet_agent_binlog_archive_lag_seconds",
                "seconds since the recovery point: transactions newer than this would be lost",
                value=max(0.0, time.time() - point.timestamp()),
            )


def _backup_time(entry: BackupEntry | None) -> float | None:
    t = entry.manifest.backup_datetime if entry is not None and entry.manifest is not None else None
    return t.timestamp() if t is not None else None


class AgentMetrics:
    def __init__(
        self,
        runner: OperationRunner,
        summary: BackupSummary | None = None,
        archive: ArchiveState | None = None,
        archive_interval: float = 0.0,
        backups_removed: Tally[str] | None = None,
    ) -> None:
        self.runner = runner
        self.summary = summary
        self.archive = archive
        self.backups_removed: Tally[str] = backups_removed if backups_removed is not None else Tally()
        self.registry = CollectorRegistry()
        self.binlog_files_pending: int | None = None
        self.health_problems: set[str] | None = None  # kinds present, refreshed by the daemon
        r = self.registry
        self.operations = Counter(
            "tablet_agent_operations", "finished operations", ["kind", "engine", "result"], registry=r
        )
        self.bytes = Counter(
            "tablet_agent_operation_bytes",
            "bytes copied by finished operations",
            ["kind", "engine", "result"],
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
        if op.dry_run:
            return  # a dry-run restore checks; it restores nothing
        engine = op.engine or "unknown"
        for timing in op.timings:
            self.phases.labels(op.kind.value, timing.phase).observe(timing.seconds)
        self.operations.labels(op.kind.value, engine, op.result.value).inc()
        self.bytes.labels(op.kind.value, engine, op.result.value).inc(op.bytes_done)
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
