"""The connections a PostgreSQL backend's parts share: a pool, its transactions, beatd's schema
and its migrations, and PostgreSQL's errors turned into beatd's (beatd.backends.postgres tells
the whole story).

A failure before COMMIT was sent leaves nothing written (the server rolls back a transaction
whose session ends): NotApplied. A COMMIT whose session ended under it (the connection broke,
or the server ended the session: pg_terminate_backend, a shutdown; PostgreSQL reports that
even after the commit record is written) may have been applied: OutcomeUnknown. A COMMIT the
server refused otherwise (a serialization failure): NotApplied.
"""

from __future__ import annotations

import logging
import math
import re
import select
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
import psycopg_pool

from beatd.backends.base import FormatTooNew, Lease
from beatd.errors import (
    BackendError,
    LeaseLost,
    NamespaceError,
    NotApplied,
    OutcomeUnknown,
    TransientBackendError,
)

log = logging.getLogger(__name__)

LEASE = "scheduler"
DEFAULT_PRIORITY = 5
# The database's own clock, read at the moment of the statement (now() is the transaction's
# start, which a transaction waiting on a lock would see as the past).
NOW = "extract(epoch FROM clock_timestamp())::float8"
NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"  # the same, in microseconds
# PostgreSQL truncates identifiers to 63 bytes and refuses a longer NOTIFY channel: the
# channel is the schema + "_work", so the schema gets 5 fewer.
CHANNEL_SUFFIX = "_work"
SCHEMA_NAME_MAX = 63 - len(CHANNEL_SUFFIX)
SCHEMA_NAME = re.compile(rf"[a-z_][a-z0-9_]{{0,{SCHEMA_NAME_MAX - 1}}}")
# SQLSTATE classes after which trying again may succeed: connection, transaction rollback
# (serialization, deadlock), insufficient resources, lock not available, operator intervention
# (admin shutdown, statement timeout), and a server that is starting or in recovery.
TRANSIENT_CLASSES = ("08", "40", "53", "57")
SESSION_ENDED_CLASSES = ("08", "57")  # connection exception, operator intervention
QUERY_CANCELED = "57014"  # the statement timeout (or a cancel request) stopped a statement
TRANSIENT_STATES = frozenset({"55P03", "25006"})  # lock_not_available, read_only_sql_transaction
T = TypeVar("T")


def _format_1(db: psycopg.Connection[Any], schema: str) -> None:
    """Format 0 (an empty schema) to 1: the lease row, the run state, the queues."""
    db.execute(
        f"""
        CREATE TABLE {schema}.lease (
            name text PRIMARY KEY,
            node text NOT NULL,
            token text NOT NULL,
            epoch bigint NOT NULL,
            expires_at float8 NOT NULL,
            config_hash text NOT NULL DEFAULT ''
        );
        INSERT INTO {schema}.lease VALUES ('{LEASE}', '', '', 0, 0, '');
        CREATE TABLE {schema}.entry_state (
            entry text PRIMARY KEY,
            last_slot_us bigint NOT NULL,
            last_published_us bigint,
            identity text NOT NULL
        );
        CREATE TABLE {schema}.message (
            seq bigserial PRIMARY KEY,
            id text NOT NULL,
            queue text NOT NULL,
            priority integer NOT NULL,
            body text NOT NULL,
            ready_at float8 NOT NULL,
            deliveries integer NOT NULL DEFAULT 0,
            receipt text
        );
        CREATE INDEX message_order ON {schema}.message (queue, priority DESC, seq);
        CREATE INDEX message_receipt ON {schema}.message (receipt);
        CREATE TABLE {schema}.dead_letter (
            seq bigserial PRIMARY KEY,
            id text NOT NULL,
            queue text NOT NULL,
            priority integer NOT NULL,
            body text NOT NULL,
            reason text NOT NULL,
            failed_at float8 NOT NULL,
            deliveries integer NOT NULL
        );
        """
    )


def _format_2(db: psycopg.Connection[Any], schema: str) -> None:
    """Format 1 to 2: the run history (beatd.history). `run_open` holds the runs neither
    finished nor marked overdue (the deadline marker's set): a row deleted when the run ends,
    so settling never rewrites the indexed `run` row. Nothing references `run` by foreign key
    (a key check would lock the run row at every claim); the trims delete a run's attempts
    and open row with it."""
    db.execute(
        f"""
        CREATE TABLE {schema}.run (
            id text PRIMARY KEY,
            entry text NOT NULL,
            slot_us bigint NOT NULL,
            due_us bigint NOT NULL,
            published_us bigint NOT NULL,
            node text NOT NULL,
            epoch bigint NOT NULL,
            kind text NOT NULL,
            celery boolean NOT NULL DEFAULT false,
            received_us bigint,
            overdue_us bigint,
            audit text
        );
        CREATE INDEX run_entry_newest ON {schema}.run (entry, published_us DESC, id DESC);
        CREATE INDEX run_newest ON {schema}.run (published_us DESC, id DESC);
        CREATE TABLE {schema}.run_open (
            run_id text PRIMARY KEY,
            published_us bigint NOT NULL
        );
        CREATE TABLE {schema}.attempt (
            run_id text NOT NULL,
            number integer NOT NULL,
            consumer text NOT NULL,
            host text NOT NULL,
            pid integer,
            started_us bigint NOT NULL,
            ended_us bigint,
            outcome text,
            reason text NOT NULL DEFAULT '',
            error_type text NOT NULL DEFAULT '',
            error text NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, number)
        );
        CREATE TABLE {schema}.run_trimmed (
            entry text PRIMARY KEY,
            slot_us bigint NOT NULL
        );
        """
    )
    _format_2_missed_and_summaries(db, schema)
    _format_2_controls(db, schema)
    _format_2_entries(db, schema)
    _format_2_nodes(db, schema)


def _format_2_missed_and_summaries(db: psycopg.Connection[Any], schema: str) -> None:
    db.execute(
        f"""
        CREATE TABLE {schema}.missed (
            entry text NOT NULL,
            reason text NOT NULL,
            first_us bigint NOT NULL,
            last_us bigint NOT NULL,
            total integer NOT NULL,
            recorded_us bigint NOT NULL,
            node text NOT NULL,
            epoch bigint NOT NULL,
            overdue_us bigint,
            PRIMARY KEY (entry, reason, first_us)
        );
        CREATE INDEX missed_recorded ON {schema}.missed (recorded_us DESC);
        CREATE TABLE {schema}.entry_summary (
            entry text PRIMARY KEY,
            last_status text NOT NULL,
            last_finished_us bigint NOT NULL,
            last_duration_us bigint,
            last_success_us bigint,
            last_failure_us bigint,
            consecutive_failures integer NOT NULL
        );
        """
    )


def _format_2_controls(db: psycopg.Connection[Any], schema: str) -> None:
    """The operator controls (beatd.controls), folded into format 2 while it is unreleased:
    `control` one row per entry with a pause, a busy mark, a held run or pauses lifted that its
    horizon has not passed (`lifted`, JSON as beatd.controls.lifted_json; none: no row; the
    partial index finds the entry a settled run keeps busy), `audit` the audit log,
    `trigger_key` the remembered idempotency keys and request ids."""
    db.execute(
        f"""
        CREATE TABLE {schema}.control (
            entry text PRIMARY KEY,
            pause_at_us bigint,
            pause_until_us bigint,
            pause_reason text,
            pause_by text,
            busy_run text,
            busy_since_us bigint,
            held_run text,
            held_slot_us bigint,
            held_due_us bigint,
            held_kind text,
            held_queue text,
            held_body text,
            held_audit text,
            held_celery boolean,
            held_priority integer,
            lifted text
        );
        CREATE INDEX control_busy ON {schema}.control (busy_run) WHERE busy_run IS NOT NULL;
        CREATE TABLE {schema}.audit (
            id text PRIMARY KEY,
            at_us bigint NOT NULL,
            action text NOT NULL,
            entry text,
            by_ text NOT NULL,
            detail jsonb NOT NULL,
            before jsonb,
            after jsonb
        );
        CREATE INDEX audit_newest ON {schema}.audit (at_us DESC, id DESC);
        CREATE INDEX audit_entry_newest ON {schema}.audit (entry, at_us DESC, id DESC);
        CREATE TABLE {schema}.trigger_key (
            key text NOT NULL,
            entry text NOT NULL,
            status text NOT NULL,
            run_id text NOT NULL,
            detail text NOT NULL,
            audit_id text,
            at_us bigint NOT NULL,
            PRIMARY KEY (key, entry)
        );
        CREATE INDEX trigger_key_at ON {schema}.trigger_key (at_us);
        """
    )


def _format_2_entries(db: psycopg.Connection[Any], schema: str) -> None:
    """The runtime entries (beatd.runtime_entries), folded into format 2 while it is unreleased:
    `runtime_entry` (the definition as the JSON text beatd wrote), the change feed
    `entry_change`, its head in the one row of `entry_head` (every entry write updates it
    first, so the writes take turns and commit in the order of their seqs: a reader never finds
    a seq below its cursor committed late), and the leader's registered `file_entry` names.
    Names sort by code point (COLLATE "C"), as on the other backends, for pages by name."""
    db.execute(
        f"""
        CREATE TABLE {schema}.runtime_entry (
            name text COLLATE "C" PRIMARY KEY,
            version integer NOT NULL,
            definition text NOT NULL,
            created_us bigint NOT NULL,
            created_by text NOT NULL,
            updated_us bigint NOT NULL,
            updated_by text NOT NULL,
            request_id text
        );
        CREATE TABLE {schema}.entry_change (
            seq bigint PRIMARY KEY,
            name text NOT NULL,
            version integer
        );
        CREATE TABLE {schema}.entry_head (head bigint NOT NULL);
        INSERT INTO {schema}.entry_head VALUES (0);
        CREATE TABLE {schema}.file_entry (name text PRIMARY KEY, path text NOT NULL);
        """
    )


def _format_2_nodes(db: psycopg.Connection[Any], schema: str) -> None:
    """The node records (beatd.nodes), folded into format 2 while it is unreleased: each node's
    record as JSON text, its last write and its expiry in µs of the database's clock."""
    db.execute(
        f"""
        CREATE TABLE {schema}.node (
            name text PRIMARY KEY,
            record text NOT NULL,
            seen_us bigint NOT NULL,
            expires_us bigint NOT NULL
        );
        """
    )


# The persisted-state format is the row of SCHEMA.format. MIGRATIONS[n] upgrades format n to
# n + 1, run under the schema's advisory lock in one transaction with the new version (see
# `upgrade`): a later change of the tables appends one (docs/design.md, Persisted-state format).
MIGRATIONS: tuple[Callable[[psycopg.Connection[Any], str], None], ...] = (_format_1, _format_2)
FORMAT_VERSION = len(MIGRATIONS)


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for logs and metrics."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, hosts = netloc.rsplit("@", 1)
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown += "?" + urlencode(
            [(k, "***" if k == "password" else v) for k, v in pairs], safe="*/,"
        )
    return shown


def schema_name(namespace: str) -> str:
    """The namespace as the schema that holds beatd's tables, refused unless a plain name."""
    if SCHEMA_NAME.fullmatch(namespace) is None:
        raise NamespaceError(
            f"cannot use the namespace {namespace!r} as a PostgreSQL schema name: use lower-case "
            "letters, digits and underscores, starting with a letter or underscore (at most "
            f"{SCHEMA_NAME_MAX}: PostgreSQL's 63 less the {CHANNEL_SUFFIX!r} of the wake-up "
            "channel)"
        )
    return namespace


def _format_found(db: psycopg.Connection[Any], schema: str) -> int | None:
    """The schema's format, or None when it holds no format table yet."""
    exists = db.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.format",)).fetchone()
    if not exists or not exists[0]:
        return None
    row = db.execute(f"SELECT version FROM {schema}.format").fetchone()
    return int(row[0]) if row else 0


def upgrade(db: psycopg.Connection[Any], schema: str, where: str) -> int:
    """Bring the schema to FORMAT_VERSION under its advisory lock, in the caller's transaction,
    so the migrations and the new version commit together; the format found."""
    db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"beatd-schema:{schema}",))
    found = _format_found(db, schema)
    if found is None:
        # Only now: CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database
        # before it checks existence, which the daemons' role lacks (docs/postgresql.md).
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        db.execute(f"CREATE TABLE {schema}.format (version integer NOT NULL)")
        db.execute(f"INSERT INTO {schema}.format VALUES (0)")
        found = 0
    if found > FORMAT_VERSION:
        raise FormatTooNew(where, found, FORMAT_VERSION)
    if found == FORMAT_VERSION:  # nothing to write, so nothing the daemons' role may not
        return found
    for migration in MIGRATIONS[found:]:
        migration(db, schema)
    db.execute(f"UPDATE {schema}.format SET version = %s", (FORMAT_VERSION,))
    return found


def check_if_spoken_to(db: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it lends: a round trip (an empty query) only when the
    server sent something while the connection sat idle, which for a pooled connection (it
    LISTENs to nothing) means the session is ending: a terminated backend or a shutdown sends
    its error, then closes. A quiet one is lent without a round trip, which every call would
    otherwise pay (on the queue-to-start path a wake-up of two processes). A connection that
    raises here is discarded, and the pool lends another."""
    poller = select.poll()
    poller.register(db.fileno(), select.POLLIN)
    if poller.poll(0):
        psycopg_pool.ConnectionPool.check_connection(db)


class PostgresLink:
    """A pool of connections to one database, and beatd's schema `namespace` in it.

    `read_only`: for commands that only look; with it or `create=False` the schema is never
    created or upgraded (`beatd db upgrade` or `beatd run` does), and must be there.
    `history=False`: the writing steps record no run history (beatd.history); reads still work."""

    format_known = FORMAT_VERSION

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "beatd",
        op_timeout: float = 2.0,
        read_only: bool = False,
        create: bool = True,
        pool_size: int = 4,
        history: bool = True,
    ) -> None:
        self.url = redact(url)
        self.history = history  # False: write no run history (reads still work)
        self.schema = schema_name(namespace)
        self.where = f"schema {self.schema} of {self.url}"
        self.conninfo = url
        self.op_timeout = op_timeout
        self.connect_timeout = max(2, math.ceil(op_timeout))  # libpq's least is 2 s
        self.channel = self.schema + CHANNEL_SUFFIX  # NOTIFY: a queue got a ready message
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=op_timeout,
            # psycopg_pool retries a lost connection with a growing backoff (1 s, 2 s, 4 s...):
            # after an outage that would leave beatd waiting long after the server is back. It
            # gives up soon instead, and the next call connects afresh.
            reconnect_timeout=max(1.0, 2 * op_timeout),
            kwargs={"autocommit": True, "connect_timeout": self.connect_timeout},
            configure=self._configure,
            check=check_if_spoken_to,
            open=False,
            name=f"beatd-{self.schema}",
        )
        self._pool.open(wait=False)
        self._read_only = read_only or not create
        self._prepared = False  # the schema's format checked (and upgraded) by this handle
        self.format_found = 0  # the format the schema held when this handle first met it
        try:
            self._prepare()
        except TransientBackendError as exc:  # not reachable yet: checked at the first call
            log.warning(
                "cannot reach %s to check its schema; the first call that reaches it will: %s",
                self,
                exc,
            )
        except BackendError:
            self.close()
            raise

    def __str__(self) -> str:
        return self.where

    def _prepare(self) -> None:
        """Check the schema's format, and create or upgrade it if this handle may: once, at
        open or (when the database could not be reached then) at the first call."""
        found = self._transact(lambda db: _format_found(db, self.schema), write=False)
        self.format_found = 0 if found is None else found
        if found is not None and found > FORMAT_VERSION:
            raise FormatTooNew(self.where, found, FORMAT_VERSION)
        if found != FORMAT_VERSION and self._read_only:
            raise BackendError(
                f"{self.where} holds no beatd data in format {FORMAT_VERSION} (found "
                f"{found if found is not None else 'no schema'}): run `beatd db upgrade "
                f"--broker {self.url} --namespace {self.schema}` or start `beatd run` first"
            )
        if found != FORMAT_VERSION:
            self.format_found = self._upgrade()
        self._prepared = True

    def _configure(self, db: psycopg.Connection[Any]) -> None:
        # Bounds every statement, lock waits included: a hung database costs about op_timeout.
        timeout_ms = max(1, int(self.op_timeout * 1000))
        db.execute(f"SET statement_timeout = {timeout_ms}")

    def upgrade(self) -> int:
        """Create or upgrade beatd's schema (`beatd db upgrade`, and at start); the format
        found before."""
        self._check_prepared()
        return self._upgrade()

    def _upgrade(self) -> int:
        found = self._transact(lambda db: upgrade(db, self.schema, self.where))
        if found < FORMAT_VERSION:
            log.info(
                "upgraded the persisted state of %s from format %d to %d",
                self.where,
                found,
                FORMAT_VERSION,
            )
        return found

    def close(self) -> None:
        self._pool.close()

    def _check_prepared(self) -> None:
        if not self._prepared:
            self._prepare()

    def _run(
        self,
        work: Callable[[psycopg.Connection[Any]], T],
        *,
        write: bool = True,
        alone: bool = False,
    ) -> T:
        """`_transact`, once the schema was checked (see `_prepare`)."""
        self._check_prepared()
        return self._transact(work, write=write, alone=alone)

    def _transact(
        self,
        work: Callable[[psycopg.Connection[Any]], T],
        *,
        write: bool = True,
        alone: bool = False,
    ) -> T:
        """Run `work` in one transaction (`write`) or on its own (a read), turning
        PostgreSQL's errors into backend errors. `alone`: `work` writes with one statement,
        its own transaction (autocommit: one round trip, where BEGIN, it and COMMIT are three);
        a session that ends under it may have committed it (OutcomeUnknown)."""
        try:
            with self._pool.connection() as db:
                if not write:
                    return work(db)
                if alone:
                    return self._alone(db, work)
                db.execute("BEGIN")
                try:
                    result = work(db)
                except BaseException:
                    if not db.closed and not db.broken:
                        db.execute("ROLLBACK")
                    raise
                try:
                    db.execute("COMMIT")
                except psycopg.Error as exc:
                    raise self._failure(exc, committing="COMMIT") from exc
                return result
        except psycopg_pool.PoolTimeout as exc:
            raise NotApplied(
                f"{self.url}: no connection within {self.op_timeout:g} s: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise self._failure(exc) from exc

    def _alone(
        self, db: psycopg.Connection[Any], work: Callable[[psycopg.Connection[Any]], T]
    ) -> T:
        """`work`'s one statement, committed by the server as it ends (autocommit)."""
        try:
            return work(db)
        except psycopg.Error as exc:
            if exc.sqlstate == QUERY_CANCELED:  # before its commit: rolled back, not applied
                raise self._failure(exc) from exc
            raise self._failure(exc, committing="a one-statement transaction") from exc

    def _failure(self, exc: psycopg.Error, *, committing: str = "") -> BackendError:
        """The backend error for PostgreSQL's; `committing`: what failed commits (COMMIT, or
        a one-statement transaction), and if the session ended under it, whether it was
        applied is unknown."""
        state = exc.sqlstate
        if committing and (state is None or state[:2] in SESSION_ENDED_CLASSES):
            # A session ended under a commit (terminated, the server shut down, the connection
            # lost): the commit record may be written already, the reply never sent.
            return OutcomeUnknown(
                f"{self.url}: the session ended during {committing}, which may have been "
                f"applied: {exc}"
            )
        if state is None:  # no reply from the server: the connection failed or broke
            return NotApplied(f"{self.url}: {exc}")
        if state[:2] in TRANSIENT_CLASSES or state in TRANSIENT_STATES:
            return NotApplied(f"{self.url}: {exc}")
        return BackendError(f"{self.where}: {exc}")

    def _check_lease(self, db: psycopg.Connection[Any], lease: Lease) -> int:
        """Lock the lease row for share until the transaction ends, so no take can commit
        between this check and the caller's writes, and check that `lease` still holds it; the
        database's clock then, in microseconds (the moment of the caller's writes)."""
        return self._check_lease_and(db, lease, "NULL")[0]

    def _check_lease_and(
        self, db: psycopg.Connection[Any], lease: Lease, also: str
    ) -> tuple[int, Any]:
        """`_check_lease`, and the SQL expression `also` read in the same statement."""
        row = db.execute(
            f"SELECT token, epoch, node, expires_at > {NOW}, {NOW_US}, {also} "
            f"FROM {self.schema}.lease WHERE name = %s FOR SHARE",
            (LEASE,),
        ).fetchone()
        assert row is not None  # written by the first migration, never deleted
        token, epoch, node, live, now_us, extra = row
        if (token, epoch, live) != (lease.token, lease.epoch, True):
            holder = f"node {node} holds epoch {epoch}" if live else "nobody holds it"
            raise LeaseLost(
                f"lease epoch {lease.epoch} of {lease.node} is no longer held ({holder})"
            )
        return int(now_us), extra

    def _run_ended(self, db: psycopg.Connection[Any], run_id: str) -> None:
        """Run `run_id` reached a final outcome in `db`'s transaction: what the operator
        controls do then (`PostgresControls`, postgres_controls.py); nothing here."""

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone(), write=False)

    def server_time(self) -> float:
        row = self._run(lambda db: db.execute(f"SELECT {NOW}").fetchone(), write=False)
        assert row is not None
        return float(row[0])

    def persistence_warnings(self) -> list[str]:
        settings = self._run(
            lambda db: db.execute(
                "SELECT name, setting FROM pg_settings "
                "WHERE name IN ('fsync', 'synchronous_commit')"
            ).fetchall(),
            write=False,
        )
        found = dict(settings)
        warnings = []
        if found.get("fsync") == "off":
            warnings.append(
                f"{self.url} runs with fsync=off: a crash of its host can lose or corrupt "
                "committed slots and queued runs; set fsync=on"
            )
        if found.get("synchronous_commit") == "off":
            warnings.append(
                f"{self.url} runs with synchronous_commit=off: a crash can lose the last "
                "commits, and a slot reported published may be gone; set synchronous_commit=on"
            )
        return warnings
