"""``imagegen``: validate, submit and follow image_generation jobs.

Exit codes: 0 succeeded, 1 job failed, 2 invalid node or usage, 3 job
partial, 4 timed out or not found, 5 service unreachable, 6 job id conflict
(the id was used for a different node, or the job cannot be rerun now), 7 job
canceled.

``imagegen serve`` runs the HTTP API (api/, docs/api.md) with uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import redis

from contract.documents import too_large
from contract.errors import shown
from contract.job_ids import check_job_id
from contract.node import NodeValidationError, validate_node
from contract.redis_client import redacted_url
from contract.result import JobResult
from contract.settings import SettingsError, get_settings
from contract.webhooks import ResolverUnavailable
from producer.client import (
    ImageGenClient,
    JobConflict,
    JobCrashed,
    JobNotFound,
    JobTimeout,
    QueueUnavailable,
    SignError,
    check_timeout,
    validate_submission,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_PARTIAL, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5, 6
EXIT_CANCELED = 7
_STATUS_EXIT = {"succeeded": EXIT_OK, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED, "canceled": EXIT_CANCELED}


class UsageError(Exception):
    """A mistake on the command line (e.g. an unreadable file): exit 2, no traceback."""


def _seconds(text: str) -> float:
    """A ``--timeout``, as the client takes one (``check_timeout``): a usage error otherwise."""
    try:
        value = float(text)
        check_timeout(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (finite, 0 or more)") from None
    return value


MAX_SERVE_WORKERS = 64  # each is a whole API process with its own Redis pools


def _workers(text: str) -> int:
    """``serve --workers``: 1 to MAX_SERVE_WORKERS processes, a usage error otherwise (uvicorn took
    0 or -1 without a word, and a thousand would start a thousand processes)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_SERVE_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes from 1 to {MAX_SERVE_WORKERS}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        get_settings()
    except SettingsError as exc:  # names the variable and what is allowed; never a secret's value
        print(f"imagegen: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return int(args.run(args))
    except NodeValidationError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"imagegen: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except JobConflict as exc:
        print(f"imagegen: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except (JobNotFound, JobTimeout) as exc:
        print(f"imagegen: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except JobCrashed as exc:
        print(f"imagegen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except QueueUnavailable as exc:
        settings = get_settings()
        where = (
            f"the broker at {redacted_url(settings.broker_url)} (IMAGEGEN_BROKER_URL)"
            if exc.service == "broker" and settings.broker_url
            else f"the queue at {redacted_url(settings.redis_url)} (REDIS_URL)"
        )
        print(f"imagegen: cannot reach {where}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ResolverUnavailable as exc:
        print(f"imagegen: webhook.url: {exc}; try again shortly", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (redis.RedisError, OSError) as exc:
        url = redacted_url(get_settings().redis_url)
        print(f"imagegen: cannot reach the queue at {url} (REDIS_URL): {exc.__class__.__name__}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegen", description="Image Generation node jobs")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a node JSON file; nothing is enqueued")
    validate.add_argument("file", help="node JSON file, or - for standard input")
    validate.add_argument(
        "--context", metavar="FILE", help="JSON object filling user_query placeholders such as {{ llm_1.text }}"
    )
    validate.set_defaults(run=_validate)

    submit = sub.add_parser("submit", help="validate and enqueue a node; print the job id")
    submit.add_argument("file", help="node JSON file, or - for standard input")
    submit.add_argument(
        "--job-id", help="your own id (1-128 of A-Z a-z 0-9 . _ - and '/'); the same node again enqueues nothing"
    )
    submit.add_argument("--rerun", action="store_true", help="run a failed or partial job again under --job-id")
    submit.add_argument(
        "--context", metavar="FILE", help="JSON object filling user_query placeholders such as {{ llm_1.text }}"
    )
    submit.add_argument("--wait", action="store_true", help="wait and print the result document")
    submit.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait (default 600)")
    submit.set_defaults(run=_submit)

    status = sub.add_parser("status", help="a job's state and progress")
    status.add_argument("job_id")
    status.set_defaults(run=_status)

    webhooks = sub.add_parser("webhooks", help="how each of a job's webhook events was delivered")
    webhooks.add_argument("job_id")
    webhooks.set_defaults(run=_webhooks)

    result = sub.add_parser("result", help="a job's result document")
    result.add_argument("job_id")
    result.add_argument("--wait", action="store_true", help="wait until it is ready")
    result.add_argument("--timeout", type=_seconds, default=600.0, help="seconds to wait (default 600)")
    result.set_defaults(run=_result)

    sign = sub.add_parser("sign", help="a fresh signed URL for a stored image (signed by a worker)")
    sign.add_argument("uri", help="the image's durable uri from the result (s3://, gs://, https blob URL, file://)")
    sign.add_argument("--node", help="the job's node JSON file, when the image is in the node's own cloud")
    sign.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for a worker (default 30)")
    sign.set_defaults(run=_sign)

    cancel = sub.add_parser("cancel", help="ask a queued or running job to stop (a finished job is left as it is)")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=_cancel)

    serve = sub.add_parser("serve", help="run the HTTP API (uvicorn; docs/api.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--workers", type=_workers, default=1, help=f"uvicorn worker processes, 1-{MAX_SERVE_WORKERS} (default 1)"
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(run=_serve)
    return parser


def _read(path: str, *, refuse_large: bool = True) -> bytes | str:
    """The node document's bytes, reading at most IMAGEGEN_MAX_NODE_BYTES + 1 of them:
    a larger file (or stream) is refused without being loaded (or, ``refuse_large`` False, left
    to validate_node, which refuses it among the other problems); validate_node checks the rest."""
    limit = get_settings().max_node_bytes
    try:
        if path == "-":
            data: bytes | str = getattr(sys.stdin, "buffer", sys.stdin).read(limit + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit and refuse_large:
        raise too_large(limit)
    return data


def _validate(args: argparse.Namespace) -> int:
    context = None if args.context is None else _read(args.context)  # as submit reads it
    node = validate_node(_read(args.file), context=context)
    _out(f"valid: {node.inputs.variations} x {node.inputs.model} at {node.inputs.size}")
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    if args.rerun and args.job_id is None:
        raise UsageError("--rerun needs --job-id")
    text = _read(args.file, refuse_large=False)
    context = None if args.context is None else _read(args.context)  # the same bounds as a node
    validate_submission(text, args.job_id, context=context)  # every problem at once, before connecting
    client = ImageGenClient()
    handle = client.submit(text, job_id=args.job_id, rerun=args.rerun, context=context)
    if not handle.created:
        state = client.status(handle.job_id).state
        hint = "; --rerun runs it again" if state in ("failed", "partial") else ""
        print(
            f"imagegen: job {handle.job_id} was submitted before with this node and is {state}; "
            f"not enqueued again{hint}",
            file=sys.stderr,
        )
    if not args.wait:
        _out(handle.job_id)
        return EXIT_OK
    return _print_result(handle.wait(timeout=args.timeout))


def _status(args: argparse.Namespace) -> int:
    check_job_id(args.job_id)
    status = ImageGenClient().status(args.job_id)
    _print_json({**status.__dict__, "finished": status.finished})
    return EXIT_OK


def _webhooks(args: argparse.Namespace) -> int:
    check_job_id(args.job_id)
    _print_json([d.model_dump(mode="json") for d in ImageGenClient().webhook_deliveries(args.job_id)])
    return EXIT_OK


def _result(args: argparse.Namespace) -> int:
    check_job_id(args.job_id)
    client = ImageGenClient()
    if args.wait:
        return _print_result(client.wait(args.job_id, timeout=args.timeout))
    document = client.result(args.job_id)
    if document is None:
        status = client.status(args.job_id)
        print(
            f"imagegen: job {args.job_id} is {status.state} ({status.done}/{status.variations} done)", file=sys.stderr
        )
        return EXIT_TIMEOUT
    return _print_result(document)


def _sign(args: argparse.Namespace) -> int:
    node = _read(args.node) if args.node else None
    if node is not None:
        validate_node(node)  # before touching the network
    try:
        signed = ImageGenClient().sign(args.uri, node, timeout=args.timeout)
    except SignError as exc:
        print(f"imagegen: cannot sign {shown(args.uri)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _print_json({"uri": signed.uri, "url": signed.url, "url_expires_at": signed.url_expires_at})
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    """Exit 0 whether the job was asked to stop now or had finished already (the message says which)."""
    check_job_id(args.job_id)
    outcome = ImageGenClient().cancel(args.job_id)
    print(f"imagegen: {outcome.message}", file=sys.stderr)
    _print_json({"job_id": outcome.job_id, "state": outcome.state, "changed": outcome.changed})
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # only here: the other commands need no web server

    from api.tenants import Authenticator

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port (1-65535)")
    try:
        # Bad settings or tokens (none outside development): one line and exit 2 before uvicorn
        # starts; create_app checks the same in each uvicorn worker.
        Authenticator(get_settings())
    except ValueError as exc:  # pydantic's ValidationError and TokenConfigError are ValueErrors
        raise UsageError(f"cannot start the API: {exc}") from None
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=False,
        server_header=False,
    )
    return EXIT_OK


def _print_result(result: JobResult) -> int:
    _print_json(result.model_dump(mode="json"))
    return _STATUS_EXIT[result.status]


def _print_json(document: Any) -> None:
    _out(json.dumps(document, indent=2, default=str))


def _out(text: str) -> None:
    """A line of output. A reader that stopped reading (`| head`) is no error of the command,
    whose exit code still stands; Python would complain again when it flushes stdout at exit."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
