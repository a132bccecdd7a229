"""`python -m pipeline COMMAND`: the deployed system from the command line.

    python -m pipeline predict   --bundle BUNDLE --source DIR_OR_MANIFEST --table predictions.db
    python -m pipeline produce   --source DIR_OR_MANIFEST --date yesterday --tz Asia/Seoul --redis redis://host:6379/0
    python -m pipeline produce   --source DIR_OR_MANIFEST --from 2026-11-01 --to 2026-11-20
    python -m pipeline consume   --bundle BUNDLE --table URL --redis URL --exit-when-empty
    python -m pipeline redrive   --redis URL
    python -m pipeline trim      --redis URL
    python -m pipeline.health    --heartbeat /tmp/heartbeat --max-age 120 [--ready]   (a probe: no torch)
    python -m pipeline query     --table URL --date today --labels dirt defect
    python -m pipeline query     --table URL --date today --answer defect=defect
    python -m pipeline review    --table URL --source DIR [--port 8000] [--read-only]   (docs/review.md)
    python -m pipeline export-reviews --table URL --out DIR

Days are YYYY-MM-DD, `today` or `yesterday` in --tz (an IANA time zone, default UTC), which also
dates a file by its modification time. Every server/table flag also reads an environment variable
(shown in --help), so a container needs only the environment: PIPELINE_BUNDLE, PIPELINE_TABLE,
PIPELINE_TABLE_NAME, PIPELINE_SOURCE, REDIS_URL, PIPELINE_STREAM, PIPELINE_GROUP, PIPELINE_TZ,
PIPELINE_HEARTBEAT. Redis URLs: redis://[:PASSWORD@]host:port/db, or rediss:// for TLS (add
?ssl_ca_certs=/path/ca.pem to trust a private CA).

The model is a release bundle (`python -m models.release CKPT --out bundles/`, pipeline/bundle.py):
serving verifies it, reads nothing else and runs without torch. `--checkpoint CKPT` instead of
--bundle is the training environment's shortcut: it serves the bundle released from that
checkpoint, releasing it first into --bundles (default: bundles/ beside the checkpoint) when there
is none, which needs torch and the training data (--data).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys

from pipeline.queue_defaults import GROUP, MAX_OUTAGE_S, MESSAGE_BATCH, PUBLISHED_TTL_DAYS, STREAM, RedisOutage
from pipeline.table import DEFAULT_TABLE, DEFAULT_URL, redacted

ENV = {"bundle": "PIPELINE_BUNDLE", "checkpoint": "PIPELINE_CHECKPOINT", "bundles": "PIPELINE_BUNDLES",
       "table": "PIPELINE_TABLE", "table_name": "PIPELINE_TABLE_NAME",
       "source": "PIPELINE_SOURCE", "redis": "REDIS_URL", "stream": "PIPELINE_STREAM", "group": "PIPELINE_GROUP",
       "tz": "PIPELINE_TZ", "heartbeat": "PIPELINE_HEARTBEAT"}


def env_arg(p, flag: str, default=None, help: str = "", **kw):
    dest = flag.lstrip("-").replace("-", "_")
    var = ENV[dest]
    value = os.environ.get(var, default)
    p.add_argument(flag, default=value, required=value is None, help=f"{help} (env {var})".strip(), **kw)


def day_flags(p, default=None, span=True):
    """--date (and --from/--to) as given; `days` resolves them once --tz is known."""
    p.add_argument("--date", help=f"captured day: YYYY-MM-DD, today or yesterday (default {default or 'every day'})")
    if span:
        p.add_argument("--from", dest="first", metavar="DAY", help="first captured day of a range (with --to)")
        p.add_argument("--to", dest="last", metavar="DAY", help="last captured day of the range (default today)")
    env_arg(p, "--tz", "UTC", help="time zone of today/yesterday and of file modification dates")
    p.set_defaults(default_day=default)


# produce --date DAY publishes the files of DAY and of the LOOK_BACK_DAYS - 1 days before it that
# are not yet published: a file dated yesterday that arrives after the nightly run is published by
# the next night's. Within the published sets' TTL (30 days), so a file is never published twice.
LOOK_BACK_DAYS = 7


def days(args) -> list[str] | None:
    """The days of --date (with the --look-back days before it, for produce) or of --from/--to."""
    from pipeline.sources import SourceError, day_range, resolve_day
    first, last = getattr(args, "first", None), getattr(args, "last", None)
    if first or last:
        if args.date:
            raise SourceError("give --date or --from/--to, not both")
        if getattr(args, "look_back", None) is not None:
            raise SourceError("--look-back goes with --date; with --from/--to give the whole range")
        if not first:
            raise SourceError("--to needs --from")
        return day_range(resolve_day(first, args.tz, "--from"), resolve_day(last or "today", args.tz, "--to"))
    day = args.date or args.default_day
    if day is None:
        return None
    last = resolve_day(day, args.tz)
    back = (args.look_back or LOOK_BACK_DAYS) if hasattr(args, "look_back") else 1  # produce alone looks back
    if back > PUBLISHED_TTL_DAYS:
        raise SourceError(f"--look-back {back}: at most {PUBLISHED_TTL_DAYS} days, how long the published sets "
                          f"are kept (older days: --from/--to with --table, which skips what has a row)")
    return day_range((dt.date.fromisoformat(last) - dt.timedelta(days=back - 1)).isoformat(), last)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got '{text}'")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number; got '{text}'")
    return value


def task_answer(text: str) -> tuple[str, str]:
    task, eq, cls = text.partition("=")
    if not (eq and task and cls):
        raise argparse.ArgumentTypeError(f"give TASK=CLASS, e.g. defect=defect; got '{text}'")
    return task, cls


def model_flags(p):
    from pipeline.model import DEFAULT_TOP2, DEVICES
    from pipeline.outputs import RANKINGS, SCORER_NAMES
    p.add_argument("--bundle", default=os.environ.get(ENV["bundle"]),
                   help="a release bundle folder (python -m models.release) (env PIPELINE_BUNDLE)")
    p.add_argument("--checkpoint", default=os.environ.get(ENV["checkpoint"]),
                   help="instead of --bundle: a train.py checkpoint, served through its bundle (released first "
                        "when --bundles has none; needs torch and the training data) (env PIPELINE_CHECKPOINT)")
    p.add_argument("--bundles", default=os.environ.get(ENV["bundles"]),
                   help="with --checkpoint: the folder of bundles it looks in and releases into (default: bundles/ "
                        "beside the checkpoint) (env PIPELINE_BUNDLES)")
    p.add_argument("--data", help="with --checkpoint: the dataset a release fits the OOD filter on "
                                  "(default: the checkpoint's training data)")
    p.add_argument("--score", choices=list(SCORER_NAMES),
                   help="OOD score, higher = in-distribution (default: the bundle's, chosen on val + ood_val at release)")
    p.add_argument("--threshold", type=finite_float,
                   help="OOD threshold; overrides the bundle's for the score (set on val at the release's TPR)")
    p.add_argument("--device", choices=list(DEVICES), default="auto",
                   help="auto (ONNX Runtime's CUDA provider when installed, else the CPU) | cpu | cuda (default auto)")
    p.add_argument("--streams", type=positive_int,
                   help="in-process decode -> infer streams, each decoding and inferring whole batches (default: "
                        "two per core, at most 8, when images are decoded in-process (up to 8 cores); 1 beside "
                        "decode processes; pipeline.batch.default_streams)")
    p.add_argument("--threads", type=positive_int,
                   help="ONNX Runtime intra-op threads (default: the cores shared out over the streams, so 1 per "
                        "stream; pipeline.batch.default_threads)")
    p.add_argument("--top2", choices=list(RANKINGS), default=os.environ.get("PIPELINE_TOP2", DEFAULT_TOP2),
                   help="top-2 rule: coherent (default; a label the top-1 excludes, a task's other class, is "
                        "skipped, so the second label can be true beside the first) or plain (by score, the "
                        "paper's); written into each row's top2_rule (env PIPELINE_TOP2)")


def table_flags(p, required=True):
    env_arg(p, "--table", DEFAULT_URL if not required else None,
            help="database URL: postgresql://... or a SQLite file (sqlite:///x.db or a path)")
    env_arg(p, "--table-name", DEFAULT_TABLE, help="table name (task-centric: one per model)")


def redis_flags(p):
    env_arg(p, "--redis", "redis://127.0.0.1:6379/0", help="Redis URL")
    env_arg(p, "--stream", STREAM, help="Redis stream of work")
    env_arg(p, "--group", GROUP, help="consumer group")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="batch mode: a folder or manifest into the prediction table")
    model_flags(p)
    env_arg(p, "--source", help="folder tree of images or manifest CSV (path[,captured_date,image_id])")
    day_flags(p)
    table_flags(p, required=False)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--workers", type=int, default=None,
                   help="processes decoding images (default: none up to 8 cores, where decode threads "
                        "overlap the forward; else cores/4)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("produce", help="queue mode: publish a day's (or a range of days') new images to the stream")
    env_arg(p, "--source", help="folder tree of images or manifest CSV")
    day_flags(p, "today")
    p.add_argument("--look-back", type=positive_int, metavar="DAYS",
                   help=f"with --date: also publish the files of the DAYS - 1 days before it that are not yet "
                        f"published (a file that arrived after an earlier run); 1: --date alone (default "
                        f"{LOOK_BACK_DAYS})")
    redis_flags(p)
    p.add_argument("--table", default=os.environ.get("PIPELINE_TABLE"),
                   help="also skip images that have a final row in this table URL; one whose file was not found or "
                        "could not be opened is published again (env PIPELINE_TABLE)")
    p.add_argument("--table-name", default=os.environ.get("PIPELINE_TABLE_NAME", DEFAULT_TABLE))

    p = sub.add_parser("consume", help="queue mode: predict messages of the stream until stopped")
    model_flags(p)
    table_flags(p, required=False)
    redis_flags(p)
    p.add_argument("--consumer", default=os.environ.get("HOSTNAME"), help="consumer name (default: host-pid)")
    p.add_argument("--batch-size", type=positive_int, default=MESSAGE_BATCH,
                   help="messages per read, shared out over the decode -> infer streams")
    p.add_argument("--block-ms", type=int, default=1000, help="XREADGROUP BLOCK per poll")
    p.add_argument("--min-idle-ms", type=int, default=60_000, help="reclaim messages pending this long")
    p.add_argument("--max-deliveries", type=positive_int, default=3, help="dead-letter a message delivered more often")
    p.add_argument("--max-idle", type=float, help="exit after this many seconds without messages")
    p.add_argument("--exit-when-empty", action="store_true", help="exit once nothing is queued or pending")
    p.add_argument("--max-backoff", type=float, default=5.0,
                   help="longest wait (s) between retries while Redis or the table is unreachable")
    p.add_argument("--max-outage", type=float, default=MAX_OUTAGE_S,
                   help="exit 1 once Redis has been unreachable this many seconds in a row")
    p.add_argument("--trim-interval", type=float, default=60.0,
                   help="trim acknowledged stream entries at most this often, in seconds (0: never)")
    env_arg(p, "--heartbeat", "", help="heartbeat file rewritten every loop, for `health` probes (empty: none)")

    p = sub.add_parser("trim", help="remove the stream entries every consumer group has acknowledged (prints JSON)")
    redis_flags(p)

    p = sub.add_parser("redrive", help="move dead letters back onto the stream (prints what it did as JSON)")
    redis_flags(p)
    p.add_argument("--count", type=int, help="only the oldest COUNT dead letters (default all)")

    p = sub.add_parser("query", help="the inspectors' query: a day's ok images whose top-2 holds LABELS "
                                     "and/or whose task answers are TASK=CLASS")
    table_flags(p, required=False)
    day_flags(p, "today", span=False)
    p.add_argument("--labels", nargs="+", help="top-2 labels to look for, e.g. dirt defect (this or --answer is "
                                                "required; without both the command lists what it can ask for)")
    p.add_argument("--answer", action="append", type=task_answer, metavar="TASK=CLASS",
                   help="images whose answer to the binary task TASK is CLASS, by the rule the release chose "
                        "for it (the row's task_answers), e.g. defect=defect; repeat for several, all must "
                        "hold; with --labels, both must")

    p = sub.add_parser("review", help="a web page over the table: overview, filtered thumbnails, corrections")
    table_flags(p, required=False)
    p.add_argument("--source", action="append", required=True,
                   help="folder the table's images were predicted from; repeat for several (images are read "
                        "only inside these)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--read-only", action="store_true", help="show the rows, accept no correction")
    p.add_argument("--reviewer", default=os.environ.get("USER", ""), help="the form's default reviewer name")

    p = sub.add_parser("export-reviews", help="the reviewed images as dataset folders (for data.concat add)")
    table_flags(p, required=False)
    p.add_argument("--out", required=True, help="folder to write (new or empty)")
    p.add_argument("--source", action="append", help="read images only inside these folders (default: each "
                                                     "row's source path as recorded)")
    p.add_argument("--splits", default="train=0.7,val=0.15,test=0.15",
                   help="split=share pairs the labelled images are shared out over (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return ap


def load_predictor(args):
    """The Predictor of --bundle (or of --checkpoint's bundle), its threshold set."""
    from pipeline.batch import default_threads
    from pipeline.model import Predictor, ServingError, bundle_for
    if bool(args.bundle) == bool(args.checkpoint):
        raise ServingError("give the model as --bundle DIR (a release bundle: python -m models.release CKPT) "
                           "or as --checkpoint CKPT, not both and not neither")
    path = args.bundle or bundle_for(args.checkpoint, args.bundles, args.data)
    workers = getattr(args, "workers", 0)  # consume decodes in-process
    return Predictor.load(path, args.score, args.threshold, args.top2, args.device,
                          args.threads or default_threads(workers, args.streams))


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from pipeline.table import PredictionTable
    if args.command == "predict":
        from pipeline.batch import run_batch
        from pipeline.sources import scan_source, warn_skipped
        pred = load_predictor(args)
        items, skipped = scan_source(args.source, days(args), args.tz)
        warn_skipped(skipped)
        table = PredictionTable(args.table, args.table_name)
        summary = run_batch(pred, table, items, args.batch_size, args.workers, not args.no_progress,
                            streams=args.streams)
        print(json.dumps({"model": pred.name, "version": pred.version, "bundle": str(pred.bundle.path),
                          "score": pred.score, "threshold": pred.threshold,
                          "table": f"{redacted(args.table)}#{args.table_name}", **summary,
                          "skipped": len(skipped)}))
    elif args.command == "produce":
        from pipeline.publish import produce
        table = PredictionTable(args.table, args.table_name) if args.table else None
        print(json.dumps(produce(args.redis, args.source, days(args), args.stream, args.group, table, tz=args.tz)))
    elif args.command == "consume":
        from pipeline.health import Heartbeat
        from pipeline.streams import Consumer
        heartbeat = Heartbeat(args.heartbeat or None, args.consumer or "")
        heartbeat.beat("starting", strict=True)  # replaces a previous container's file before the model loads
        pred = load_predictor(args)
        table = PredictionTable(args.table, args.table_name)
        c = Consumer(pred, table, args.redis, args.stream, args.group, args.consumer, args.batch_size,
                     args.block_ms, args.min_idle_ms, args.max_deliveries, args.max_idle, args.exit_when_empty,
                     args.max_backoff, args.max_outage, args.trim_interval, heartbeat, args.streams)
        print(json.dumps(c.run()))
    elif args.command == "trim":
        from pipeline.retention import trim
        from pipeline.streams import connect
        print(json.dumps(trim(connect(args.redis), args.stream)))

    elif args.command == "redrive":
        from pipeline.publish import redrive
        print(json.dumps(redrive(args.redis, args.stream, args.group, args.count)))
    elif args.command == "query":
        query(args, PredictionTable(args.table, args.table_name))
    elif args.command == "review":
        from pipeline.review.serve import serve
        serve(args)
    elif args.command == "export-reviews":
        from pipeline.review.export import export, parse_splits
        from pipeline.review.roots import Roots
        roots = Roots(args.source) if args.source else None
        print(json.dumps(export(open_existing(args), args.out, roots, parse_splits(args.splits), args.force)))
    return 0


def query(args, table) -> None:
    """`query`: the matching rows as JSON lines. Asked for a task that no row answers (a typo, a
    table of bundles released without task rules): one `error:` line naming the tasks there are;
    for a class no row answers the task with: no rows, and a note on stderr naming the classes."""
    where = f"{redacted(args.table)}#{args.table_name}"
    answers = args.answer or []
    if not args.labels and not answers:
        answered = "; ".join(f"{t}={'|'.join(c)}" for t, c in table.task_classes().items())
        sys.exit(f"error: query needs --labels (the top-2 labels to look for) or --answer TASK=CLASS; the labels in "
                 f"{where} are: {', '.join(table.labels()) or 'none yet'}; its task answers: {answered or 'none'}")
    rows = table.inspect(days(args)[0], args.labels or [], answers)
    if not rows and answers:
        known = table.task_classes()
        for task, cls in answers:
            if task not in known:
                sys.exit(f"error: --answer {task}={cls}: no row of {where} answers task '{task}'; the tasks "
                         f"answered there: {', '.join(known) or 'none (its bundles were released without task rules)'}")
            if cls not in known[task]:
                print(f"note: --answer {task}={cls}: no row of {where} answers '{task}' with '{cls}' "
                      f"(it answers {', '.join(known[task])})", file=sys.stderr)
    for row in rows:
        print(json.dumps(row))


def open_existing(args):
    """The table of --table, which must exist already (a typo must not create an empty SQLite file)."""
    from pipeline.table import PredictionTable, TableError, is_postgres, sqlite_path
    if not is_postgres(args.table) and not os.path.isfile(sqlite_path(args.table)):
        raise TableError(f"--table {args.table}: no such SQLite file; give the table `predict` wrote")
    return PredictionTable(args.table, args.table_name)


def run() -> None:
    try:
        sys.exit(main())
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        sys.exit(message)


# Errors a user can act on, by module: looked up only in modules already imported, so that the
# torch-free worker never imports torch (models/) to classify an error.
USER_ERRORS = {"data.images": ("ImageError",), "data.folders": ("SpecError",), "models.checkpoint": ("CheckpointError",),
               "models.release": ("ReleaseError",), "pipeline.bundle": ("BundleError",),
               "pipeline.model": ("ServingError",), "pipeline.health": ("HeartbeatError",),
               "pipeline.sources": ("SourceError",), "pipeline.table": ("TableError", "TableUnavailable"),
               "pipeline.review.roots": ("RootError",), "pipeline.review.export": ("ExportError",)}
# The web packages of `review` (requirements.txt; not in the worker image's requirements-serve.txt).
REVIEW_PACKAGES = ("starlette", "jinja2", "uvicorn", "markupsafe", "anyio", "h11", "click")


def user_error(e: Exception) -> str | None:
    """The one-line `error:` for a mistake or an outage the user can act on; None for a bug."""
    known = tuple(getattr(sys.modules[m], name) for m, names in USER_ERRORS.items() if m in sys.modules
                  for name in names)
    redis = sys.modules.get("redis")  # imported by the queue commands alone: without it no Redis error was raised
    if isinstance(e, (*known, RedisOutage)):
        return f"error: {e}"
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in REVIEW_PACKAGES:
        return (f"error: the review page needs {e.name}: pip install -r requirements.txt (or pip install "
                f"'efficient-ml-system[review]'); export-reviews runs without it")
    if isinstance(e, ModuleNotFoundError) and e.name == "redis":
        return ("error: queue mode (produce, consume, redrive, trim) needs the Redis client: "
                "pip install -r requirements-serve.txt (batch mode, predict and query, runs without it)")
    if redis is None:
        return None
    if isinstance(e, redis.OutOfMemoryError):
        return (f"error: Redis is full and refuses writes ({e}; maxmemory with noeviction): what was "
                f"published so far stays queued and a re-run publishes only the rest. Let consumers drain the "
                f"stream, run `python -m pipeline trim`, empty the dead-letter stream, or raise Redis's maxmemory "
                f"(deploy/k8s/redis.yaml)")
    if isinstance(e, redis.AuthenticationError):
        # A wrong password is not an outage: fail at once instead of retrying for ever.
        return (f"error: Redis refused the credentials of --redis / REDIS_URL ({e}); "
                f"check the password (redis://:PASSWORD@host:port/db or rediss:// for TLS)")
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError)):  # produce, redrive, trim: one try
        return (f"error: cannot reach Redis at --redis / REDIS_URL ({e}); check that it runs and the URL: "
                f"redis://host:port/db, rediss:// for TLS (?ssl_ca_certs=CA.pem for a private CA); then run again")
    return None
