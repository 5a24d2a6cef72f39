"""The file a SQLite backend's parts share: its connections, its transactions, and SQLite's
errors turned into beatd's (module beatd.backends.sqlite tells the whole story).

A failure inside a transaction rolls it back: NotApplied. A COMMIT that fails may have written
its commit record before failing (an I/O error after the WAL frames were written; a later
reader recovers them): OutcomeUnknown, unless SQLite left the transaction open (a busy COMMIT),
which is then rolled back: NotApplied.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext, suppress
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from beatd.backends.base import FormatTooNew, Lease, StorageCorrupt, StorageReplaced, to_micros
from beatd.backends.sqlite_turns import turns_of
from beatd.errors import BackendError, LeaseLost, NotApplied, OutcomeUnknown
from beatd.history import FAILED_FINALLY, FINAL, LOST, RunKind
from beatd.outcomes import Outcome


def _listed(outcomes: frozenset[Outcome]) -> str:
    """Outcomes as an SQL list of text literals (they are plain words)."""
    return ", ".join(f"'{outcome}'" for outcome in sorted(outcomes))


# The run history (format 2, beatd.history): one `run` row per run, its attempts keyed by (run's
# seq, number), the missed-slot ranges and each entry's summary. Every page a step dirties is
# written to the WAL at its commit, and pages, more than statements, are what the history costs a
# commit, a claim and an ack (bench/sqlite_history.py); an index costs a page per run when the
# runs are written one a transaction. So (docs/design.md tells it too):
# - a run's published record is kept in its message's row (`MESSAGE_PUBLISHED`: the commit writes
#   that row anyway), and a claim's attempt stays open there (`MESSAGE_ATTEMPT`);
# - the ack or dead letter that deletes the message logs record and ended attempt in one row of
#   `run_done` (no index), folded into `run` and `attempt` a thousand at a time (`fold`);
# - a step that keeps the message (retry, release, a noted ending, a claim after a lapsed one)
#   moves the record to `run` by clearing `published_us` (a trigger) and stores the attempt;
# - triggers, in C: a claim that finds the message's attempt still open records it `lost`; an
#   attempt ended later with a final outcome moves the entry's summary;
# - the log's runs move the summaries when it is folded (an ack writes no summary page), and the
#   summaries' reads count the runs logged since; a final end stored outside the log folds it
#   first, so that the summaries count the runs in the order they ended;
# - a run keeps no "finished" flag (nor an index of the open runs) for each ack to rewrite: a run
#   is finished when its last attempt's outcome is final.
# The indexes serve an entry's runs newest first (its unfinished ones: a leader's deadlines, at
# most `Retention.per_entry` rows to look at) and all runs by age (newest first; trimming the
# oldest). The message table has no index of ids (it would cost a commit a page per run): a
# queued run's record is found by a scan of the queue. Statements one by one, so that they run
# inside a transaction (executescript commits).
MESSAGE_PUBLISHED = (
    ("entry", "TEXT"),
    ("slot_us", "INTEGER"),
    ("due_us", "INTEGER"),
    ("kind", "TEXT"),
    ("published_us", "INTEGER"),  # NULL: no record here (none, or moved to `run`)
    ("node", "TEXT"),
    ("epoch", "INTEGER"),
)
MESSAGE_ATTEMPT = (
    ("attempt_consumer", "TEXT"),
    ("attempt_host", "TEXT"),
    ("attempt_pid", "INTEGER"),
    ("attempt_us", "INTEGER"),  # when the claim started it; NULL: none open in this row
)
_SUMMARIZE = (
    "INSERT INTO entry_summary (entry, last_status, last_finished_us, last_duration_us, "
    "last_success_us, last_failure_us, consecutive_failures) "
    "SELECT {entry}, new.outcome, new.ended_us, new.ended_us - new.started_us, "
    f"iif(new.outcome = '{Outcome.SUCCEEDED}', new.ended_us, NULL), "
    f"iif(new.outcome IN ({_listed(FAILED_FINALLY)}), new.ended_us, NULL), "
    f"new.outcome IN ({_listed(FAILED_FINALLY)}) "
    "{source} "
    "ON CONFLICT (entry) DO UPDATE SET last_status = excluded.last_status, "
    "last_finished_us = excluded.last_finished_us, "
    "last_duration_us = excluded.last_duration_us, "
    "last_success_us = coalesce(excluded.last_success_us, last_success_us), "
    "last_failure_us = coalesce(excluded.last_failure_us, last_failure_us), "
    f"consecutive_failures = CASE WHEN excluded.last_status = '{Outcome.SUCCEEDED}' THEN 0 "
    "WHEN excluded.last_failure_us IS NOT NULL THEN consecutive_failures + 1 "
    "ELSE consecutive_failures END"
)
_OF_ATTEMPT = _SUMMARIZE.format(entry="entry", source="FROM run WHERE seq = new.run")
# The summary moved by an attempt of run :run stored ended (:outcome, :started_us, :ended_us).
SUMMARIZE_ENDED = _SUMMARIZE.format(entry="entry", source="FROM run WHERE id = :run").replace(
    "new.", ":"
)
HISTORY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS run (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    entry TEXT NOT NULL,
    slot_us INTEGER NOT NULL,
    due_us INTEGER NOT NULL,
    published_us INTEGER NOT NULL,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    kind TEXT NOT NULL,
    celery INTEGER NOT NULL DEFAULT 0,
    received_us INTEGER,
    overdue_us INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS run_entry ON run (entry, published_us, id)",
    "CREATE INDEX IF NOT EXISTS run_published ON run (published_us, id)",
    """CREATE TABLE IF NOT EXISTS attempt (
    run INTEGER NOT NULL,
    number INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER,
    started_us INTEGER NOT NULL,
    ended_us INTEGER,
    outcome TEXT,
    reason TEXT NOT NULL DEFAULT '',
    error_type TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run, number)
) WITHOUT ROWID""",
    "CREATE TRIGGER IF NOT EXISTS run_deleted AFTER DELETE ON run "
    "BEGIN DELETE FROM attempt WHERE run = old.seq; END",
    # Each entry's newest slot whose record a trim deleted (only trims delete runs): backfill
    # refuses slots at or before it, which the history can no longer vouch for.
    "CREATE TABLE IF NOT EXISTS run_trimmed (entry TEXT PRIMARY KEY, slot_us INTEGER NOT NULL) "
    "WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS run_trimmed_up_to AFTER DELETE ON run "
    f"WHEN old.kind <> '{RunKind.MANUAL}' BEGIN INSERT INTO run_trimmed (entry, slot_us) "
    "VALUES (old.entry, old.slot_us) ON CONFLICT (entry) DO UPDATE SET "
    "slot_us = max(slot_us, excluded.slot_us); END",
    # An attempt started from task events ends the run's open one as lost.
    "CREATE TRIGGER IF NOT EXISTS attempt_started AFTER INSERT ON attempt "
    "WHEN new.ended_us IS NULL BEGIN "
    f"UPDATE attempt SET ended_us = new.started_us, outcome = '{LOST}' "
    "WHERE run = new.run AND number < new.number AND ended_us IS NULL; END",
    # A run's first claim (or a step that writes its record) moves its record to `run`; a run id
    # already held there keeps its record.
    "CREATE TRIGGER IF NOT EXISTS message_record_moved AFTER UPDATE OF published_us ON message "
    "WHEN old.published_us IS NOT NULL AND new.published_us IS NULL BEGIN "
    "INSERT OR IGNORE INTO run (id, entry, slot_us, due_us, published_us, node, epoch, kind) "
    "VALUES (old.id, old.entry, old.slot_us, old.due_us, old.published_us, old.node, old.epoch, "
    "old.kind); END",
    # A claim of a message whose attempt is still open (its claim lapsed): that one was lost.
    "CREATE TRIGGER IF NOT EXISTS message_claimed_again AFTER UPDATE OF attempt_us ON message "
    "WHEN old.attempt_us IS NOT NULL AND new.attempt_us IS NOT NULL BEGIN "
    "UPDATE message SET published_us = NULL WHERE seq = new.seq AND published_us IS NOT NULL; "
    "INSERT INTO attempt (run, number, consumer, host, pid, started_us, ended_us, outcome) "
    "SELECT seq, (SELECT coalesce(max(number), 0) + 1 FROM attempt WHERE run = seq), "
    "old.attempt_consumer, old.attempt_host, old.attempt_pid, old.attempt_us, "
    f"new.attempt_us, '{LOST}' FROM run WHERE id = old.id; END",
    # An attempt ended later with a final outcome moves the summary (one stored ended does so by
    # `SUMMARIZE_ENDED`, so that a fold or a copy of attempts already counted does not).
    "DROP TRIGGER IF EXISTS attempt_stored_ended",
    "CREATE TRIGGER IF NOT EXISTS attempt_ended AFTER UPDATE OF outcome ON attempt "
    f"WHEN old.outcome IS NULL AND new.outcome IN ({_listed(FINAL)}) BEGIN {_OF_ATTEMPT}; END",
    # A run settled for good before anything moved its record to `run`: its record and its one
    # attempt, logged in one row of a table without indexes (a page an ack), folded into `run`
    # and `attempt` many at a time (`FOLD`).
    """CREATE TABLE IF NOT EXISTS run_done (
    id TEXT NOT NULL,
    entry TEXT NOT NULL,
    slot_us INTEGER NOT NULL,
    due_us INTEGER NOT NULL,
    published_us INTEGER NOT NULL,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT,
    host TEXT,
    pid INTEGER,
    started_us INTEGER,
    ended_us INTEGER,
    outcome TEXT,
    reason TEXT NOT NULL DEFAULT '',
    error_type TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
)""",
    # The logged runs move the summaries when they are folded (`fold`), not one an ack; the
    # summaries' reads count the runs logged since (`summaries`).
    "DROP TRIGGER IF EXISTS run_done_logged",
    """CREATE TABLE IF NOT EXISTS missed (
    entry TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL,
    total INTEGER NOT NULL,
    recorded_us INTEGER NOT NULL,
    node TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    overdue_us INTEGER,
    PRIMARY KEY (entry, reason, first_us)
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS missed_recorded ON missed (recorded_us)",
    """CREATE TABLE IF NOT EXISTS entry_summary (
    entry TEXT PRIMARY KEY,
    last_status TEXT NOT NULL,
    last_finished_us INTEGER NOT NULL,
    last_duration_us INTEGER,
    last_success_us INTEGER,
    last_failure_us INTEGER,
    consecutive_failures INTEGER NOT NULL
) WITHOUT ROWID""",
)
# The operator controls (format 2 too, issue 16; beatd.backends.sqlite_controls): each entry's
# pause, busy mark, held run and lifted pauses (a row only for an entry that has one; partial
# indexes of the paused entries, read by every commit, and of the busy marks, looked up by every
# final settling step), the audit log, the remembered trigger keys, and the audit id of a manual
# or backfill run (apart from `run`, so that no other run's record pays for it).
CONTROLS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entry_control (
    entry TEXT PRIMARY KEY,
    pause_at_us INTEGER,
    pause_until_us INTEGER,
    pause_reason TEXT,
    pause_by TEXT,
    busy_run TEXT,
    busy_since_us INTEGER,
    held TEXT,
    lifted TEXT
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entry_control_paused ON entry_control (entry) "
    "WHERE pause_at_us IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS entry_control_busy ON entry_control (busy_run) "
    "WHERE busy_run IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS audit (
    id TEXT PRIMARY KEY,
    at_us INTEGER NOT NULL,
    action TEXT NOT NULL,
    entry TEXT,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    before TEXT,
    after TEXT
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at_us, id)",
    "CREATE INDEX IF NOT EXISTS audit_entry ON audit (entry, at_us, id)",
    """CREATE TABLE IF NOT EXISTS trigger_key (
    key TEXT NOT NULL,
    entry TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    audit_id TEXT,
    at_us INTEGER NOT NULL,
    PRIMARY KEY (key, entry)
)""",
    "CREATE INDEX IF NOT EXISTS trigger_key_at ON trigger_key (at_us)",
    "CREATE TABLE IF NOT EXISTS run_audit (id TEXT PRIMARY KEY, audit TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS run_audit_deleted AFTER DELETE ON run "
    f"WHEN old.kind IN ('{RunKind.MANUAL}', '{RunKind.BACKFILL}') "
    "BEGIN DELETE FROM run_audit WHERE id = old.id; END",
)
# The runtime entries (format 2 too, issue 18; beatd.backends.sqlite_entries): each entry with
# its version and resolved definition (JSON), the change feed (its seq from AUTOINCREMENT, so it
# never goes back once records are trimmed), and the leader's registered file-entry names.
ENTRIES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runtime_entry (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    definition TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    updated_us INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    request_id TEXT
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS entry_change (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER
)""",
    "CREATE TABLE IF NOT EXISTS file_entry (name TEXT PRIMARY KEY, path TEXT NOT NULL) "
    "WITHOUT ROWID",
)
# The node records (format 2 too, issue 18; beatd.backends.sqlite_nodes): each node's record as
# JSON (beatd.nodes), its last write and its expiry (µs of the host's clock).
NODES_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS node (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    seen_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
) WITHOUT ROWID""",
)
FORMAT_2_SCHEMA = HISTORY_SCHEMA + CONTROLS_SCHEMA + ENTRIES_SCHEMA + NODES_SCHEMA
HISTORY_OBJECTS = frozenset(
    re.findall(
        r"CREATE (?:TABLE|INDEX|TRIGGER) IF NOT EXISTS (\w+)",
        " ".join(FORMAT_2_SCHEMA),
    )
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    token TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    config_hash TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS epoch (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entry_state (
    entry TEXT PRIMARY KEY,
    last_slot_us INTEGER NOT NULL,
    last_published_us INTEGER,
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS message (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body TEXT NOT NULL,
    ready_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    attempt_consumer TEXT,
    attempt_host TEXT,
    attempt_pid INTEGER,
    attempt_us INTEGER,
    entry TEXT,
    slot_us INTEGER,
    due_us INTEGER,
    kind TEXT,
    published_us INTEGER,
    node TEXT,
    epoch INTEGER
);
CREATE INDEX IF NOT EXISTS message_order ON message (queue, priority DESC, seq);
CREATE INDEX IF NOT EXISTS message_receipt ON message (receipt);
CREATE TABLE IF NOT EXISTS dead_letter (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL,
    deliveries INTEGER NOT NULL
);
"""
LEASE = "scheduler"
BEATD_TABLES = ("lease", "entry_state")  # in every beatd database since the first
DEFAULT_PRIORITY = 5
# Runs committed after which the leader truncates the WAL at its next lease renewal: about 0.5 MB
# of WAL (tests/backends/test_sqlite.py measures it).
LARGE_CATCH_UP = 1000
SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_NOTADB = 8, 11, 26  # primary result codes
# Lease and publishing writes check the file at every call; a worker's (claims, acks) at most
# this often (seconds): a stat per claim would cost about a tenth of it.
FILE_CHECK_INTERVAL = 0.5
T = TypeVar("T")


def _format_1(db: sqlite3.Connection) -> None:
    """Format 0 (beatd before format versions) to 1: the same tables; only the version is new."""


def _format_2(db: sqlite3.Connection) -> None:
    """Format 1 to 2: the run history's tables, and the message's open attempt and queued run's
    record (issue 15); the operator controls' tables (issue 16); the runtime entries' and the
    node records' (issue 18). A process that opened the file for writing since has added them
    already (`add_history`), so that a worker started before the leader upgrades records its
    attempts."""
    add_history(db)


def add_history(db: sqlite3.Connection) -> None:
    """Add the run history's layout where it is missing, inside the caller's transaction."""
    held = {row[1] for row in db.execute("PRAGMA table_info(message)")}
    for column, kind in MESSAGE_ATTEMPT + MESSAGE_PUBLISHED:
        if column not in held:
            db.execute(f"ALTER TABLE message ADD COLUMN {column} {kind}")
    for statement in FORMAT_2_SCHEMA:
        db.execute(statement)


def has_history(db: sqlite3.Connection) -> bool:
    """Whether the file has all of the run history's layout (a read)."""
    objects = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
    columns = {row[1] for row in db.execute("PRAGMA table_info(message)")}
    return objects >= HISTORY_OBJECTS and columns >= {
        column for column, _ in MESSAGE_ATTEMPT + MESSAGE_PUBLISHED
    }


# The persisted-state format is the file's `PRAGMA user_version`. MIGRATIONS[n] upgrades format n
# to n + 1, run by the leader in the transaction that takes the lease (see `upgrade`): a later
# change of the tables appends one (docs/design.md, Persisted-state format).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_format_1, _format_2)
FORMAT_VERSION = len(MIGRATIONS)


def _format(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def upgrade(db: sqlite3.Connection, path: Path) -> int:
    """Bring the file's persisted state to FORMAT_VERSION inside the caller's transaction (the
    lease's), so the migrations and the new version commit together; the format found."""
    found = _format(db)
    if found > FORMAT_VERSION:
        raise FormatTooNew(str(path), found, FORMAT_VERSION)
    if found == FORMAT_VERSION:
        return found
    if found == 0 and not _holds_anything(db):  # a new file: nothing to upgrade, only to mark
        found = FORMAT_VERSION
    for migration in MIGRATIONS[found:]:
        migration(db)
    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")  # no parameters in a PRAGMA
    return found


def _holds_anything(db: sqlite3.Connection) -> bool:
    tables = ("epoch", "entry_state", "message", "dead_letter")
    return any(db.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0] for t in tables)


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_micros(moment)


class SQLiteFile:
    """`read_only`: for commands that only look (status, dead list, a migration's source):
    the file is opened with `mode=ro`. With it or `create=False`, a missing file is an error.
    `history=False`: commits, claims and settlings write no run history (reads still work)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        wall_clock: Callable[[], float] = time.time,
        read_only: bool = False,
        create: bool = True,
        history: bool = True,
    ) -> None:
        if str(path) == ":memory:":  # else sqlite3 opens one connection's private database
            raise BackendError(
                "cannot use ':memory:' as the database: an in-memory SQLite database belongs to "
                "one connection of one process, but the scheduler, its standbys and the workers "
                "share beatd's database; give a file path (sqlite:///beatd.db)"
            )
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.read_only = read_only
        self._now = wall_clock
        self._local = threading.local()  # a connection per thread
        self._turns = turns_of(self.path)  # this process's writers of the file (bulk steps wait)
        self._opened: tuple[int, int] | None = None  # the file's device and inode, first opened
        self._check_at = 0.0  # monotonic: when a queue's write checks the file next
        self._published_since_truncate = 0  # runs committed since the WAL was last truncated
        self.history = history  # False: commits, claims and settlings write no run history
        self._history_tables = False  # seen in a read-only file (which may be of format 1)
        self._host = socket.gethostname()  # of the attempts this process's claims start
        self._logged = 0  # runs this handle logged in run_done since it last folded it
        if (read_only or not create) and not self.path.is_file():
            raise BackendError(
                f"no database at {self.path}: check the path (`beatd run` creates it)"
            )
        if read_only or not create:  # a file that is there: it must be beatd's
            self._require_beatd_database()
        if read_only:
            self._connection()
        else:
            self._run(lambda db: db.executescript(SCHEMA), write=False)
            if not self._run(has_history, write=False):  # of format 1: the leader upgrades it
                self._run(add_history)

    def _require_beatd_database(self) -> None:
        """Refuse, as bad input, a file at the path that is not beatd's database (a mistyped
        path to another file): looked at read-only, so nothing in it changes."""
        uri = f"file:{quote(str(self.path))}?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
                rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                tables = {name for (name,) in rows}
        except sqlite3.DatabaseError as exc:
            if _primary(exc) != SQLITE_NOTADB:
                raise self._failure(exc) from exc
            why = "it is not a SQLite database (or its first page is damaged)"
        else:
            missing = [t for t in BEATD_TABLES if t not in tables]
            if not missing:
                return
            why = "it holds no tables" if not tables else f"it has no {' or '.join(missing)} table"
        raise BackendError(
            f"{self.path} is not a beatd database: {why}; check the path (`beatd run` creates "
            "the database)"
        )

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._open_read_only() if self.read_only else self._open()
                opened = os.stat(self.path)
                found = _format(db)
            except sqlite3.DatabaseError as exc:
                if _primary(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB):
                    raise self._failure(exc) from exc
                raise BackendError(f"cannot open {self.path}: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(f"cannot open {self.path}: {exc}") from exc
            if self._opened is None:
                self._opened = (opened.st_dev, opened.st_ino)
            elif (opened.st_dev, opened.st_ino) != self._opened:  # opened again, or a thread's
                db.close()
                raise self._replaced()
            if found > FORMAT_VERSION:
                db.close()
                raise FormatTooNew(str(self.path), found, FORMAT_VERSION)
            self._local.db, self._local.closing = db, _ClosedWithThread(db)
        return db

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise BackendError(
                f"cannot create the database {self.path}: there is no directory "
                f"{self.path.parent}; create it, or correct the path"
            )
        with suppress(FileExistsError):  # created 0600: run state is nobody else's business
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # closed by the thread's end, whichever thread drops its locals (_ClosedWithThread)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # SQLite gives -wal and -shm the file's mode
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path))}?mode=ro"
        db = sqlite3.connect(
            uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def _check_file(self) -> None:
        """Refuse to write to a file that is no longer the one at our path: a process that
        went on would lead or work apart from every process that opened the path since."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise self._replaced() from None
        except OSError as exc:
            raise NotApplied(f"cannot check {self.path}: {exc}") from exc
        if (now.st_dev, now.st_ino) != self._opened:
            raise self._replaced()

    def _replaced(self) -> StorageReplaced:
        device, inode = self._opened or (0, 0)
        return StorageReplaced(
            f"{self.path} is not the database file this process opened (device {device} "
            f"inode {inode}): it was deleted or replaced; a process still using it would "
            "lead or work apart from every process using the file at that path now. Restart "
            "beatd (systemd does) to use the file there now"
        )

    @contextmanager
    def _transaction(self, lease: bool, step: bool) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        now = time.monotonic()
        if lease or now >= self._check_at:  # a queue's writes: at most every FILE_CHECK_INTERVAL
            self._check_file()
            self._check_at = now + FILE_CHECK_INTERVAL
        if step:  # a bulk write's step: after this process's other writers (sqlite_turns.py)
            self._turns.step_turn()
        with nullcontext() if step else self._turns.writing():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite ends it on a full disk or corruption: keep that
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                if not db.in_transaction:  # ended by SQLite mid-commit: the record may be written
                    raise _CommitFailed(exc) from exc
                with suppress(sqlite3.Error):  # still open (busy): nothing was applied
                    db.execute("ROLLBACK")
                raise

    def _run(
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        lease: bool = False,
        step: bool = False,
    ) -> T:
        """Run `work` in a transaction, turning SQLite's errors into backend errors. `lease`:
        a write of the lease or under it, always made to the file at the path (`_check_file`).
        `step`: one step of a bulk write, which lets this process's other writes go first."""
        try:
            if not write:
                return work(self._connection())
            with self._transaction(lease, step) as db:
                return work(db)
        except _CommitFailed as failed:
            raise self._failure(failed.error, committing=True) from failed.error
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: sqlite3.DatabaseError, *, committing: bool = False) -> BackendError:
        """The backend error for SQLite's; `committing`: COMMIT failed and ended the
        transaction, so a transient failure's outcome is unknown."""
        transient = OutcomeUnknown if committing else NotApplied
        code = _primary(exc)
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return StorageCorrupt(
                f"{self.path} is damaged: PRAGMA quick_check found: {self._quick_check()}. "
                "Retrying cannot repair it: restore the file from a backup, or copy what is "
                "readable to a new file (see docs/deployment.md, When storage fails)"
            )
        if code == SQLITE_READONLY:
            # Opened while the file could not be written (its mode, a read-only mount): the
            # connection stays read-only even once that is fixed, so open it again next time.
            self.close()
            return transient(f"{self.path}: {exc}; opening it again at the next attempt")
        if isinstance(exc, sqlite3.OperationalError):
            # full disk, file-size limit, locked database: all may pass
            return transient(f"{self.path}: {exc}")
        return BackendError(f"{self.path}: {exc}")

    def _quick_check(self) -> str:
        """What SQLite's own check finds, on one line and cut to what a log line can hold."""
        try:
            uri = f"file:{quote(str(self.path))}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as db:
                rows = db.execute("PRAGMA quick_check(20)").fetchall()
        except sqlite3.Error as exc:
            return f"nothing, it could not run ({exc})"
        lines = [line for (row,) in rows for line in str(row).splitlines()]
        text = "; ".join(lines)
        return text if len(text) <= 1000 else text[:1000] + " [cut]"

    def _check_lease(self, db: sqlite3.Connection, lease: Lease) -> None:
        row = db.execute(
            "SELECT 1 FROM lease WHERE name = ? AND token = ? AND epoch = ? AND expires_at > ?",
            (LEASE, lease.token, lease.epoch, self._now()),
        ).fetchone()
        if row is None:
            raise LeaseLost(f"lease epoch {lease.epoch} of {lease.node} is no longer held")

    def _run_final(self, db: sqlite3.Connection, run_id: str | bytes) -> None:
        """Run `run_id` reached a final outcome, inside `db`'s transaction (a settling step's):
        the operator controls' step (`SQLiteControls` does it; a part without them, nothing)."""

    def ping(self) -> None:
        self._run(lambda db: db.execute("SELECT 1").fetchone(), write=False)

    def server_time(self) -> float:
        return self._now()  # every process sharing the file shares this host's clock

    def persistence_warnings(self) -> list[str]:
        return []


class _CommitFailed(Exception):
    """COMMIT failed and SQLite ended the transaction: whether it was applied is unknown."""

    def __init__(self, error: sqlite3.DatabaseError) -> None:
        super().__init__(str(error))
        self.error = error


# Text as another program may have stored it: not UTF-8, or a BLOB. Read as bytes and decoded
# with surrogateescape, so the worker sees what is wrong and dead-letters it (never an outage).
_AS_BYTES = "CAST({} AS BLOB)"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _stored(value: str) -> str | bytes:
    """Text to write: as it is, or, when it carries bytes that are not UTF-8 (read by `_text`),
    those bytes, stored as a BLOB that every reader casts back."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")
    return value


def _primary(exc: sqlite3.Error) -> int:
    """SQLite's primary result code (an extended code carries it in its low byte)."""
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _priority(priority: int | None) -> int:
    return DEFAULT_PRIORITY if priority is None else priority


class _ClosedWithThread:
    """Closes a thread's connection when the thread ends and its locals are dropped. A
    `sqlite3.Connection` is in a reference cycle with its statement cache: without this it
    lived on, its file open and its page cache held, until the collector's next full pass,
    which `beatd run` makes rare; a server answering each request in a thread of its own (the
    metrics server) left one a request (2 MB a scrape after counting a big queue)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __del__(self) -> None:
        self.db.close()
