"""The request history: every request made through tmlab is one row in a SQLite database.

The client records each request it sends (from plain code, ``%%tmchat``, the Explorer or a
sweep — the ``source`` column says which, see :func:`request_source`): what was asked, what
came back, how long it took, and the error if it failed. Each row is written in its own short
transaction, committed before ``chat()`` returns, so a kernel that dies right after a request
loses nothing that finished. The database is in WAL mode with a busy timeout, so several
threads and several kernels can write at once.

Never stored: the API key or any header. Messages and answers are scrubbed of the key in
force, in case it was pasted into a prompt. An answer with logprobs also keeps the response as
received (compressed, not a column of :func:`history`), so that it can be branched from in a
later session; not when the key is in the answer, where its tokens could spell it past a scrub.

Where: ``%tmconfig history=PATH|off``, else ``TMLAB_HISTORY`` (a path, or ``off``), else
``history.sqlite3`` in the user's data directory (``platformdirs``).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import sqlite3
import threading
import warnings
import weakref
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tmlab.errors import ParameterError, redact

if TYPE_CHECKING:
    import pandas as pd

    from tmlab.result import ChatResult

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "SOURCES",
    "HistoryWarning",
    "branch_origin",
    "current_source",
    "get_row",
    "history",
    "history_path",
    "record",
    "request_source",
    "stored_answer",
    "tree_rows",
]

SCHEMA_VERSION: Final = 4
"""Stored in ``PRAGMA user_version``; later columns are added by migration, never by
starting a new file."""

COLUMNS: Final = (
    "id",
    "time",
    "source",
    "base_url",
    "model",
    "messages",
    "params",
    "text",
    "reasoning",
    "finish_reason",
    "complete",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_s",
    "ttft_s",
    "tokens_per_s",
    "error",
    "sequence_logprob",
    "parent_id",
    "branch_position",
    "branch_token",
    "prefix_logprob",
    "cached_tokens",
)

SOURCES: Final = ("client", "magic", "explorer", "sweep", "probe")
"""Who sent a request. ``probe``: tmlab itself, finding out what a server can do
(:func:`tmlab.probe` and the continuation check), not the user's question."""

# The request body's fields that are not "parameters": who/what was asked and how the answer
# was transported (stream_options is added by the client to every stream).
_NOT_PARAMS: Final = frozenset({"model", "messages", "stream", "stream_options"})

# Schema migrations: MIGRATIONS[v] takes a database at version v to v + 1.
_CREATE: Final = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    source TEXT NOT NULL,
    base_url TEXT,
    model TEXT,
    messages TEXT,
    params TEXT,
    text TEXT,
    reasoning TEXT,
    finish_reason TEXT,
    complete INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    latency_s REAL,
    ttft_s REAL,
    tokens_per_s REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_model ON requests(model);
CREATE INDEX IF NOT EXISTS requests_source ON requests(source);
"""
# Version 2: branches. A branch's row names the row it branched from, at which position of
# that answer and with which token; sequence_logprob is the sum of the logprobs of the
# generated tokens (when the answer has logprobs), prefix_logprob that of the prefix a branch
# was forced to (the parent's tokens before the position, then the chosen token).
_BRANCHES: Final = """
ALTER TABLE requests ADD COLUMN sequence_logprob REAL;
ALTER TABLE requests ADD COLUMN parent_id INTEGER;
ALTER TABLE requests ADD COLUMN branch_position INTEGER;
ALTER TABLE requests ADD COLUMN branch_token TEXT;
ALTER TABLE requests ADD COLUMN prefix_logprob REAL;
CREATE INDEX IF NOT EXISTS requests_parent ON requests(parent_id);
"""
# Version 3: an answer's tokens. For an answer with logprobs, the response as received (JSON,
# zlib-compressed, the key scrubbed like every text): its tokens, their ids and alternatives,
# which a branch needs, so that `%%tmchat --branch ID:POS` works on an answer of an earlier
# session. Not a column of history(): see stored_answer().
_ANSWERS: Final = """
ALTER TABLE requests ADD COLUMN answer BLOB;
"""
# Version 4: the prompt tokens the server reused from its cache (usage.prompt_tokens_details.
# cached_tokens); NULL where the server did not say, and in rows recorded before version 4.
_CACHED: Final = """
ALTER TABLE requests ADD COLUMN cached_tokens INTEGER;
"""
MIGRATIONS: Final[tuple[str, ...]] = (_CREATE, _BRANCHES, _ANSWERS, _CACHED)

_source: contextvars.ContextVar[str] = contextvars.ContextVar("tmlab_source", default="client")
_branch: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tmlab_branch", default=None
)
_ready: set[Path] = set()  # databases whose schema is known to be current in this process
_keepers: list[sqlite3.Connection] = []
_ready_lock = threading.Lock()
_warned = False


class HistoryWarning(UserWarning):
    """The history could not be written; the request itself went through."""


@contextlib.contextmanager
def request_source(name: str) -> Iterator[None]:
    """Record the requests made inside this block with ``source=name``.

    A context variable: asyncio tasks created inside the block inherit it, threads do not
    (enter it inside the thread that sends).
    """
    if name not in SOURCES:
        raise ParameterError("source", f"source={name!r} is unknown", " | ".join(SOURCES))
    token = _source.set(name)
    try:
        yield
    finally:
        _source.reset(token)


@contextlib.contextmanager
def branch_origin(
    parent_id: int | None, position: int, token: str, prefix_logprob: float | None
) -> Iterator[None]:
    """Record the requests made inside this block as branches of row ``parent_id``."""
    token_ = _branch.set(
        {
            "parent_id": parent_id,
            "branch_position": position,
            "branch_token": token,
            "prefix_logprob": prefix_logprob,
        }
    )
    try:
        yield
    finally:
        _branch.reset(token_)


def current_source() -> str:
    """The source that requests made here are recorded with."""
    return _source.get()


def history_path() -> Path | None:
    """The database in force (``None``: the history is off)."""
    from tmlab.client.settings import session

    return session.history_path()


def _connect(path: Path) -> sqlite3.Connection:
    # One connection per operation: safe across threads, forks and kernels. In WAL mode with
    # synchronous=NORMAL a commit is in the log at once (a killed kernel loses nothing) but is
    # not fsynced (an OS crash could lose the last rows): a write costs well under a
    # millisecond instead of an fsync's several.
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA synchronous = NORMAL")
    if path not in _ready:
        with _ready_lock:
            if path not in _ready:
                _migrate(conn, path)
                _keep_open(path)
                _ready.add(path)
    return conn


def _keep_open(path: Path) -> None:
    """Hold one idle connection to ``path`` until exit.

    When the last connection to a WAL database closes, SQLite checkpoints the log into the
    database and deletes it, with fsyncs: without a keeper that would happen after every
    request.
    """
    keeper = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()  # joins the WAL
    _keepers.append(keeper)
    if len(_keepers) == 1:
        atexit.register(_close_keepers)


def _close_keepers() -> None:
    while _keepers:
        _keepers.pop().close()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")  # one kernel migrates at a time
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            # statement by statement: executescript() would commit the open transaction
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _open(path: Path) -> Iterator[sqlite3.Connection]:
    conn = _connect(path)
    try:
        yield conn
    finally:
        conn.close()


def _dumps(value: Any, secret: str | None) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return redact(text, secret) if secret else text


def _answer(result: ChatResult, secret: str | None) -> bytes | None:
    """The response to keep for a later branch: one whose answers have logprobs, and never
    one that holds the key. The key in an answer's text is scrubbed from the row; in the
    tokens it may be split across several, or spelled as ``bytes``, where no scrub finds it:
    such a response is not kept."""
    if not any(choice.has_logprobs for choice in result.choices):
        return None  # known without reading the tokens
    if secret:
        for choice in result.choices:
            spelled = b"".join(bytes(t.bytes or t.token.encode()) for t in choice.logprobs or [])
            seen = (choice.text, choice.reasoning or "", spelled.decode("utf-8", "replace"))
            if any(secret in text for text in seen):
                return None
    return zlib.compress(_dumps(result.raw, secret).encode("utf-8"))


def _scrub(text: str | None, secret: str | None) -> str | None:
    return redact(text, secret) if text and secret else text


def record(
    body: Mapping[str, Any],
    *,
    base_url: str | None,
    result: ChatResult | None = None,
    error: str | None = None,
    latency_s: float | None = None,
    secret: str | None = None,
) -> int | None:
    """Append one request to the history; return its id (``None`` when the history is off).

    ``body`` is the request body as sent, ``result`` what came back (possibly partial),
    ``error`` one line describing a failure. ``secret`` (the API key) is scrubbed from every
    stored text. A failure to write warns (:class:`HistoryWarning`) once and returns ``None``:
    it never fails the request.
    """
    global _warned
    path = history_path()
    if path is None:
        return None
    params = {k: v for k, v in body.items() if k not in _NOT_PARAMS}
    row: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "source": _source.get(),
        "base_url": base_url,
        "model": body.get("model"),
        "messages": _dumps(body.get("messages"), secret),
        "params": _dumps(params, secret),
        "error": _scrub(error, secret),
        "latency_s": latency_s,
        **(_branch.get() or {}),
    }
    if row.get("branch_token") is not None:
        row["branch_token"] = _scrub(row["branch_token"], secret)
    if result is not None:
        usage, timing = result.usage, result.timing
        row.update(
            model=row["model"] or result.model,
            text=_scrub(result.text, secret),
            reasoning=_scrub(result.reasoning, secret),
            finish_reason=result.finish_reason,
            complete=int(result.complete and error is None),
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            latency_s=timing.latency_s if timing.latency_s is not None else latency_s,
            ttft_s=timing.ttft_s,
            tokens_per_s=timing.tokens_per_s,
            sequence_logprob=result.sequence_logprob,
        )
        row["answer"] = _answer(result, secret)
    else:
        row["complete"] = 0
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open(path) as conn:
            cursor = conn.execute(
                f"INSERT INTO requests ({names}) VALUES ({marks})", tuple(row.values())
            )
            return cursor.lastrowid
    except (sqlite3.Error, OSError) as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"tmlab could not write its history to {path}: {exc} "
                "(requests still work; %tmconfig history=off silences this)",
                HistoryWarning,
                stacklevel=3,
            )
        return None


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for name in ("messages", "params"):
        if out.get(name) is not None:
            out[name] = json.loads(out[name])
    if out.get("complete") is not None:
        out["complete"] = bool(out["complete"])
    return out


def _query(sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
    path = history_path()
    if path is None or not path.exists():
        return []
    with _open(path) as conn:
        conn.row_factory = sqlite3.Row
        return [_decode(r) for r in conn.execute(sql, args)]


def history(
    n: int | None = None, model: str | None = None, source: str | None = None
) -> pd.DataFrame:
    """The logged requests as a DataFrame, oldest first: the last ``n`` (all by default),
    optionally only those of one ``model`` or ``source``. ``messages`` and ``params`` are
    decoded to Python objects."""
    import pandas as pd

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ParameterError("n", f"n={n!r}", "an int ≥ 0, or None for all")
    if source is not None and source not in SOURCES:
        raise ParameterError("source", f"source={source!r} is unknown", " | ".join(SOURCES))
    where, args = [], []
    if model is not None:
        where.append("model = ?")
        args.append(model)
    if source is not None:
        where.append("source = ?")
        args.append(source)
    sql = "SELECT " + ", ".join(COLUMNS) + " FROM requests"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if n is not None:
        sql += f" LIMIT {n}"
    rows = _query(sql, tuple(args))[::-1]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    path = history_path()
    df.attrs["notes"] = {
        "history": str(path) if path else "off (%tmconfig history=PATH or TMLAB_HISTORY)",
        "params": "the request body as sent, minus model, messages, stream and stream_options",
        "time": "UTC, when the request was recorded (after its answer ended)",
    }
    return df


def get_row(id: int) -> dict[str, Any] | None:
    """One logged request as a dict (``messages``/``params`` decoded), or ``None``."""
    rows = _query("SELECT " + ", ".join(COLUMNS) + " FROM requests WHERE id = ?", (int(id),))
    return rows[0] if rows else None


def stored_answer(id: int) -> dict[str, Any] | None:
    """Row ``id`` with the response it stored (``raw``), or ``None`` when it stored none: an
    answer without logprobs, or one recorded before tmlab kept them (schema version 3)."""
    rows = _query(
        "SELECT " + ", ".join(COLUMNS) + ", answer FROM requests WHERE id = ? "
        "AND answer IS NOT NULL",
        (int(id),),
    )
    if not rows:
        return None
    row = rows[0]
    row["raw"] = json.loads(zlib.decompress(row.pop("answer")))
    return row


# -- this session's results, by history id (a branch of `%%tmchat --branch ID:POS`) ---------

_results: weakref.WeakValueDictionary[int, ChatResult] = weakref.WeakValueDictionary()


def remember(res: ChatResult) -> None:
    """Keep a weak reference to ``res`` under its history id (the client calls it when it
    records a request)."""
    if res.history_id is not None:
        _results[res.history_id] = res


def forget_results() -> None:
    """Forget this session's results, as a new kernel would (rows are kept)."""
    _results.clear()


def recalled(id: int) -> ChatResult | None:
    """This session's result of row ``id``, while it is still in memory (a variable,
    ``Out[n]``, the Explorer), else None."""
    return _results.get(int(id))


def tree_rows(id: int) -> list[dict[str, Any]]:
    """The rows of the branch tree that holds row ``id``, each with its ``depth``.

    The root is the oldest ancestor still in the history; rows come root first, then by
    depth and id. ``[]`` when there is no row ``id``.
    """
    cols = ", ".join("r." + c for c in COLUMNS)
    sql = f"""
        WITH RECURSIVE
        up(id, parent_id, n) AS (
            SELECT id, parent_id, 0 FROM requests WHERE id = ?
            UNION ALL
            SELECT r.id, r.parent_id, up.n + 1 FROM requests r JOIN up ON r.id = up.parent_id
        ),
        root(id) AS (SELECT id FROM up ORDER BY n DESC LIMIT 1),
        down(id, depth) AS (
            SELECT id, 0 FROM root
            UNION ALL
            SELECT r.id, down.depth + 1 FROM requests r JOIN down ON r.parent_id = down.id
        )
        SELECT {cols}, down.depth AS depth FROM down JOIN requests r ON r.id = down.id
        ORDER BY down.depth, r.id
    """
    return _query(sql, (int(id),))
