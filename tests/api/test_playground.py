"""The Playground in a real headless Chromium (Playwright driving Debian's ``chromium``), served by
a real ``imagegen serve`` with a real worker and Redis behind it.

Screenshots of each page state land in ``var/screenshots/`` (git-ignored) for a person to look at.
Skipped, with the reason shown, only where no Chromium can be had (``make test`` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import TOKENS, ApiServer, StartApi
from tests.conftest import ROOT, SEED_NODE, StartWorker, wait_for

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM = os.environ.get("IMAGEGEN_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium)", allow_module_level=True)

SCREENSHOTS = ROOT / "var" / "screenshots"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
WAIT_MS = 60_000
QUICK_MS = 15_000  # for what the page does in well under a second: a test of a broken page fails fast


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _page(
    browser: Any,
    server: ApiServer,
    viewport: dict[str, int] = DESKTOP,
    token: str | None = TOKENS["acme"],
    context: Any = None,
) -> Any:
    """A new tab on the Playground; ``context``: a browser profile shared with other tabs (local storage)."""
    if context is None:
        context = browser.new_context(viewport=viewport)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(f"{server.url}/playground/")
    if token is not None:
        page.locator("#token").fill(token)
        page.get_by_role("button", name="Use token").click()
    if token in TOKENS.values():
        page.wait_for_function("() => document.querySelectorAll('#f-model option').length > 0", timeout=WAIT_MS)
    return page


def _start(start_api: StartApi, start_worker: StartWorker, **worker_env: str) -> ApiServer:
    """The API first (its port is the images' public base URL), then a worker that links there."""
    server = start_api()
    start_worker({"IMAGEGEN_STORAGE_PUBLIC_BASE_URL": f"{server.url}/files", **worker_env}, concurrency=4)
    return server


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _paste_node(page: Any, node: dict[str, Any] | str) -> None:
    text = node if isinstance(node, str) else json.dumps(node, indent=2)
    page.locator("#node-json").fill(text)


def _run_enabled(page: Any, timeout: int = WAIT_MS) -> None:
    """Run enabled on a valid verdict (Run is enabled too while an edit's verdict is pending)."""
    page.wait_for_function(
        "() => !document.getElementById('run').disabled"
        " && document.getElementById('node-form').dataset.verdict === 'valid'",
        timeout=timeout,
    )


def _offline_node(**inputs: Any) -> dict[str, Any]:
    node: dict[str, Any] = json.loads(SEED_NODE.read_text())
    node["inputs"].update(model="offline_preview", **inputs)
    return node


def _shown_node(page: Any) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(page.locator("#node-json").input_value())
    return shown


def _all_problems(page: Any) -> str:
    """Every problem the form shows, at its fields and below them."""
    return str(
        page.evaluate(
            """() => [...document.querySelectorAll('#node-form .problem')].map((el) => el.textContent)
                .filter(Boolean).join(' | ')"""
        )
    )


def _posts(page: Any, path: str) -> list[Any]:
    """The page's POST requests to ``path`` from now on (Playwright request objects)."""
    seen: list[Any] = []
    page.on("request", lambda r: seen.append(r) if r.method == "POST" and r.url.endswith(path) else None)
    return seen


def test_pasting_the_seed_node_verbatim_fills_the_form(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    _paste_node(page, SEED_NODE.read_text())  # the documentation's node, byte for byte
    assert page.locator("#f-prompt").input_value() == "a girl driving a red car"
    assert page.locator("#f-model").input_value() == "gemini_3_image"
    assert page.locator("#f-size").input_value() == "1024x1024"
    assert page.locator("#f-variations").input_value() == "1"
    assert page.locator("#f-name").input_value() == "Test Image Generation"
    assert not page.locator("#f-use-cloud").is_checked()
    # Fields the form does not show (description, output_type) are kept, not dropped.
    kept = json.loads(page.locator("#node-json").input_value())
    assert kept["description"] == "Test image gen component" and kept["output_type"] == "json"
    assert page.errors == []


def test_seed_node_on_the_offline_model_runs_and_its_json_validates(
    browser: Any, start_api: StartApi, start_worker: StartWorker, tmp_path: Path
) -> None:
    server = _start(start_api, start_worker)
    page = _page(browser, server)
    seed = json.loads(SEED_NODE.read_text())
    _paste_node(page, seed)
    page.locator("#f-model").select_option("offline_preview")
    banner = page.locator("#banner").inner_text()
    assert "offline_preview" in banner and "test pattern" in banner
    _run_enabled(page)
    assert re.search(r"\$\d", page.locator("#estimate").inner_text())  # the cost before running
    _shot(page, "desktop-form")
    page.get_by_role("button", name="Run").click()

    tile = page.locator(".tile.done").first
    tile.wait_for(timeout=WAIT_MS)
    assert tile.locator("[data-fact=size]").inner_text() == "1024x1024"
    assert re.fullmatch(r"\$\d+(\.\d+)?", tile.locator("[data-fact=cost]").inner_text())
    image = tile.locator("img")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 1024", arg=image.element_handle(), timeout=WAIT_MS
    )
    page.locator(".run[data-status=succeeded]").wait_for(timeout=WAIT_MS)
    _shot(page, "desktop-result")

    page.get_by_role("button", name="Copy node JSON").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    node_file = tmp_path / "copied-node.json"
    node_file.write_text(copied)
    check = subprocess.run(
        [sys.executable, "-m", "producer.cli", "validate", str(node_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},  # validate needs no Redis
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(copied)["inputs"]["model"] == "offline_preview"

    # Recent runs survive a reload (local storage) and reopen from their job id.
    page.reload()  # the token is kept for the tab (session storage): not asked again
    page.get_by_role("button", name="Reopen").first.click()
    page.locator(".run[data-status=succeeded] .tile.done").first.wait_for(timeout=WAIT_MS)
    assert page.errors == []


def test_an_unsupported_size_shows_the_api_message_at_the_size_field(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    node = json.loads(SEED_NODE.read_text())
    node["inputs"]["size"] = "999x999"
    _paste_node(page, node)
    problem = page.locator('[data-problem-for="inputs.size"]')
    problem.wait_for(state="visible", timeout=WAIT_MS)
    message = problem.inner_text()
    api_problems = server.client().post("/v1/validate", json=node).json()["problems"]
    assert any(p["field"] == "inputs.size" and p["message"] in message for p in api_problems), (message, api_problems)
    assert page.locator("#f-size").get_attribute("aria-invalid") == "true"
    assert page.locator("#run").is_disabled()


def test_a_raw_secret_is_never_sent(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.post_data or ""))
    page.locator("#f-use-cloud").check()
    page.locator("#f-cloud-provider").select_option("aws")
    page.locator("#f-aws_bucket").fill("acme-images")
    page.locator("#f-aws_credentials").fill("AKIAEXAMPLESECRET/wJalrXUtnFEMI")
    problem = page.locator('[data-problem-for="inputs.aws_credentials"]')
    problem.wait_for(state="visible", timeout=WAIT_MS)
    assert "raw secret" in problem.inner_text()
    page.wait_for_timeout(600)  # past the validation debounce
    assert page.locator("#run").is_disabled()
    assert not any("AKIAEXAMPLESECRET" in body for body in requests)


def test_four_variations_with_one_failure_show_three_images_and_the_error(
    browser: Any, start_api: StartApi, start_worker: StartWorker
) -> None:
    server = _start(start_api, start_worker, IMAGEGEN_OFFLINE_FAILURES="2:permanent")
    page = _page(browser, server, viewport=PHONE)
    node = json.loads(SEED_NODE.read_text())
    node["inputs"].update(model="offline_preview", variations=4)
    _paste_node(page, node)
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.locator(".run[data-status=partial]").wait_for(timeout=WAIT_MS)
    assert page.locator(".tile.done").count() == 3
    failed = page.locator(".tile.failed")
    assert failed.count() == 1
    assert "permanent" in failed.inner_text()
    _shot(page, "phone-partial")
    # Usable at 375 px: nothing wider than the screen.
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width


def test_cancel_during_a_slow_run_ends_it_canceled(
    browser: Any, start_api: StartApi, start_worker: StartWorker
) -> None:
    server = start_api()
    start_worker(
        {"IMAGEGEN_STORAGE_PUBLIC_BASE_URL": f"{server.url}/files", "IMAGEGEN_OFFLINE_LATENCY_S": "3"}, concurrency=1
    )
    page = _page(browser, server)
    node = json.loads(SEED_NODE.read_text())
    node["inputs"].update(model="offline_preview", variations=6)
    _paste_node(page, node)
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.locator(".tile.running").first.wait_for(timeout=WAIT_MS)
    page.get_by_role("button", name="Cancel").click()
    page.locator(".run[data-status=canceled]").wait_for(timeout=WAIT_MS)
    assert page.locator(".tile.done").count() < 6
    assert page.locator(".tile.canceled").count() >= 1
    _shot(page, "desktop-canceled")


def test_a_wrong_token_is_reported_and_asked_again(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server, token="not-a-token")
    page.locator("#auth").wait_for(state="visible", timeout=WAIT_MS)
    assert "refused" in page.locator("#auth-message").inner_text()
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function("() => document.querySelectorAll('#f-model option').length > 0", timeout=WAIT_MS)
    assert page.locator("#auth").is_hidden()


def test_side_by_side_runs_two_seeds_and_shows_time_and_cost(
    browser: Any, start_api: StartApi, start_worker: StartWorker
) -> None:
    server = _start(start_api, start_worker)
    page = _page(browser, server)
    node = json.loads(SEED_NODE.read_text())
    node["inputs"].update(model="offline_preview", seed=7)
    _paste_node(page, node)
    page.locator("#f-compare").check()
    page.locator("#f-compare-model").select_option("offline_preview")
    page.locator("#f-compare-seed").fill("8")
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    panels = page.locator(".run[data-status=succeeded]")
    page.wait_for_function(
        "() => document.querySelectorAll('.run[data-status=succeeded]').length === 2", timeout=WAIT_MS
    )
    seeds = sorted(panels.nth(i).locator("[data-fact=seed]").inner_text() for i in range(2))
    assert seeds == ["7", "8"]
    for i in range(2):
        summary = panels.nth(i).locator(".summary").inner_text()
        assert re.search(r"\d+\.\d\d s", summary) and "$" in summary, summary
    _shot(page, "desktop-side-by-side")


def test_every_control_has_a_label_and_is_reachable_by_keyboard(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter((el) => el.type !== 'hidden' && !(el.labels && el.labels.length))
            .map((el) => el.id || el.outerHTML.slice(0, 60))"""
    )
    assert unlabelled == []
    # Tab from the top reaches the prompt, then the model and size selects, in order.
    page.locator("#f-name").focus()
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order[:3] == ["f-prompt", "f-model", "f-size"], order


# --- regressions: each of these failed on the page before its fix ----------------------------


def test_unticking_use_cloud_drops_the_hidden_credential_and_run_works_again(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    page.locator("#f-use-cloud").check()
    page.locator("#f-cloud-provider").select_option("aws")
    page.locator("#f-aws_bucket").fill("acme-images")
    page.locator("#f-aws_credentials").fill("AKIAIOSFODNN7EXAMPLE")
    page.locator('[data-problem-for="inputs.aws_credentials"]').wait_for(state="visible", timeout=QUICK_MS)
    page.locator("#f-use-cloud").uncheck()
    _run_enabled(page, QUICK_MS)
    assert "raw secret" not in _all_problems(page)
    inputs = _shown_node(page)["inputs"]
    assert inputs["use_cloud"] is False and not [k for k in inputs if k.startswith("aws_")], inputs
    # Another provider: the first one's values, no longer shown, leave the node too.
    page.locator("#f-use-cloud").check()
    page.locator("#f-aws_bucket").fill("acme-images")
    page.locator("#f-cloud-provider").select_option("gcp")
    inputs = _shown_node(page)["inputs"]
    assert inputs["cloud_provider"] == "gcp" and not [k for k in inputs if k.startswith("aws_")], inputs
    assert page.locator("#f-aws_bucket").count() == 0
    assert page.errors == []


def test_a_pasted_raw_secret_goes_with_the_next_paste_and_is_never_sent(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    bodies: list[str] = []
    page.on("request", lambda request: bodies.append(request.post_data or ""))
    raw = {"cloud_provider": "aws", "aws_bucket": "b", "aws_credentials": "AKIAIOSFODNN7EXAMPLE"}
    _paste_node(page, _offline_node(use_cloud=True, **raw))
    page.locator('[data-problem-for="inputs.aws_credentials"]').wait_for(state="visible", timeout=QUICK_MS)
    _paste_node(page, SEED_NODE.read_text())
    _run_enabled(page, QUICK_MS)
    assert "raw secret" not in _all_problems(page)
    assert "aws_credentials" not in _shown_node(page)["inputs"]
    # In a node that does not use the cloud the field is not shown: the problem is named below the form.
    _paste_node(page, _offline_node(use_cloud=False, **raw))
    page.wait_for_function(
        "() => document.getElementById('form-problems').textContent.includes('inputs.aws_credentials')",
        timeout=QUICK_MS,
    )
    assert "raw secret" in page.locator("#form-problems").inner_text()
    assert page.locator("#run").is_disabled()
    page.wait_for_timeout(600)  # past the validation debounce
    assert not any("AKIAIOSFODNN7EXAMPLE" in body for body in bodies)


def test_side_by_side_with_an_invalid_second_seed_names_the_problem_and_follows_nothing(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    page = _page(browser, server)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    submitted = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node())
    page.locator("#f-compare").check()
    page.locator("#f-compare-model").select_option("offline_preview")
    page.locator("#f-compare-seed").fill("-5")
    # The second node is validated before a run: its problem is named and neither node is submitted.
    failure = page.locator("#compare-problems")
    failure.wait_for(timeout=QUICK_MS)
    text = failure.inner_text()
    assert "inputs.seed = -5" in text and "must be from 0" in text, text
    assert page.locator("#run").is_disabled()
    page.wait_for_timeout(1000)
    assert not [url for url in urls if "undefined" in url], urls
    assert submitted == [] and page.locator(".run").count() == 0
    assert page.locator("#recent li").count() == 0
    assert page.errors == []


def test_a_double_click_on_run_submits_one_job(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    posts = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node())
    _run_enabled(page)
    page.locator("#run").dblclick()
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    _run_enabled(page, QUICK_MS)  # enabled again once the submit returned
    page.wait_for_timeout(500)
    assert len(posts) == 1, [p.headers for p in posts]
    key = posts[0].headers.get("idempotency-key")
    assert key and page.locator(".run").get_attribute("data-job-id") == key
    # A retried POST (same key, same node) is the same job, not a second one.
    again = server.client().post(
        "/v1/jobs", content=posts[0].post_data, headers={"Idempotency-Key": key, "Content-Type": "application/json"}
    )
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["job_id"] == key


def test_cancel_acts_only_on_the_run_shown(browser: Any, start_api: StartApi) -> None:
    server = start_api()  # no worker: both jobs wait queued, so either could still be canceled
    page = _page(browser, server)
    _paste_node(page, _offline_node())
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    first = page.locator(".run").first.get_attribute("data-job-id")
    page.locator("#f-prompt").fill("a second prompt")
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.wait_for_function(
        "first => [...document.querySelectorAll('.run')].some((r) => r.dataset.jobId !== first)",
        arg=first,
        timeout=QUICK_MS,
    )
    assert page.locator(".run").count() == 1
    second = page.locator(".run").first.get_attribute("data-job-id")
    page.get_by_role("button", name="Cancel").click()
    summary = page.locator(".run .summary")
    page.wait_for_function("() => /cancel/.test(document.querySelector('.run .summary').textContent)", timeout=QUICK_MS)
    http = server.client()
    assert http.get(f"/v1/jobs/{second}").json()["cancel_requested"] is True
    assert http.get(f"/v1/jobs/{first}").json()["cancel_requested"] is False
    assert summary.inner_text().count(str(second)) == 1, summary.inner_text()


def test_the_node_json_is_exactly_what_is_validated_and_submitted(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    validated = _posts(page, "/v1/validate")
    submitted = _posts(page, "/v1/jobs")
    odd = _offline_node(size="512x512", use_cloud="yes", seed="7x")
    odd["type"] = "text_generation"
    _paste_node(page, odd)
    seed_problem = page.locator('[data-problem-for="inputs.seed"]')
    seed_problem.wait_for(state="visible", timeout=QUICK_MS)
    assert '"7x"' in seed_problem.inner_text()
    assert json.loads(validated[-1].post_data) == odd and _shown_node(page) == odd
    problems = _all_problems(page)
    assert 'type = "text_generation"' in problems and "inputs.aws_bucket" in problems, problems  # "yes" is true
    assert page.locator("#run").is_disabled()
    # The seed node edited in the form keeps every key as written (cloud_provider with use_cloud false).
    _paste_node(page, SEED_NODE.read_text())
    page.locator("#f-model").select_option("offline_preview")
    page.locator("#f-prompt").fill("edited in the form")
    expected = json.loads(SEED_NODE.read_text())
    expected["inputs"].update(model="offline_preview", user_query="edited in the form")
    assert _shown_node(page) == expected
    _run_enabled(page)
    assert json.loads(validated[-1].post_data) == expected
    page.get_by_role("button", name="Run").click()
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    assert json.loads(submitted[-1].post_data) == expected


def test_recent_runs_are_per_tenant_hold_no_prompt_and_can_be_cleared(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    context = browser.new_context(viewport=DESKTOP)
    acme = _page(browser, server, context=context)
    _paste_node(acme, _offline_node(user_query="ACME secret product launch: Project Falcon"))
    _run_enabled(acme)
    acme.get_by_role("button", name="Run").click()
    acme.locator("#recent li").first.wait_for(timeout=QUICK_MS)
    stored = acme.evaluate("JSON.stringify(localStorage)")
    assert "Falcon" not in stored and "inputs" not in stored, stored
    globex = _page(browser, server, token=TOKENS["globex"], context=context)  # another tab, same browser
    globex.wait_for_timeout(1000)
    assert globex.locator("#recent li").count() == 0, globex.locator("#recent").inner_text()
    acme.reload()  # the token is kept for the tab: its list is back
    acme.locator("#recent li").first.wait_for(timeout=QUICK_MS)
    acme.get_by_role("button", name="Clear").click()
    assert acme.locator("#recent li").count() == 0
    acme.reload()
    acme.wait_for_timeout(1000)
    assert acme.locator("#recent li").count() == 0


def test_a_reload_mid_job_resumes_following_it(browser: Any, start_api: StartApi, start_worker: StartWorker) -> None:
    server = start_api()  # no worker yet: the job waits queued across the reload
    page = _page(browser, server)
    _paste_node(page, _offline_node())
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    job_id = page.locator(".run").first.get_attribute("data-job-id")
    page.reload()
    page.locator(f'.run[data-job-id="{job_id}"]').wait_for(timeout=QUICK_MS)
    assert page.locator("#cancel").is_enabled()
    start_worker({"IMAGEGEN_STORAGE_PUBLIC_BASE_URL": f"{server.url}/files"}, concurrency=1)
    page.locator(f'.run[data-job-id="{job_id}"][data-status=succeeded] .tile.done').wait_for(timeout=WAIT_MS)
    page.wait_for_function(
        "() => document.getElementById('recent').textContent.includes('succeeded')", timeout=QUICK_MS
    )
    assert page.locator("#cancel").is_disabled()
    assert page.errors == []


def test_a_later_failure_clears_earlier_messages_and_a_huge_prompt_is_named(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    validated = _posts(page, "/v1/validate")
    _paste_node(page, _offline_node())
    _run_enabled(page)
    assert "$" in page.locator("#estimate").inner_text()
    page.locator("#node-json").fill('{"name": ')
    page.locator("#json-problem").wait_for(state="visible", timeout=QUICK_MS)
    assert page.locator("#estimate").inner_text() == ""
    # A field problem does not outlive a later failure.
    _paste_node(page, _offline_node(size="999x999"))
    size_problem = page.locator('[data-problem-for="inputs.size"]')
    size_problem.wait_for(state="visible", timeout=QUICK_MS)
    page.locator("#node-json").fill('{"name": ')
    size_problem.wait_for(state="hidden", timeout=QUICK_MS)
    # A prompt past the limit is named at its field before anything is sent.
    _paste_node(page, _offline_node())
    _run_enabled(page)
    page.locator("#f-prompt").fill("y" * 300_000)
    prompt_problem = page.locator('[data-problem-for="inputs.user_query"]')
    prompt_problem.wait_for(state="visible", timeout=QUICK_MS)
    limit = server.client().get("/v1/models").json()["max_prompt_chars"]
    assert "300000" in prompt_problem.inner_text() and str(limit) in prompt_problem.inner_text()
    assert "IMAGEGEN_" not in page.locator("#form-problems").inner_text()
    assert page.locator("#estimate").inner_text() == "" and page.locator("#run").is_disabled()
    page.wait_for_timeout(600)
    assert all(len(request.post_data or "") < 300_000 for request in validated)


@pytest.mark.parametrize("width", [320, 375])
def test_long_unbroken_text_stays_inside_a_narrow_screen(browser: Any, start_api: StartApi, width: int) -> None:
    server = start_api()
    page = _page(browser, server, viewport={"width": width, "height": 800})
    node = _offline_node(user_query="a" * 300)
    node["name"] = "n" * 150
    _paste_node(page, node)
    _run_enabled(page)
    page.get_by_role("button", name="Run").click()
    page.locator("#recent li").first.wait_for(timeout=QUICK_MS)
    page.locator("#reopen-id").fill("x" * 120)  # an unknown id: its message names it
    page.get_by_role("button", name="Open", exact=True).click()
    page.wait_for_timeout(1000)
    _shot(page, f"narrow-{width}")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, scroll


def test_without_a_token_the_page_says_so_and_a_token_can_be_forgotten(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server, token=None)
    page.locator("#auth").wait_for(state="visible", timeout=QUICK_MS)
    page.wait_for_function(
        "() => !document.getElementById('banner').textContent.startsWith('Loading')", timeout=QUICK_MS
    )
    assert "token" in page.locator("#banner").inner_text()
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function("() => document.querySelectorAll('#f-model option').length > 0", timeout=QUICK_MS)
    assert page.locator("#auth").is_hidden()
    page.get_by_role("button", name="Forget token").click()
    page.locator("#auth").wait_for(state="visible", timeout=QUICK_MS)
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#run").is_disabled()


def test_a_problem_shows_field_value_and_message_and_leaves_no_stale_description(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    page = _page(browser, server)
    _paste_node(page, _offline_node(size="999x999"))
    size_problem = page.locator('[data-problem-for="inputs.size"]')
    size_problem.wait_for(state="visible", timeout=QUICK_MS)
    assert 'inputs.size = "999x999": is not a size' in size_problem.inner_text(), size_problem.inner_text()
    _paste_node(page, _offline_node())
    _run_enabled(page, QUICK_MS)
    prompt = page.locator("#f-prompt")
    prompt.fill("")
    page.locator('[data-problem-for="inputs.user_query"]').wait_for(state="visible", timeout=QUICK_MS)
    described = prompt.get_attribute("aria-describedby")
    assert described and page.locator(f"#{described}").inner_text()
    prompt.fill("ok now")
    _run_enabled(page, QUICK_MS)
    assert prompt.get_attribute("aria-describedby") is None and prompt.get_attribute("aria-invalid") is None


def test_a_model_the_workers_cannot_call_is_named_before_a_run(
    browser: Any, start_api: StartApi, start_worker: StartWorker
) -> None:
    # The spec's own node names gemini_3_image: with no key on the workers it validated, priced,
    # and failed on the first run with "no Gemini API key".
    server = _start(start_api, start_worker, GEMINI_API_KEY="", GOOGLE_API_KEY="")

    def reported() -> bool:  # the worker's first report (contract/providers.py) is made as it starts
        models = server.client("acme").get("/v1/models").json()["models"]
        return any(m["name"] == "gemini_3_image" and m["configured"] is False for m in models)

    assert wait_for(reported)
    page = _page(browser, server)
    _paste_node(page, SEED_NODE.read_text())
    page.wait_for_function(
        "() => document.getElementById('form-problems').textContent.includes('not configured')", timeout=WAIT_MS
    )
    said = page.locator("#form-problems").text_content() or ""
    assert said.startswith('inputs.model = "gemini_3_image": is not configured on this deployment\'s workers')
    assert "configured: offline_preview" in said
    assert page.errors == []


def test_while_the_json_cannot_be_read_the_form_is_locked_and_the_authors_text_kept(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    page = _page(browser, server)
    _paste_node(page, _offline_node())
    _run_enabled(page)
    # Half-way through an edit: the author's text does not parse yet.
    unfinished = json.dumps(_offline_node(user_query="a cat on a piano"), indent=2)[:-2] + ',\n  "description": "half'
    _paste_node(page, unfinished)
    page.locator("#json-problem").wait_for(state="visible", timeout=QUICK_MS)
    note = page.locator("#form-locked")
    note.wait_for(state="visible", timeout=QUICK_MS)
    assert "JSON" in note.inner_text()
    assert page.locator("#f-prompt").is_disabled() and page.locator("#f-model").is_disabled()
    assert page.locator("#node-fields").get_attribute("aria-describedby") == "form-locked"
    page.locator("#f-prompt").click(force=True)  # a disabled field takes no typing
    page.keyboard.type("typed in the form")
    page.wait_for_timeout(400)
    assert page.locator("#node-json").input_value() == unfinished
    assert page.locator("#run").is_disabled()
    _shot(page, "desktop-json-unreadable")
    # A new token reloads the catalog and reads the box again: the unfinished text is kept, still locked.
    page.get_by_role("button", name="Forget token").click()
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function(
        "() => !document.getElementById('banner').textContent.includes('Enter an API token')", timeout=QUICK_MS
    )
    page.wait_for_timeout(400)
    assert page.locator("#node-json").input_value() == unfinished and page.locator("#f-prompt").is_disabled()
    # Readable again: the form follows the JSON and can be edited.
    _paste_node(page, _offline_node(user_query="a cat on a piano"))
    note.wait_for(state="hidden", timeout=QUICK_MS)
    assert page.locator("#f-prompt").is_enabled()
    assert page.locator("#f-prompt").input_value() == "a cat on a piano"
    page.locator("#f-prompt").fill("a dog on a piano")
    assert _shown_node(page)["inputs"]["user_query"] == "a dog on a piano"
    _run_enabled(page)
    assert page.errors == []


def test_the_authors_text_is_sent_verbatim_so_the_api_judges_a_key_given_twice_and_a_huge_number(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    page = _page(browser, server)
    validated = _posts(page, "/v1/validate")
    submitted = _posts(page, "/v1/jobs")
    written = json.dumps(_offline_node(), indent=2)
    twice = written.replace('"size": "1024x1024"', '"size": "512x512", "size": "1024x1024"')
    assert twice.count('"size"') == 2
    _paste_node(page, twice)
    size_problem = page.locator('[data-problem-for="inputs.size"]')
    size_problem.wait_for(state="visible", timeout=QUICK_MS)
    assert "more than once" in size_problem.inner_text()
    assert validated[-1].post_data == twice
    assert page.locator("#run").is_disabled()
    huge = json.dumps(_offline_node(), indent=2).replace('"variations"', '"seed": 1e400,\n    "variations"')
    _paste_node(page, huge)
    seed_problem = page.locator('[data-problem-for="inputs.seed"]')
    seed_problem.wait_for(state="visible", timeout=QUICK_MS)
    assert "finite number" in seed_problem.inner_text()
    assert validated[-1].post_data == huge and page.locator("#run").is_disabled()
    # A credential given twice, the raw secret first: JSON.parse keeps the reference, the text holds both.
    secret = json.dumps(_offline_node(use_cloud=True, cloud_provider="aws", aws_bucket="b"), indent=2).replace(
        '"aws_bucket"', '"aws_credentials": "AKIAIOSFODNN7EXAMPLE", "aws_credentials": "env:ACME_AWS", "aws_bucket"'
    )
    _paste_node(page, secret)
    page.locator('[data-problem-for="inputs.aws_credentials"]').wait_for(state="visible", timeout=QUICK_MS)
    assert "raw secret" in _all_problems(page)
    page.wait_for_timeout(600)  # past the validation debounce
    assert not any("AKIAIOSFODNN7EXAMPLE" in (r.post_data or "") for r in validated)
    # A valid node as the author wrote it (compact, keys in their order) is validated and run as it is.
    compact = json.dumps(_offline_node(seed=3), separators=(",", ":"))
    _paste_node(page, compact)
    _run_enabled(page)
    assert validated[-1].post_data == compact
    page.get_by_role("button", name="Run").click()
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    assert submitted[-1].post_data == compact
    page.get_by_role("button", name="Copy node JSON").click()
    assert page.evaluate("navigator.clipboard.readText()") == compact
    assert page.errors == []


def test_side_by_side_defaults_to_a_configured_second_model_and_validates_it_before_running(
    browser: Any, start_api: StartApi, start_worker: StartWorker
) -> None:
    server = _start(start_api, start_worker, GEMINI_API_KEY="", GOOGLE_API_KEY="")

    def reported() -> bool:  # the worker's first report says which providers it can call
        models = server.client("acme").get("/v1/models").json()["models"]
        return any(m["name"] == "gemini_3_image" and m["configured"] is False for m in models)

    assert wait_for(reported)
    page = _page(browser, server)
    submitted = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node(seed=7))
    _run_enabled(page)
    page.locator("#f-compare").check()
    second = page.locator("#f-compare-model")
    chosen = second.evaluate("(select) => select.selectedOptions[0].textContent")
    assert "not configured" not in chosen and second.input_value() == "offline_preview", chosen
    assert "No other model is configured" in page.locator("#compare-note").inner_text()
    # The second node is validated before a run: its problem named, Run disabled, nothing submitted.
    page.locator("#f-compare-seed").fill("-5")
    problems = page.locator("#compare-problems")
    problems.wait_for(state="visible", timeout=QUICK_MS)
    assert "inputs.seed = -5" in problems.inner_text() and "must be from 0" in problems.inner_text()
    assert page.locator("#f-compare-seed").get_attribute("aria-invalid") == "true"
    assert page.locator("#f-compare-seed").get_attribute("aria-describedby") == "compare-problems"
    assert page.locator("#run").is_disabled()
    _shot(page, "desktop-side-by-side-second-invalid")
    page.locator("#f-seed").press("Enter")  # a run asked for now waits for the verdict: still refused
    page.wait_for_timeout(600)
    assert submitted == [] and page.locator(".run").count() == 0
    page.locator("#f-compare-seed").fill("8")
    _run_enabled(page)
    assert problems.is_hidden() and page.locator("#f-compare-seed").get_attribute("aria-invalid") is None
    page.get_by_role("button", name="Run").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.run[data-status=succeeded]').length === 2", timeout=WAIT_MS
    )
    assert len(submitted) == 2
    assert page.errors == []


def test_a_run_asked_for_right_after_an_edit_waits_for_its_verdict(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    submitted = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node())
    _run_enabled(page)
    # Enter at once after typing: no pause for the validation's debounce.
    page.locator("#f-seed").fill("5")
    page.locator("#f-seed").press("Enter")
    page.locator(".run").first.wait_for(timeout=QUICK_MS)
    assert len(submitted) == 1 and json.loads(submitted[0].post_data)["inputs"]["seed"] == 5
    # Run clicked right after a JSON edit (a click on the element, as a person's lands): the edited node runs.
    first = page.locator(".run").first.get_attribute("data-job-id")
    _paste_node(page, _offline_node(seed=6))
    page.evaluate("document.getElementById('run').click()")
    page.wait_for_function(
        "first => [...document.querySelectorAll('.run')].some((r) => r.dataset.jobId !== first)",
        arg=first,
        timeout=QUICK_MS,
    )
    assert len(submitted) == 2 and json.loads(submitted[1].post_data)["inputs"]["seed"] == 6
    # An edit that makes the node invalid: the run asked for at once is refused with the problem shown.
    page.locator("#f-seed").fill("-5")
    page.locator("#f-seed").press("Enter")
    page.locator('[data-problem-for="inputs.seed"]').wait_for(state="visible", timeout=QUICK_MS)
    page.wait_for_timeout(600)
    assert len(submitted) == 2
    assert page.errors == []


def test_a_node_too_large_for_the_api_names_its_size_the_limit_and_its_longest_field(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    page = _page(browser, server)
    node = _offline_node()
    node["description"] = "d" * 300_000
    _paste_node(page, node)
    page.wait_for_function(
        "() => document.getElementById('form-problems').textContent.includes('description')", timeout=QUICK_MS
    )
    said = page.locator("#form-problems").inner_text()
    size = len(json.dumps(node, indent=2).encode())
    assert f"{size:,}" in said and "262,144" in said, said  # IMAGEGEN_API_MAX_BODY_BYTES's default
    assert "300,000 characters" in said and "user_query" not in said and "unavailable" not in said, said
    assert page.locator("#run").is_disabled() and page.locator("#estimate").inner_text() == ""
    _shot(page, "desktop-node-too-large")
    # Within the body limit but past the node's own (IMAGEGEN_MAX_NODE_BYTES): the API's problem names
    # the document, the page the field to shorten.
    node["description"] = "d" * 100_000
    _paste_node(page, node)
    page.wait_for_function(
        "() => document.getElementById('form-problems').textContent.includes('100,000 characters')", timeout=QUICK_MS
    )
    said = page.locator("#form-problems").inner_text()
    assert "65536 bytes" in said and "longest field: description: 100,000 bytes (100,000 characters)" in said, said
    assert page.errors == []


@pytest.mark.parametrize("width", [375, 390])
def test_each_checkbox_stays_beside_its_label_on_a_phone(browser: Any, start_api: StartApi, width: int) -> None:
    server = start_api()
    page = _page(browser, server, viewport={"width": width, "height": 812})
    for box_id in ("f-use-cloud", "f-compare"):
        box = page.locator(f"#{box_id}").bounding_box()
        label = page.locator(f'label[for="{box_id}"]').bounding_box()
        assert box and label
        assert label["x"] >= box["x"] + box["width"], (box_id, box, label)  # to its right
        assert box["y"] <= label["y"] + 4 <= box["y"] + box["height"], (box_id, box, label)  # on its line
    _shot(page, f"phone-{width}-checkboxes")


RAW = "AKIAIOSFODNN7EXAMPLE"


def _bodies(page: Any) -> list[str]:
    """The bodies of every request the page sends from now on."""
    bodies: list[str] = []
    page.on("request", lambda request: bodies.append(request.post_data or ""))
    return bodies


def _judged(page: Any) -> str:
    """The verdict on the node just pasted (valid or invalid), once there is one."""
    page.wait_for_function(
        "() => ['valid', 'invalid'].includes(document.getElementById('node-form').dataset.verdict)", timeout=QUICK_MS
    )
    return str(page.locator("#node-form").get_attribute("data-verdict"))


def test_without_a_catalog_a_raw_secret_is_never_sent(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    # No token yet: the catalog (which names the credential fields) is not loaded.
    page = _page(browser, server, token=None)
    bodies = _bodies(page)
    page.locator("#auth").wait_for(state="visible", timeout=QUICK_MS)
    for field in ("aws_credentials", "azure_connection_string", "gcp_credentials"):
        _paste_node(page, _offline_node(use_cloud=True, cloud_provider="aws", **{field: f"{RAW}-{field}"}))
        assert _judged(page) == "invalid"
        assert f"inputs.{field}" in _all_problems(page) and "raw secret" in _all_problems(page), _all_problems(page)
        assert page.locator("#run").is_disabled()
    # GET /v1/models fails (with a token): still nothing with a raw secret is sent.
    page.route("**/v1/models", lambda route: route.fulfill(status=503, json={"detail": "catalog down"}))
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function("() => /catalog down/.test(document.getElementById('banner').textContent)", timeout=QUICK_MS)
    _paste_node(page, _offline_node(use_cloud=True, cloud_provider="gcp", gcp_credentials=RAW))
    assert _judged(page) == "invalid"
    assert "inputs.gcp_credentials" in _all_problems(page) and "raw secret" in _all_problems(page)
    page.wait_for_timeout(600)
    assert not [body for body in bodies if RAW in body]
    assert page.errors == []


def test_a_credential_that_only_looks_like_a_reference_is_never_sent(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    bodies = _bodies(page)
    _paste_node(page, _offline_node())
    _run_enabled(page)
    not_references = [
        f"env:{RAW}/wJalrXUtnFEMI+K7MDENG",  # env: names a variable: no / or +
        f"\ufeffenv:{RAW}",  # a BOM first (JavaScript's trim() would strip it)
        f" env:{RAW}",
        f"env:{RAW} ",
        f"vault:secret/imagegen/{RAW}",  # vault: needs #<key>
        f"vault:secret/../{RAW}#k",
        f"file:relative/{RAW}",
        f"file:/run/secrets/{RAW}?x",
        f"ENV:{RAW}",
    ]
    for value in not_references:
        _paste_node(page, _offline_node(use_cloud=True, cloud_provider="aws", aws_bucket="b", aws_credentials=value))
        assert _judged(page) == "invalid", value
        problem = page.locator('[data-problem-for="inputs.aws_credentials"]').inner_text()
        assert "raw secret" in problem, (value, problem)
    # A webhook's signing key is a reference too: in an envelope, or a "webhook" key in a bare node.
    envelope = {"node": _offline_node(), "webhook": {"url": "https://example.com/h", "secret": f"whsec_{RAW}"}}
    bare = {**_offline_node(), "webhook": {"url": "https://example.com/h", "secret": f"whsec_{RAW}"}}
    for text in (envelope, bare):
        _paste_node(page, text)
        assert _judged(page) == "invalid"
        assert "webhook.secret" in _all_problems(page), _all_problems(page)
    page.wait_for_timeout(600)  # past the validation debounce
    assert not [body for body in bodies if RAW in body]
    # Real references are sent, for the API to judge.
    for value in ("env:ACME_AWS", "vault:secret//imagegen/acme#aws", "file:/run/secrets/acme/aws.json"):
        _paste_node(page, _offline_node(use_cloud=True, cloud_provider="aws", aws_bucket="b", aws_credentials=value))
        _judged(page)
        assert any(value in body for body in bodies), value
    assert page.errors == []


def test_a_token_entered_after_unreadable_text_keeps_that_text(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server, token=None)
    page.locator("#auth").wait_for(state="visible", timeout=QUICK_MS)
    unfinished = '{\n  "name": "my own node",\n  "type": "image_generation",\n  "inputs": {\n    "model": "'
    _paste_node(page, unfinished)
    page.locator("#json-problem").wait_for(state="visible", timeout=QUICK_MS)
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function("() => document.querySelectorAll('#f-model option').length > 0", timeout=QUICK_MS)
    page.wait_for_timeout(500)
    assert page.locator("#node-json").input_value() == unfinished
    assert page.locator("#form-locked").is_visible() and page.locator("#f-prompt").is_disabled()
    assert page.errors == []


def test_a_double_enter_submits_one_job_and_cancel_reaches_it(browser: Any, start_api: StartApi) -> None:
    server = start_api()  # no worker: each job waits queued, so Cancel could reach it
    page = _page(browser, server)
    posts = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node())
    for gap in (300, 600):
        _run_enabled(page)
        page.wait_for_timeout(1000)  # a new action, not a repeat of the last one
        before = len(posts)
        page.locator("#f-name").focus()
        page.keyboard.press("Enter")
        page.wait_for_timeout(gap)
        page.keyboard.press("Enter")
        page.wait_for_timeout(1200)
        assert len(posts) == before + 1, (gap, len(posts) - before)
        assert page.locator(".run").count() == 1
        assert page.locator(".run").get_attribute("data-job-id") == posts[-1].headers.get("idempotency-key")
    # The run shown is the one submitted: Cancel reaches it.
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("() => /cancel/.test(document.querySelector('.run .summary').textContent)", timeout=QUICK_MS)
    job = posts[-1].headers["idempotency-key"]
    assert server.client().get(f"/v1/jobs/{job}").json()["cancel_requested"] is True
    assert page.errors == []


def test_a_second_seed_that_is_not_a_number_is_named_and_blocks_the_run(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    submitted = _posts(page, "/v1/jobs")
    _paste_node(page, _offline_node(seed=7))
    _run_enabled(page)
    page.locator("#f-compare").check()
    page.locator("#f-compare-model").select_option("offline_preview")
    page.locator("#f-compare-seed").click()
    page.keyboard.type("12e")
    problems = page.locator("#compare-problems")
    problems.wait_for(state="visible", timeout=QUICK_MS)
    assert "inputs.seed" in problems.inner_text() and "12e" in problems.inner_text(), problems.inner_text()
    assert page.locator("#f-compare-seed").get_attribute("aria-invalid") == "true"
    assert page.locator("#run").is_disabled()
    page.locator("#f-seed").press("Enter")
    page.wait_for_timeout(800)
    assert submitted == [] and page.locator(".run").count() == 0
    assert page.errors == []


def test_the_authors_second_model_survives_a_new_token_and_its_note_follows_the_pick(
    browser: Any, start_api: StartApi
) -> None:
    server = start_api()
    context = browser.new_context(viewport=DESKTOP)

    def unconfigured(route: Any) -> None:  # as a deployment with no AI model key reports it
        response = route.fetch()
        body = response.json()
        for model in body.get("models", []):  # a 401 has none
            if model["provider"] != "offline":
                model["configured"] = False
        route.fulfill(response=response, json=body)

    context.route("**/v1/models", unconfigured)
    page = _page(browser, server, context=context)
    _paste_node(page, _offline_node())
    _run_enabled(page)
    page.locator("#f-compare").check()
    note = page.locator("#compare-note")
    assert "No other model is configured" in note.inner_text()
    page.locator("#f-compare-model").select_option("gemini_3_1_image")
    page.wait_for_timeout(300)
    assert "No other model" not in note.inner_text(), note.inner_text()
    page.get_by_role("button", name="Forget token").click()
    page.locator("#token").fill(TOKENS["acme"])
    page.get_by_role("button", name="Use token").click()
    page.wait_for_function("() => !document.getElementById('auth').checkVisibility()", timeout=QUICK_MS)
    page.wait_for_function(
        "() => !document.getElementById('banner').textContent.includes('Enter an API token')", timeout=QUICK_MS
    )
    page.wait_for_timeout(500)
    assert page.locator("#f-compare-model").input_value() == "gemini_3_1_image"
    assert "No other model" not in note.inner_text(), note.inner_text()
    assert page.errors == []


def test_a_too_large_node_in_multibyte_text_names_only_fields_that_help(browser: Any, start_api: StartApi) -> None:
    server = start_api()
    page = _page(browser, server)
    node = _offline_node()
    node["description"] = "€" * 140_000  # 3 bytes each: 420,000 bytes, past the 262,144-byte body limit
    text = json.dumps(node, indent=2, ensure_ascii=False)
    _paste_node(page, text)
    page.wait_for_function(
        "() => document.getElementById('form-problems').textContent.includes('To fit')", timeout=QUICK_MS
    )
    said = page.locator("#form-problems").inner_text()
    assert f"{len(text.encode()):,} bytes ({len(text):,} characters)" in said, said
    assert "longest field: description: 420,000 bytes (140,000 characters)" in said, said
    for field in ("type", "user_query", "name", "inputs.model"):
        assert f"{field}:" not in said and f"{field} (" not in said, (field, said)
    assert page.errors == []
