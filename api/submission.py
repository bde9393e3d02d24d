"""What a submit (or validate) body asks for: the node, and optionally a job id, a webhook, a rerun.

Two body forms, told apart by their top level:

* the bare node, exactly what ``imagegen submit`` accepts (it has a ``type`` key);
* an envelope ``{"node": {...}, "job_id": "...", "webhook": {...}, "rerun": false}``: a top
  level with a ``node`` key and no ``type`` key (every node has ``type``, so no node is
  mistaken for an envelope). Unknown envelope keys are refused.

Every problem (envelope, node, job id, webhook, a secret reference the tenant may not
name) is reported at once, the node's exactly as the CLI reports them; validate and
submit apply the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from api.tenants import Tenant
from contract.errors import MISSING, NodeValidationError, Problem
from contract.node import ImageGenerationNode, validate_node
from contract.settings import Settings
from contract.tenancy import check_refs_of_tenant
from contract.webhooks import Webhook, parse_webhook

ENVELOPE_KEYS = ("node", "job_id", "webhook", "rerun", "context")
IDEMPOTENCY_KEY = "Idempotency-Key"


def is_envelope(data: dict[str, Any]) -> bool:
    return "node" in data and "type" not in data


@dataclass(frozen=True)
class Submission:
    node: bytes | dict[str, Any]  # the bare body's bytes (parsed as the CLI does) or the envelope's node
    parsed: ImageGenerationNode
    caller_id: str | None
    job_id: str | None  # the internal id, in the tenant's namespace
    webhook: Webhook | None
    rerun: bool
    context: dict[str, Any] | None = None  # user_query placeholders (contract/templates.py)


def parse_submission(
    raw: bytes,
    data: dict[str, Any],
    settings: Settings,
    tenant: Tenant,
    idempotency_key: str | None,
    *,
    resolve_webhook: bool = True,
) -> Submission:
    """The checked submission; NodeValidationError listing every problem."""
    problems: list[Problem] = []
    node: bytes | dict[str, Any] = raw
    caller_id: Any = None
    webhook_data: Any = None
    rerun: Any = False
    context: Any = None
    if is_envelope(data):
        for key in data:
            if key not in ENVELOPE_KEYS:
                problems.append(Problem(key, MISSING, f"is not a known field; allowed: {', '.join(ENVELOPE_KEYS)}"))
        node = data["node"]
        caller_id = data.get("job_id")
        webhook_data = data.get("webhook")
        rerun = data.get("rerun", False)
        context = data.get("context")
        if not isinstance(node, dict):
            problems.append(Problem("node", node, "must be the node JSON object"))
        if not isinstance(rerun, bool):
            problems.append(Problem("rerun", rerun, "must be true or false"))
    if idempotency_key is not None:
        if caller_id is not None and caller_id != idempotency_key:
            problems.append(Problem("job_id", caller_id, "differs from the Idempotency-Key header; send one of them"))
        caller_id = idempotency_key
    if caller_id is None and rerun is True:
        problems.append(Problem("rerun", True, "needs a job id (job_id or the Idempotency-Key header)"))

    parsed: ImageGenerationNode | None = None
    job_id: str | None = None
    webhook: Webhook | None = None
    node_problems: list[Problem] = []
    if isinstance(node, bytes | dict):
        try:
            parsed = validate_node(node, settings, context=context)
        except NodeValidationError as exc:
            node_problems = exc.problems
            problems.extend(node_problems)
    if caller_id is not None:
        try:
            job_id = tenant.job_id(caller_id)
        except NodeValidationError as exc:
            if idempotency_key is not None:  # the id came from the header: name the header, not job_id
                problems.extend(replace(p, field=IDEMPOTENCY_KEY) for p in exc.problems)
            else:
                problems.extend(exc.problems)
    if webhook_data is not None:
        try:
            webhook = parse_webhook(webhook_data, settings, resolve=resolve_webhook)
        except NodeValidationError as exc:
            problems.extend(exc.problems)
    if parsed is not None:  # the same rule the client applies at submit, so validate agrees with it
        try:
            check_refs_of_tenant(tenant.name, parsed.credential_refs(webhook), settings)
        except NodeValidationError as exc:
            problems.extend(exc.problems)
    if problems or parsed is None:
        # The detail's subject names what was wrong: the node, or the request around it (an id, a header).
        subject = "image_generation node" if len(problems) == len(node_problems) else "request"
        raise NodeValidationError(problems, subject=subject)
    return Submission(node, parsed, caller_id, job_id, webhook, rerun is True, context)
