"""``assay``: the command line for Assay. Tables for people, ``--json`` for scripts.

Exit codes: 0 done · 1 unexpected error · 2 usage · 3 not authenticated or not allowed ·
4 not found · 5 request refused (invalid, conflict, too large) · 6 the awaited entity
ended failed or cancelled · 7 the service is unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import BaseModel

from assay import config
from assay.client import Client
from shared import errors

EXIT = {
    errors.Unauthenticated: 3,
    errors.Forbidden: 3,
    errors.NotFound: 4,
    errors.InvalidRequest: 5,
    errors.Invalid: 5,
    errors.Conflict: 5,
    errors.TooLarge: 5,
    errors.Unavailable: 7,
    errors.RateLimited: 7,
}
EXIT_FAILED = 6
KIND_BY_PREFIX = {"mdl": "models", "dst": "datasets", "evl": "evaluations", "key": "api_keys", "whk": "webhooks"}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain, aligned text table."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def emit(self, data: Any, *, columns: list[str] | None = None, rows: list[dict] | None = None) -> None:
        if self.as_json:
            print(json.dumps(_plain(data), indent=2, default=str))
        elif columns is not None:
            print(table(rows if rows is not None else _plain(data), columns))
        else:
            plain = _plain(data)
            if isinstance(plain, dict):
                width = max((len(k) for k in plain), default=0)
                for k, v in plain.items():
                    print(f"{k.ljust(width)}  {json.dumps(v, default=str) if isinstance(v, (dict, list)) else _cell(v)}")
            else:
                print(plain)


ENTITY_COLUMNS = {
    "models": ["id", "name", "task", "status", "reason", "parameter_count", "created_at"],
    "datasets": ["id", "name", "task", "status", "reason", "splits", "created_at"],
    "evaluations": ["id", "name", "status", "split", "model_id", "dataset_id", "progress", "reason"],
    "api_keys": ["id", "name", "status", "scopes", "expires_at"],
    "webhooks": ["id", "name", "url", "events", "created_at"],
}
EVENT_COLUMNS = ["created_at", "from_status", "to_status", "reason", "attempt", "component", "key_id", "message"]
DELIVERY_COLUMNS = ["id", "event_type", "entity_id", "status", "attempts", "next_attempt_at", "message"]


def cmd_login(args, out: Output) -> int:
    client = Client(args.url, args.api_key, progress=False)
    me = client.whoami()
    path = config.save(args.url, args.api_key)
    out.emit({"account": me.account, "account_name": me.account_name, "config": str(path)})
    return 0


def cmd_upload(args, out: Output) -> int:
    client = Client(progress=not args.json)
    labels = dict(kv.split("=", 1) for kv in args.label or [])
    resource = client.models if args.kind == "models" else client.datasets
    entity = resource.upload(args.path, name=args.name, labels=labels, task=args.task, shape=args.shape, wait=not args.no_wait)
    out.emit(entity)
    return EXIT_FAILED if entity.status == "failed" else 0


def cmd_evaluate(args, out: Output) -> int:
    client = Client(progress=not args.json)
    handles = client.evaluations.create(args.model, args.dataset, splits=args.split or None, config=args.config)
    if args.wait:
        for h in handles:
            h.wait()
    rows = [{**_plain(h.evaluation), "outcome": h.outcome} for h in handles]
    out.emit(rows, columns=["id", "split", "status", "outcome", "reason"], rows=rows)
    return EXIT_FAILED if any(r["status"] in ("failed", "cancelled") for r in rows) else 0


def cmd_tasks(args, out: Output) -> int:
    tasks = Client(progress=False).tasks()
    rows = [
        {
            "name": t.name,
            "dataset formats": ", ".join(t.dataset.formats),
            "config": ", ".join(t.config_schema.get("properties", {})),
            "metrics": len(t.metrics),
            "gpu": t.gpu,
        }
        for t in tasks
    ]
    out.emit(tasks, columns=list(rows[0]) if rows else [], rows=rows)
    return 0


def _config_arg(text: str) -> dict:
    """``--config '{"top_k": 3}'``: a JSON object (the model task's config)."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object, e.g. '{\"top_k\": 3}'")
    return value


def cmd_ls(args, out: Output) -> int:
    client = Client(progress=False)
    resource = getattr(client, args.kind.replace("-", "_"))
    labels = dict(kv.split("=", 1) for kv in args.label or [])
    items = []
    for item in resource.list(status=args.status, labels=labels or None):
        items.append(item)
        if len(items) >= args.limit:
            break
    out.emit(items, columns=ENTITY_COLUMNS[args.kind.replace("-", "_")])
    return 0


def _resource_for(client: Client, entity_id: str):
    kind = KIND_BY_PREFIX.get(entity_id.split("_", 1)[0])
    if kind is None:
        raise errors.InvalidRequest(f"{entity_id!r} is not an Assay id (mdl_…, dst_…, evl_…, key_…, whk_…)")
    return getattr(client, kind)


def cmd_show(args, out: Output) -> int:
    client = Client(progress=False)
    out.emit(_resource_for(client, args.id).get(args.id))
    return 0


def cmd_rm(args, out: Output) -> int:
    client = Client(progress=False)
    out.emit(_resource_for(client, args.id).delete(args.id))
    return 0


def cmd_cancel(args, out: Output) -> int:
    client = Client(progress=False)
    rows = [_plain(client.evaluations.cancel(evaluation_id)) for evaluation_id in args.ids]
    out.emit(rows, columns=["id", "status", "reason", "message"], rows=rows)
    return 0


def cmd_events(args, out: Output) -> int:
    client = Client(progress=False)
    rows = [_plain(e) for e in client.events(args.id)]
    out.emit(rows, columns=EVENT_COLUMNS, rows=rows)
    return 0


def cmd_webhooks(args, out: Output) -> int:
    client = Client(progress=False)
    if args.action == "create":
        created = client.webhooks.create(args.url, args.event, name=args.name)
        out.emit({**_plain(created.webhook), "secret": created.secret})
        if not out.as_json:
            print("\nthe secret is shown this once: keep it to verify deliveries (Assay-Signature)", file=sys.stderr)
    elif args.action == "ls":
        out.emit(list(client.webhooks.list()), columns=ENTITY_COLUMNS["webhooks"])
    elif args.action == "rm":
        out.emit(client.webhooks.delete(args.id))
    else:
        rows = []
        for delivery in client.webhooks.deliveries(args.id):
            rows.append(_plain(delivery))
            if len(rows) >= args.limit:
                break
        out.emit(rows, columns=DELIVERY_COLUMNS, rows=rows)
    return 0


# The instance columns ``assay results --instances`` shows: a classification's, or by the
# kind of a language model's evaluation.
INSTANCE_COLUMNS = {
    None: ["instance_id", "label", "prediction", "confidence", "correct"],
    "multiple_choice": ["instance_id", "answer", "prediction", "prediction_norm", "correct", "truncated"],
    "generate": ["instance_id", "output", "extracted", "correct", "truncated"],
    "perplexity": ["instance_id", "loglikelihood", "words", "bytes"],
}


def cmd_results(args, out: Output) -> int:
    client = Client(progress=False)
    if args.misclassified or args.instances:
        kind = client.evaluations.summary(args.id).get("kind")  # a language model's evaluation has one
        filters: dict[str, str] = {}
        if args.misclassified:
            # The most confident mistakes first, the ones worth a look (a language model's: in order).
            filters = {"correct": "false"} if kind else {"correct": "false", "order_by": "-confidence"}
        rows = []
        for row in client.evaluations.instances(args.id, page_size=min(args.limit, 500), **filters):
            rows.append(row)
            if len(rows) >= args.limit:
                break
        plain = [_plain(r) for r in rows]
        out.emit(plain, columns=INSTANCE_COLUMNS.get(kind, INSTANCE_COLUMNS[None]), rows=plain)
        return 0
    summary = client.evaluations.summary(args.id)
    if out.as_json:
        out.emit(summary)
        return 0
    headline = {k: v for k, v in summary.items() if v is not None and not isinstance(v, (dict, list))}
    out.emit(headline)
    if summary.get("kind"):  # a language model's: no classes
        return 0
    rows = _plain(client.evaluations.classes(args.id).classes)
    print()
    out.emit(rows, columns=["label", "precision", "recall", "f1", "support"], rows=rows)
    return 0


def cmd_leaderboard(args, out: Output) -> int:
    client = Client(progress=False)
    board = client.evaluations.leaderboard(args.dataset, split=args.split, metric=args.metric)
    if out.as_json:
        out.emit(board)
    else:
        print(f"{board.metric} ({'higher' if board.higher_is_better else 'lower'} is better)")
        out.emit(board.items, columns=["rank", "model_id", "model_name", "evaluation_id", "split", "value"])
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="assay", description="Evaluate models on datasets with Assay.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", help="store the API URL and key (file mode 0600)")
    login.add_argument("--url", required=True)
    login.add_argument("--api-key", required=True)
    login.set_defaults(fn=cmd_login)

    for kind in ("models", "datasets"):
        k = sub.add_parser(kind, help=f"upload {kind}")
        ksub = k.add_subparsers(dest="action", required=True)
        up = ksub.add_parser("upload", help="pack, upload and verify")
        up.add_argument("path")
        up.add_argument("--name", required=True)
        up.add_argument("--label", action="append", metavar="KEY=VALUE")
        up.add_argument("--task", help="the model task (see `assay tasks`; default image-classification)")
        if kind == "datasets":
            up.add_argument(
                "--shape",
                help="what the dataset holds, for a task with several (text-generation: multiple_choice, generate or perplexity)",
            )
        else:
            up.set_defaults(shape=None)
        up.add_argument("--no-wait", action="store_true", help="return once uploaded, before verification ends")
        up.set_defaults(fn=cmd_upload, kind=kind)

    ev = sub.add_parser("evaluate", help="evaluate a model on a dataset")
    ev.add_argument("model")
    ev.add_argument("dataset")
    ev.add_argument("--split", action="append", help="a split to evaluate (repeatable; default: all)")
    ev.add_argument("--config", type=_config_arg, help="the task's inference config as a JSON object (see `assay tasks`)")
    ev.add_argument("--wait", action="store_true", help="wait for completion with a progress bar")
    ev.set_defaults(fn=cmd_evaluate)

    tasks = sub.add_parser("tasks", help="the model tasks the service evaluates, their dataset formats, config and metrics")
    tasks.set_defaults(fn=cmd_tasks)

    ls = sub.add_parser("ls", help="list models, datasets, evaluations or api-keys")
    ls.add_argument("kind", choices=["models", "datasets", "evaluations", "api-keys"])
    ls.add_argument("--status")
    ls.add_argument("--label", action="append", metavar="KEY=VALUE")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(fn=cmd_ls)

    show = sub.add_parser("show", help="show one entity by id")
    show.add_argument("id")
    show.set_defaults(fn=cmd_show)

    res = sub.add_parser("results", help="an evaluation's summary and per-class table, or its instances")
    res.add_argument("id")
    res.add_argument("--misclassified", action="store_true", help="the misclassified instances, most confident first")
    res.add_argument("--instances", action="store_true", help="per-instance rows")
    res.add_argument("--limit", type=int, default=20)
    res.set_defaults(fn=cmd_results)

    lb = sub.add_parser("leaderboard", help="a dataset's evaluations ranked")
    lb.add_argument("dataset")
    lb.add_argument("--split")
    lb.add_argument("--metric")
    lb.set_defaults(fn=cmd_leaderboard)

    cancel = sub.add_parser("cancel", help="cancel evaluations (their jobs stop; finished shards are kept)")
    cancel.add_argument("ids", nargs="+", metavar="ID")
    cancel.set_defaults(fn=cmd_cancel)

    events = sub.add_parser("events", help="a model's, dataset's or evaluation's status changes, oldest first")
    events.add_argument("id")
    events.set_defaults(fn=cmd_events)

    hooks = sub.add_parser("webhooks", help="signed deliveries of status changes")
    hsub = hooks.add_subparsers(dest="action", required=True)
    create = hsub.add_parser("create", help="register a URL (prints its signing secret, once)")
    create.add_argument("url")
    create.add_argument("--event", action="append", required=True, help="e.g. evaluation.complete (repeatable)")
    create.add_argument("--name")
    hsub.add_parser("ls", help="list webhooks")
    for action, text in (("rm", "delete a webhook"), ("deliveries", "a webhook's deliveries, newest first")):
        h = hsub.add_parser(action, help=text)
        h.add_argument("id")
        if action == "deliveries":
            h.add_argument("--limit", type=int, default=50)
    hooks.set_defaults(fn=cmd_webhooks)

    rm = sub.add_parser("rm", help="delete an entity (stops its jobs, removes its data)")
    rm.add_argument("id")
    rm.set_defaults(fn=cmd_rm)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = Output(args.json)
    try:
        return args.fn(args, out)
    except errors.AssayError as e:
        code = next((c for cls, c in EXIT.items() if isinstance(e, cls)), 1)
        print(f"assay: {e.message}", file=sys.stderr)
        return code
    except ValueError as e:  # configuration problems (no URL) and bad KEY=VALUE pairs
        print(f"assay: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
