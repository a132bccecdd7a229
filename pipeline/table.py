"""The prediction table: one row per (image id, model version), in SQLite or PostgreSQL.

`--table` is a database URL: `postgresql://user@host:port/db` for PostgreSQL (psycopg 3),
otherwise a SQLite file (`sqlite:///relative.db`, `sqlite:////abs/path.db` or a plain path).
Writes are idempotent upserts on the primary key (image_id, model_version): a message delivered
twice, a re-run batch or a re-published day leaves one row per image and model version. SQL here
is written once, with SQLite's `?` placeholders; `postgres_sql` translates it for psycopg.

The inspectors' typical query, "every dirty or damaged car captured today", is `inspect()`:

    SELECT image_id, source, top1_label, top1_prob, top2_label, top2_prob, task_answers FROM predictions
    WHERE captured_date = :day AND status = 'ok'
      AND (top1_label IN ('dirt', 'defect') OR top2_label IN ('dirt', 'defect'))

served by the index `<table>_day_idx (captured_date, status, top1_label, top2_label)`. Asked by
task answer instead ("every image the model calls defect", by the rule the evaluation measured:
pipeline/model.py), it matches the answer's exact `"task":"class"` pair in the row's
`task_answers` JSON text with LIKE (`answer_pattern`), which SQLite and PostgreSQL read alike.

A path has one current row per model version: a row written for a file supersedes the `error`
rows of the same file (same `source`) under another id, so a file first seen truncated (its
error row keyed by the truncated content's hash) and later complete leaves only its good row.
The superseding delete runs in the upsert's transaction and finds the error rows through the
partial index `<table>_error_idx (model_version) WHERE status = 'error'`; ok rows are never
removed by it.

A database that cannot be reached or written now (down, restarting, locked, full) raises
`TableUnavailable`: not the rows' fault, so a queue consumer keeps them and retries instead of
counting a failed delivery. An `error` row is final unless its error says "not now" (the file was
not found or could not be opened): `produce --table` publishes such images again.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import sys
from pathlib import Path

COLUMNS = [  # name, SQL type (SQLite reads these type names by affinity)
    ("image_id", "TEXT NOT NULL"), ("model_version", "TEXT NOT NULL"), ("model_name", "TEXT NOT NULL"),
    ("source", "TEXT NOT NULL"), ("captured_date", "DATE"),
    ("ood_score", "DOUBLE PRECISION"), ("ood_scorer", "TEXT"), ("ood_threshold", "DOUBLE PRECISION"),
    ("is_ood", "BOOLEAN"),
    ("top1_label", "TEXT"), ("top1_prob", "DOUBLE PRECISION"),
    ("top2_label", "TEXT"), ("top2_prob", "DOUBLE PRECISION"), ("top2_rule", "TEXT"), ("calibration", "TEXT"),
    ("task_answers", "TEXT"),  # compact JSON {task: class answered}, sorted keys (`answers_text`)
    ("status", "TEXT NOT NULL CHECK (status IN ('ok', 'ood', 'error'))"), ("error", "TEXT"),
    ("processed_at", "TIMESTAMP WITH TIME ZONE NOT NULL"),
]
NAMES = [c for c, _ in COLUMNS]
DEFAULT_TABLE = "predictions"
DEFAULT_URL = "predictions.db"


# Errors that mean "not now" rather than "never" (data/images.py's messages for a file that was
# not there or could not be opened): a later produce run publishes the image again.
TRANSIENT_ERRORS = ("file not found", "cannot be opened")


# PostgreSQL SQLSTATEs decided against their exception class: a read-only transaction (25006: a
# standby during a failover, a database set read-only for maintenance) is the server's state, so
# retried like an outage; a program limit (54xxx: an index row too large for a very long image id)
# is the statement's content, however OperationalError psycopg calls it, so never retried for ever.
SERVER_STATES = ("25006",)
STATEMENT_FAULTS = ("54000", "54001", "54011", "54023")


class TableError(ValueError):
    """A table URL or name that cannot be used; the message says why."""


class TableUnavailable(RuntimeError):
    """The database cannot be reached or written now; the same rows may succeed later."""


def unavailable(e: Exception) -> bool:
    """Whether `e` is the database's state rather than the statement's content. SQLite's
    OperationalError is a lock, a full disk or a file that cannot be opened; psycopg's is a
    connection that failed or broke, a shutdown, too many clients. When in doubt this says yes:
    retrying a batch costs time, dead-lettering it loses predictions."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and getattr(e, "sqlstate", None) in STATEMENT_FAULTS:
        return False
    return isinstance(e, (sqlite3.OperationalError, OSError)) or (psycopg is not None and (
        isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))
        or getattr(e, "sqlstate", None) in SERVER_STATES))


def transient(error: str | None) -> bool:
    return bool(error) and any(t in error for t in TRANSIENT_ERRORS)


def answers_text(answers: dict[str, str]) -> str:
    """A row's task answers {task: class} as the text `task_answers` holds: compact JSON, sorted keys."""
    return json.dumps(answers, separators=(",", ":"), sort_keys=True)


def answer_pattern(task: str, cls: str) -> str:
    """The LIKE pattern (escape character `\\`) that finds the answer `cls` to `task` in
    `answers_text`: its exact `"task":"class"` pair, whose quotes keep `defect` from matching
    `defect_rear`; LIKE's wildcards in a name are escaped."""
    pair = answers_text({task: cls})[1:-1]
    return "%" + re.sub(r"([\\%_])", r"\\\1", pair) + "%"


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
URL_FORMS = "postgresql://user@host:port/db, sqlite:///relative.db, sqlite:////abs/path.db or a file path"


def check_url(url: str) -> None:
    """TableError (one line) for a --table that names no database this code can open: an unknown
    scheme (mysql://...), a sqlite URL without a file, an empty value."""
    scheme = SCHEME.match(url)
    if not url.strip():
        raise TableError(f"--table is empty; give {URL_FORMS}")
    if scheme and url[scheme.end():].startswith("//") and not is_postgres(url):
        if scheme.group(1).lower() != "sqlite":
            raise TableError(f"--table: unknown database scheme '{scheme.group(1)}://'; give {URL_FORMS}")
        if not url.startswith("sqlite:///") or not sqlite_path(url).strip():
            raise TableError(f"--table {url}: a SQLite URL names its file, as sqlite:///relative.db or "
                             f"sqlite:////abs/path.db")


def redacted(url: str) -> str:
    """`url` with any password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else url


def sqlite_failure(path: str, e: Exception) -> str:
    """`e`, raised by SQLite or the file system for the table file `path`, as one line that names
    the file, what is wrong with its disk or folder when that can be seen, and what to do."""
    error = f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"
    if "locked" in str(e):
        return f"{path}: {error} (another process held it longer than the 60 s busy timeout); try again"
    where = Path(path).absolute().parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        disk = os.statvfs(where)
        read_only, free = bool(disk.f_flag & os.ST_RDONLY), disk.f_bavail * disk.f_frsize
    except OSError:
        read_only, free = False, None
    if read_only or not os.access(where, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        why = "its disk is mounted read-only" if read_only else "it or its folder is not writable by this user"
        fix = "give --table a writable path"
    elif free is not None and free < (1 << 20):
        why, fix = f"its disk is full ({free // 1024} KiB free)", "free space there, or give --table a file on another disk"
    else:
        why, fix = "", "check the path, its disk and its permissions"
    return (f"{path}: cannot write the prediction table ({why + '; ' if why else ''}{error}); {fix}. Rows "
            f"already written are kept; a re-run writes the rest")


# A quoted SQL string ('it''s') or identifier ("x"): its text is data, never a placeholder.
QUOTED = re.compile(r"""('(?:[^']|'')*'|"(?:[^"]|"")*")""")


def postgres_sql(sql: str) -> str:
    """`sql` with psycopg's placeholders: each `?` outside quotes becomes `%s`, and every `%` is
    doubled, since psycopg reads a `%` as the start of a placeholder even inside quotes."""
    parts = QUOTED.split(sql)  # odd indices: the quoted parts
    return "".join(p.replace("%", "%%") if i % 2 else p.replace("%", "%%").replace("?", "%s")
                   for i, p in enumerate(parts))


class PredictionTable:
    """The prediction table of one database URL: created on first use, written by upserts."""

    def __init__(self, url: str = DEFAULT_URL, name: str = DEFAULT_TABLE):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise TableError(f"table name '{name}': use letters, digits and _ (not starting with a digit)")
        check_url(url)
        self.url, self.name, self.pg = url, name, is_postgres(url)
        self.conn = None
        self.create()

    def connect(self) -> None:
        if self.pg:
            try:
                import psycopg
            except ImportError:
                raise TableError("PostgreSQL URLs need psycopg: pip install 'psycopg[binary]'") from None
            try:
                self.conn = psycopg.connect(self.url, connect_timeout=10)
            except psycopg.ProgrammingError as e:  # a URL psycopg cannot parse: no retry will help
                raise TableError(f"--table {redacted(self.url)}: not a usable PostgreSQL URL "
                                 f"({str(e).splitlines()[0].replace(self.url, redacted(self.url))}); give "
                                 f"postgresql://user@host:port/db") from None
        else:
            path = sqlite_path(self.url)
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Several consumer processes may share one file: WAL + a generous busy timeout.
            self.conn = sqlite3.connect(path, timeout=60)
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError):
                    raise
                self.close()
                raise TableError(f"{path}: not a SQLite database ({e}); give --table a new file or a "
                                 f"prediction table's SQLite file") from None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def execute_sql(self, sql: str, params=(), many: bool = False, fetch: bool = False, then=()):
        """Run `sql` (with `?` placeholders), then each (sql, params, many) of `then`, in one
        transaction; rows of `sql` as dicts with `fetch`.
        A PostgreSQL connection lost since the last call (a server restart) is reopened and the
        statement run once more (every statement here is idempotent); TableUnavailable if the
        database still cannot be used."""
        steps = [(sql, params, many), *then]
        if self.pg:
            steps = [(postgres_sql(q), p, m) for q, p, m in steps]
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.connect()
                return self._execute(steps, fetch)
            except Exception as e:
                if not unavailable(e):
                    raise
                if self.pg:
                    self.close()
                if attempt == 2 or not self.pg:
                    raise TableUnavailable(f"{type(e).__name__}: {e}".strip()[:500] if self.pg else
                                           sqlite_failure(sqlite_path(self.url), e)) from e

    def _execute(self, steps: list, fetch: bool):
        cur = self.conn.cursor()
        try:
            rows = cols = None
            for k, (sql, params, many) in enumerate(steps):
                (cur.executemany if many else cur.execute)(sql, params)
                if fetch and k == 0:
                    rows, cols = cur.fetchall(), [d[0] for d in cur.description]
            self.conn.commit()
        except Exception:
            try:
                self.conn.rollback()
            except Exception:  # the connection is gone: nothing to roll back
                pass
            raise
        finally:
            try:
                cur.close()
            except Exception:
                pass
        return [dict(zip(cols, r)) for r in rows] if fetch else None

    def create(self) -> None:
        cols = ", ".join(f"{c} {t}" for c, t in COLUMNS)
        self.execute_sql(f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY (image_id, model_version))")
        self.execute_sql(f"CREATE INDEX IF NOT EXISTS {self.name}_day_idx ON {self.name} "
                  f"(captured_date, status, top1_label, top2_label)")
        self.execute_sql(f"CREATE INDEX IF NOT EXISTS {self.name}_error_idx ON {self.name} (model_version) "
                  f"WHERE status = 'error'")
        have = set(self.columns())
        for c, t in COLUMNS:  # a table written by an older version: add what it lacks (NULL there)
            if c not in have:
                self.execute_sql(f"ALTER TABLE {self.name} ADD COLUMN {c} {t}")

    def columns(self) -> list[str]:
        if self.pg:
            rows = self.execute_sql("SELECT column_name AS name FROM information_schema.columns WHERE table_name = ?",
                             (self.name.lower(),), fetch=True)
        else:
            rows = self.execute_sql(f"PRAGMA table_info({self.name})", fetch=True)
        return [r["name"] for r in rows]

    def upsert(self, rows: list[dict]) -> None:
        """Insert or replace rows by (image_id, model_version), and remove the error rows they
        supersede (the same source and model version under another id), in one transaction."""
        if not rows:
            return
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        values = [tuple(r.get("processed_at") or now if c == "processed_at" else r.get(c) for c in NAMES)
                  for r in rows]
        update = ", ".join(f"{c} = excluded.{c}" for c in NAMES[2:])
        sql = (f"INSERT INTO {self.name} ({', '.join(NAMES)}) VALUES ({', '.join('?' * len(NAMES))}) "
               f"ON CONFLICT (image_id, model_version) DO UPDATE SET {update}")
        supersede = (f"DELETE FROM {self.name} WHERE status = 'error' AND model_version = ? AND source = ? "
                     f"AND image_id <> ?")
        keys = [(r.get("model_version"), r.get("source"), r.get("image_id")) for r in rows]
        self.execute_sql(sql, values, many=True, then=[(supersede, keys, True)])

    def upsert_split(self, rows: list[dict]) -> dict[int, str]:
        """`upsert`, and when the batch is refused for its content, each row on its own, so that one
        bad row (an id too long for the index, text the database cannot hold) does not hold back
        the others: {index in rows: error} of the rows refused. TableUnavailable propagates."""
        try:
            self.upsert(rows)
            return {}
        except TableUnavailable:
            raise
        except Exception:
            pass
        refused = {}
        for i, row in enumerate(rows):
            try:
                self.upsert([row])
            except TableUnavailable:
                raise
            except Exception as e:
                refused[i] = f"{type(e).__name__}: {e}"[:1000]
        return refused

    def query(self, where: str = "", params=(), columns: str = "*") -> list[dict]:
        """Rows as plain Python values (dates and times as ISO strings, is_ood as bool)."""
        return [plain(r) for r in self.execute_sql(f"SELECT {columns} FROM {self.name} {where}", params, fetch=True)]

    def existing_ids(self, ids: list[str], model_version: str | None = None) -> set[str]:
        return set(self.states(ids, model_version))

    def final_ids(self, ids: list[str], model_version: str | None = None) -> set[str]:
        """Ids with a final row: ok, ood, or an error that a later try would repeat."""
        return {i for i, final in self.states(ids, model_version).items() if final}

    def states(self, ids: list[str], model_version: str | None = None) -> dict[str, bool]:
        """{image id: whether one of its rows is final} for the ids that have a row."""
        found: dict[str, bool] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            where = f"WHERE image_id IN ({', '.join('?' * len(chunk))})"
            params = list(chunk)
            if model_version:
                where += " AND model_version = ?"
                params.append(model_version)
            for r in self.query(where, params, "image_id, status, error"):
                final = r["status"] != "error" or not transient(r["error"])
                found[r["image_id"]] = found.get(r["image_id"], False) or final
        return found

    def inspect(self, day: str, labels=(), answers=()) -> list[dict]:
        """The inspectors' query: the ok rows captured on `day` whose top-2 holds one of `labels`
        (when given) and whose task answers hold every (task, class) of `answers`."""
        where, params = ["captured_date = ?", "status = 'ok'"], [day]
        if labels:
            marks = ", ".join("?" * len(labels))
            where.append(f"(top1_label IN ({marks}) OR top2_label IN ({marks}))")
            params += [*labels, *labels]
        for task, cls in answers:
            where.append("task_answers LIKE ? ESCAPE '\\'")
            params.append(answer_pattern(task, cls))
        return self.query(f"WHERE {' AND '.join(where)} ORDER BY image_id", params,
                          "image_id, source, top1_label, top1_prob, top2_label, top2_prob, task_answers")

    def labels(self) -> list[str]:
        """Every label in the top-2 columns, sorted: what `inspect` can be asked for."""
        rows = self.execute_sql(f"SELECT top1_label AS label FROM {self.name} UNION "
                         f"SELECT top2_label FROM {self.name}", fetch=True)
        return sorted(r["label"] for r in rows if r["label"] is not None)

    def task_classes(self) -> dict[str, list[str]]:
        """{task: the classes rows answer it with}, sorted: the answers `inspect` can be asked for."""
        found: dict[str, set] = {}
        for r in self.execute_sql(f"SELECT DISTINCT task_answers AS a FROM {self.name} "
                                  f"WHERE task_answers IS NOT NULL", fetch=True):
            for task, cls in json.loads(r["a"]).items():
                found.setdefault(task, set()).add(cls)
        return {t: sorted(found[t]) for t in sorted(found)}

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self.query("GROUP BY status", (), "status, COUNT(*) AS n")}


def plain(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, (dt.date, dt.datetime)):
            v = v.isoformat()
        elif k == "is_ood" and v is not None:
            v = bool(v)
        out[k] = v
    return out
