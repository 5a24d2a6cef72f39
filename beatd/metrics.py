"""Prometheus metrics, /healthz and /readyz on one small HTTP server.

Per-entry series are produced at scrape time by collectors reading the scheduler's (or worker's)
state, not kept as one metric object per entry: 100,000 entries stay cheap.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from beatd.backends.base import Lease, QueueAdmin, StateStore
from beatd.celery_amqp import OUTBOX_QUEUE, RelayStats
from beatd.celery_events import TASK_EVENTS, CeleryEventStats
from beatd.config import Config
from beatd.config.model import Entry
from beatd.core import COUNT_FIELDS, MissReason, Planner, RunCounts
from beatd.entry_series import EntryFilter, HealthView, OverdueView, history_metrics
from beatd.events import Event, Published, Totals
from beatd.outcomes import WorkerStats
from beatd.state import EntryState

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_METRICS_ADDR = "127.0.0.1:9477"
DEFAULT_WORKER_METRICS_ADDR = "127.0.0.1:9478"
DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STANDBY_STATE_TTL = 10.0  # seconds a standby reuses the persisted states it read


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


class FeedView(Protocol):
    """The runtime entries a node holds (a `beatd.entry_feed.RuntimeView` is one)."""

    @property
    def entries(self) -> Mapping[str, Entry]: ...
    @property
    def applied(self) -> int: ...
    @property
    def lag(self) -> float | None: ...


class SchedulerView(Protocol):
    """What the scheduler's collector reads (a `beatd.scheduler.Scheduler` is one)."""

    @property
    def runtime(self) -> FeedView: ...

    @property
    def backend(self) -> StateStore: ...
    @property
    def lease(self) -> Lease | None: ...
    @property
    def config(self) -> Config: ...
    @property
    def totals(self) -> Totals: ...
    @property
    def counts(self) -> RunCounts: ...
    @property
    def planner(self) -> Planner: ...
    @property
    def deadlines(self) -> OverdueView: ...
    @property
    def health(self) -> HealthView: ...
    @property
    def busy_marks_dropped(self) -> Mapping[str, int]: ...
    @property
    def commands_counted(self) -> tuple[Mapping[str, int], Mapping[str, int]]: ...
    def paused_entries(self, names: Iterable[str] | None = None) -> list[str]: ...


class WorkerSettingsView(Protocol):
    @property
    def queues(self) -> tuple[str, ...]: ...


class WorkerView(Protocol):
    """What the worker's collector reads (a `beatd.worker.Worker` is one); the queue depths
    come from a `QueueAdmin` given beside it, since a worker needs only a `WorkQueue`."""

    @property
    def stats(self) -> WorkerStats: ...
    @property
    def settings(self) -> WorkerSettingsView: ...


class SchedulerCollector(Collector):
    """Reads a scheduler at scrape time."""

    def __init__(self, scheduler: SchedulerView, entries: EntryFilter | None = None) -> None:
        self.scheduler = scheduler
        self.entries = entries or EntryFilter()
        self._states: Mapping[str, EntryState] = {}
        self._states_of: frozenset[str] = frozenset()  # the names they were read for
        self._states_read = float("-inf")
        self._lock = threading.Lock()

    def _persisted_states(self, names: Sequence[str]) -> Mapping[str, EntryState]:
        """A standby's view of the entries `names` (those shown), read by name from the
        backend, never every entry's; cached for a few seconds, unless a name is new."""
        with self._lock:
            stale = time.monotonic() - self._states_read > STANDBY_STATE_TTL
            if names and (stale or not self._states_of.issuperset(names)):
                try:
                    self._states = self.scheduler.backend.states_of(names)
                    self._states_of = frozenset(names)
                except Exception as exc:  # a scrape must not fail because the backend did
                    log.debug("metrics: cannot read persisted states: %s", exc)
                self._states_read = time.monotonic()
            return self._states

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler
        lease = s.lease
        yield _gauge("beatd_entries", "Entries in the loaded configuration.", len(s.config.entries))
        yield from _runtime_metrics(s.runtime)
        yield _gauge(
            "beatd_is_leader", "1 while this scheduler holds the lease.", int(lease is not None)
        )
        yield _gauge(
            "beatd_leader_epoch",
            "Fencing epoch of the lease this scheduler holds (0: none).",
            lease.epoch if lease else 0,
        )
        yield _counter(
            "beatd_leader_changes", "Times this scheduler became leader.", s.totals.leader_changes
        )
        yield _gauge("beatd_backend_up", "1 while the backend answers.", int(s.totals.backend_up))
        yield _counter(
            "beatd_backend_data_lost",
            "Times the backend was found restarted without beatd's data (Redis without AOF).",
            s.totals.data_lost,
        )
        yield _gauge(
            "beatd_clock_skew_seconds",
            "This node's clock minus the backend's, at the last check (leadership is refused "
            "beyond --max-clock-skew).",
            s.totals.clock_skew,
        )
        yield from _drift_metrics(s.totals)
        reloads = CounterMetricFamily(
            "beatd_config_reloads", "Configuration reloads by result.", labels=["result"]
        )
        reloads.add_metric(["success"], s.totals.reloads_ok)
        reloads.add_metric(["failure"], s.totals.reloads_failed)
        yield reloads
        yield _gauge(
            "beatd_config_last_reload_success",
            "1 when the last reload succeeded (or none failed since start).",
            int(s.totals.last_reload_ok),
        )
        shown = self.entries.shown(s.config, len(s.runtime.entries))
        only = self.entries.only(s.config, len(s.runtime.entries))
        yield from self._run_counts(shown, only)
        yield from self._entry_times(shown, only)
        yield from self._controls(shown, only)
        yield from history_metrics(s.lease is not None, s.config, s.deadlines, s.health, shown)
        yield from _connection_metrics(s.backend)
        yield from _replication_metrics(s.backend)

    def _run_counts(
        self, shown: Callable[[str], bool], only: Collection[str] | None
    ) -> Iterator[Metric]:
        due = CounterMetricFamily("beatd_runs_due", "Slots that came due.", labels=["entry"])
        published = CounterMetricFamily("beatd_runs_published", "Runs published.", labels=["entry"])
        late = CounterMetricFamily(
            "beatd_runs_late", "Runs published later than misfire_grace.", labels=["entry"]
        )
        missed = CounterMetricFamily(
            "beatd_runs_missed",
            "Slots that were not published, by reason.",
            labels=["entry", "reason"],
        )
        reasons = [(COUNT_FIELDS.index(f"missed_{r.value}"), r.value) for r in MissReason]
        for entry, counts in self.scheduler.counts.items(only):
            if not shown(entry):
                continue
            due.add_metric([entry], counts[0])
            published.add_metric([entry], counts[1])
            late.add_metric([entry], counts[2])
            for index, reason in reasons:
                if counts[index]:
                    missed.add_metric([entry, reason], counts[index])
        yield from (due, published, late, missed)

    def _controls(
        self, shown: Callable[[str], bool], only: Collection[str] | None
    ) -> Iterator[Metric]:
        s = self.scheduler
        paused = GaugeMetricFamily(
            "beatd_entry_paused",
            "1 while the entry is paused (beatd pause); only paused entries, only on the leader.",
            labels=["entry"],
        )
        for name in sorted(s.paused_entries(only)):
            if shown(name):
                paused.add_metric([name], 1)
        dropped = CounterMetricFamily(
            "beatd_busy_marks_dropped",
            "Busy marks older than the entry's overlap_timeout that this process published "
            "over, and that triggers did (counted by the leader from the audit log).",
            labels=["entry"],
        )
        for name, count in sorted(s.busy_marks_dropped.items()):
            if shown(name):
                dropped.add_metric([name], count)
        yield from (paused, dropped)
        triggered_counts, backfill_counts = s.commands_counted
        triggered = CounterMetricFamily(
            "beatd_runs_triggered",
            "Runs triggered (beatd trigger: published or held), counted by the leader from the "
            "audit log.",
            labels=["entry"],
        )
        backfills = CounterMetricFamily(
            "beatd_runs_backfilled",
            "Runs published by beatd backfill (slots already there are not counted), counted by "
            "the leader from the audit log.",
            labels=["entry"],
        )
        for name in sorted(set(triggered_counts) | set(backfill_counts)):
            if shown(name):  # both series from the first command on the entry, one at 0
                triggered.add_metric([name], triggered_counts.get(name, 0))
                backfills.add_metric([name], backfill_counts.get(name, 0))
        yield from (triggered, backfills)

    def _entry_times(
        self, shown: Callable[[str], bool], only: Collection[str] | None
    ) -> Iterator[Metric]:
        s = self.scheduler
        next_due = GaugeMetricFamily(
            "beatd_next_due_timestamp_seconds",
            "When the entry is next due (Unix time).",
            labels=["entry"],
        )
        last = GaugeMetricFamily(
            "beatd_last_published_timestamp_seconds",
            "Slot of the entry's last published run (Unix time).",
            labels=["entry"],
        )
        leading = s.lease is not None
        files, held = s.config.entries, s.runtime.entries
        # The loop's thread changes the runtime entries while a scrape runs: their names are
        # copied first (one step: no other thread runs while a dict of str keys is copied), and
        # an entry removed since is passed over.
        names = list(held) if only is None else only
        runtime = ((n, held.get(n)) for n in names if n not in files)
        entries = [(n, e) for n, e in chain(files.items(), runtime) if e is not None and shown(n)]
        states = {} if leading else self._persisted_states([n for n, _ in entries])
        for name, entry in entries:
            if leading:
                due, state = s.planner.next_due(name), s.planner.state(name)
            else:
                state = states.get(name)
                due = entry.schedule.next_after(state.last_slot) if state else None
            if (value := _ts(due)) is not None:
                next_due.add_metric([name], value)
            if state is not None and (value := _ts(state.last_published)) is not None:
                last.add_metric([name], value)
        yield from (next_due, last)


@runtime_checkable
class PoolsConnections(Protocol):
    """A backend that pools its connections (PostgreSQL): what its pool holds now."""

    def connection_stats(self) -> Mapping[str, int]:
        """`in_use`, `idle` and `waiting` (callers waiting for a connection) now, and
        `listen_reconnects` (times the wake-up connection was opened again) since start."""


def _connection_metrics(backend: object) -> Iterator[Metric]:
    """The pool's gauges and the wake-up connection's reconnects, for a backend that pools."""
    if not isinstance(backend, PoolsConnections):
        return
    found = backend.connection_stats()
    pool = GaugeMetricFamily(
        "beatd_backend_connections",
        "The backend's pooled connections by state (in_use, idle) and callers waiting for one.",
        labels=["state"],
    )
    for state in ("in_use", "idle", "waiting"):
        pool.add_metric([state], found[state])
    yield pool
    yield _counter(
        "beatd_backend_listen_reconnects",
        "Times the dedicated wake-up (LISTEN) connection was opened again.",
        found["listen_reconnects"],
    )


@runtime_checkable
class ReplicatesWrites(Protocol):
    """A backend that waits for replicas and follows a moving primary (Redis)."""

    def replication_stats(self) -> Mapping[str, int]:
        """`unacknowledged` (writes no replica acknowledged in time) and `primary_changes`
        (times Sentinel named a new primary), since start."""


def _replication_metrics(backend: object) -> Iterator[Metric]:
    if not isinstance(backend, ReplicatesWrites):
        return
    found = backend.replication_stats()
    yield _counter(
        "beatd_backend_unacknowledged_writes",
        "Commits and takes of the lease that no replica acknowledged in time (Redis WAIT); "
        "publishing pauses after each until a replica does or a failover ends.",
        found["unacknowledged"],
    )
    yield _counter(
        "beatd_backend_primary_changes",
        "Times Redis Sentinel named a new primary and this process reconnected to it.",
        found["primary_changes"],
    )


def _drift_metrics(totals: Totals) -> Iterator[Metric]:
    """How this node differs from the leader, and whether its node record is written."""
    yield _gauge(
        "beatd_config_drift",
        "1 while the leader runs a configuration that differs from this node's.",
        int(totals.config_drift),
    )
    yield _gauge(
        "beatd_nodes_tz_drift",
        "1 while this leader sees a node whose timezone database differs from its own.",
        int(totals.tz_drift),
    )
    yield _counter(
        "beatd_node_records_failed",
        "Writes of this node's record (at each renewal or standby attempt) that failed.",
        totals.node_records_failed,
    )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _runtime_metrics(feed: FeedView) -> Iterator[Metric]:
    yield _gauge(
        "beatd_runtime_entries",
        "Runtime entries this node holds (followed through the backend's change feed).",
        len(feed.entries),
    )
    yield _counter(
        "beatd_entry_changes_applied",
        "Runtime entries' changes this node read from the change feed and applied.",
        feed.applied,
    )
    yield _gauge(
        "beatd_entry_changes_lag_seconds",
        "Seconds from the last runtime entry written to its application on this node (the "
        "write's time by the backend's clock); NaN before the first.",
        float("nan") if feed.lag is None else feed.lag,
    )


def register_scheduler(
    registry: CollectorRegistry, scheduler: SchedulerView, entries: EntryFilter | None = None
) -> None:
    """Add the scheduler's collector to `registry` (its publish delays: `PublishDelay`), its
    per-entry series bounded by `entries`."""
    registry.register(SchedulerCollector(scheduler, entries))


class HistoryView(Protocol):
    """The run history's health as a leader counts it (`beatd.retention.HistoryStats`)."""

    @property
    def runs(self) -> int | None: ...
    @property
    def missed(self) -> int | None: ...
    @property
    def trimmed(self) -> int: ...
    @property
    def write_errors(self) -> int: ...


class HistoryCollector(Collector):
    """The run history's size (while leading), what was trimmed and the refused writes."""

    def __init__(self, stats: HistoryView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        records = GaugeMetricFamily(
            "beatd_history_records",
            "Records the run history keeps, by kind (run, missed), as the leader last counted "
            "them (after each trim); none on a standby.",
            labels=["kind"],
        )
        for kind, count in (("run", stats.runs), ("missed", stats.missed)):
            if count is not None:
                records.add_metric([kind], count)
        yield records
        yield _counter(
            "beatd_history_trimmed",
            "Run-history records this node trimmed beyond the retention.",
            stats.trimmed,
        )
        yield _counter(
            "beatd_history_write_errors",
            "Run-history writes the backend refused (trims, marks).",
            stats.write_errors,
        )


def register_history(registry: CollectorRegistry, stats: HistoryView) -> None:
    registry.register(HistoryCollector(stats))


class CeleryEventsCollector(Collector):
    """Reads what the leader's Celery event listener heard, at scrape time."""

    def __init__(self, stats: CeleryEventStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        events = CounterMetricFamily(
            "beatd_celery_events",
            "Celery task events received from the workers (sent with -E), by type.",
            labels=["type"],
        )
        for kind in TASK_EVENTS:
            events.add_metric([kind], s.events[kind])
        yield events
        yield _gauge(
            "beatd_celery_events_last_timestamp_seconds",
            "When the last Celery task event was received (Unix time; 0: none yet).",
            _ts(s.last_received_at) or 0.0,
        )
        yield _gauge(
            "beatd_celery_events_listening",
            "1 while this node is subscribed to Celery's task events (leading Celery entries).",
            int(s.listening),
        )
        yield _counter(
            "beatd_celery_runs_published",
            "Runs published in Celery's protocol: each should bring task events back.",
            s.published,
        )
        yield _counter(
            "beatd_celery_events_undecodable",
            "Messages on Celery's event channels that could not be read.",
            s.undecodable,
        )
        yield _counter(
            "beatd_celery_events_unrecorded",
            "Task events of beatd's runs lost because the history could not be written.",
            s.write_errors,
        )
        yield _counter(
            "beatd_celery_events_interruptions",
            "Times the event source or the history failed and listening resumed with backoff.",
            s.interruptions,
        )


def register_celery_events(registry: CollectorRegistry, stats: CeleryEventStats) -> None:
    """Add the Celery event listener's collector to `registry`."""
    registry.register(CeleryEventsCollector(stats))


class AmqpRelayCollector(Collector):
    """Reads the leader's AMQP relay and the depth of its outbox, at scrape time."""

    def __init__(self, stats: RelayStats, outbox: QueueAdmin) -> None:
        self.stats = stats
        self.outbox = outbox

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        try:
            depth: float = self.outbox.queue_depths().get(OUTBOX_QUEUE, 0)
        except Exception as exc:  # a scrape must not fail because the backend did
            log.debug("metrics: cannot read the outbox depth: %s", exc)
            depth = float("nan")
        yield _gauge("beatd_amqp_outbox_depth", "Runs in the outbox not yet confirmed by "
                     "RabbitMQ (waiting or being published).", depth)  # fmt: skip
        yield _gauge(
            "beatd_amqp_outbox_oldest_age_seconds",
            "Age of the run the relay claimed last (since its commit); 0 when the outbox was "
            "found empty.",
            s.oldest_age,
        )
        yield _gauge("beatd_amqp_connected", "1 while the relay's last publish was confirmed.",
                     int(s.connected))  # fmt: skip
        yield _counter("beatd_amqp_published", "Runs RabbitMQ confirmed.", s.published)
        yield _counter(
            "beatd_amqp_republished",
            "Runs published to RabbitMQ again, with the same task id, after a claim lapsed or a "
            "connection was lost before the confirm.",
            s.republished,
        )
        unroutable = CounterMetricFamily(
            "beatd_amqp_unroutable",
            "Publishes RabbitMQ returned (no queue bound to the route), by queue; the runs stay "
            "in the outbox.",
            labels=["queue"],
        )
        for queue, count in sorted(s.unroutable.items()):
            unroutable.add_metric([queue], count)
        yield unroutable
        yield _counter("beatd_amqp_outbox_unreadable", "Outbox messages dead-lettered unread.",
                       s.unreadable)  # fmt: skip


def register_amqp_relay(registry: CollectorRegistry, stats: RelayStats, outbox: QueueAdmin) -> None:
    """Add the AMQP relay's collector to `registry`."""
    registry.register(AmqpRelayCollector(stats, outbox))


class PublishDelay:
    """An observer of the scheduler loop: each published run's delay, in a histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            "beatd_publish_delay_seconds",
            "Published time minus due time (the slot plus its jitter).",
            buckets=DELAY_BUCKETS,
            registry=registry,
        )

    def notify(self, event: Event) -> None:
        if isinstance(event, Published):
            observe, published_at = self._histogram.observe, event.published_at
            for decision in event.decisions:
                for run in decision.runs:
                    observe((published_at - run.due).total_seconds())


class WorkerCollector(Collector):
    """Reads a worker's outcome counts, and the backend's queue depths, at scrape time.

    The worker's parent process settles every run, so its counts cover all its children.
    """

    def __init__(self, worker: WorkerView, admin: QueueAdmin, embedded: bool = False) -> None:
        self.worker = worker
        self.admin = admin
        self.embedded = embedded  # in `beatd run`: the scheduler reports the backend's metrics

    def collect(self) -> Iterator[Metric]:
        stats = self.worker.stats
        tasks = CounterMetricFamily(
            "beatd_tasks", "Task runs by outcome.", labels=["task", "outcome"]
        )
        for (task, outcome), count in sorted(stats.outcomes.items()):
            tasks.add_metric([task, outcome.value], count)
        yield tasks
        for name, times, doc in (
            ("success", stats.last_success, "Last successful run of the entry (Unix time)."),
            ("failure", stats.last_failure, "Last failed run of the entry (Unix time)."),
        ):
            family = GaugeMetricFamily(
                f"beatd_entry_last_{name}_timestamp_seconds", doc, labels=["entry"]
            )
            for entry, when in sorted(times.items()):
                family.add_metric([entry], when.timestamp())
            yield family
        depth = GaugeMetricFamily(
            "beatd_queue_depth", "Runs waiting or in flight.", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "beatd_dead_letters", "Runs in the dead-letter queue.", labels=["queue"]
        )
        try:
            depths = self.admin.queue_depths()
            letters = self.admin.dead_letter_counts()  # counted, never read
        except Exception as exc:  # a scrape must not fail because the backend did
            log.debug("metrics: cannot read queue depths: %s", exc)
        else:
            for queue in sorted({*self.worker.settings.queues, *depths}):
                depth.add_metric([queue], depths.get(queue, 0))
            for queue in sorted({*self.worker.settings.queues, *letters}):
                dead.add_metric([queue], letters.get(queue, 0))
        yield depth
        yield dead
        if not self.embedded:  # one family each per registry, or Prometheus refuses the scrape
            yield from _connection_metrics(self.admin)  # the backend the worker uses
            yield from _replication_metrics(self.admin)


TASK_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


def register_worker(
    registry: CollectorRegistry, worker: WorkerView, admin: QueueAdmin, *, embedded: bool = False
) -> None:
    """Add the worker's collector (queue depths read from `admin`) and its task-duration
    histogram to `registry`. `embedded` (`beatd run --with-worker`): the scheduler's collector
    in the same registry reports the backend's connection and replication metrics, for its
    own pool."""
    registry.register(WorkerCollector(worker, admin, embedded))
    duration = Histogram(
        "beatd_task_duration_seconds",
        "How long task runs took, from start to settlement.",
        labelnames=["task"],
        buckets=TASK_BUCKETS,
        registry=registry,
    )
    worker.stats.observe_duration = lambda task, seconds: duration.labels(task).observe(seconds)


class Health(Protocol):
    def __call__(self) -> tuple[bool, str]: ...


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT as (host, port); a port alone (or `:PORT`) is loopback, never every interface.

    Raises ValueError, with a message naming the value, when it is neither.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT or a port such as 9477")
    if int(port) > 65535:
        raise ValueError(f"port {port} in {address!r} is not between 0 and 65535")
    return host, int(port)


def _server_class(host: str, port: int) -> type[ThreadingWSGIServer]:
    """ThreadingWSGIServer for the address family of `host` (an IPv6 host needs AF_INET6)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server


class MetricsServer:
    """/metrics, /healthz and /readyz on one port, served from a daemon thread.

    Raises ValueError for an address that is not HOST:PORT or PORT, OSError when it cannot be
    bound (taken, or not an address of this host).
    """

    def __init__(self, address: str, registry: CollectorRegistry, ready: Health) -> None:
        host, port = parse_address(address)
        metrics_app = make_wsgi_app(registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                return _text(start_response, "200 OK", "ok\n")
            if path == "/readyz":
                ok, why = ready()
                status = "200 OK" if ok else "503 Service Unavailable"
                return _text(start_response, status, why + "\n")
            if path == "/metrics":
                body: Iterable[bytes] = metrics_app(environ, start_response)
                return body
            return _text(start_response, "404 Not Found", "not found: try /metrics\n")

        self._server = make_server(host, port, app, _server_class(host, port), _QuietHandler)
        bound = self._server.socket.getsockname()
        self.address: tuple[str, int] = (bound[0], bound[1])
        self.port: int = bound[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="beatd-metrics", daemon=True
        )
        self._thread.start()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        log.info("metrics on http://%s:%d/metrics", shown, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]
