"""The answer gate (worker/providers/answer_gate.py): a first-come, first-served weighted
semaphore over the bytes of answers, and its use by the call budget's stream, through a real
httpx client and FakeGemini."""

from __future__ import annotations

import random
import threading
import time

import httpx2
import pytest

from devtools.fake_gemini import Behaviour, FakeGemini
from worker.providers.answer_gate import AnswerGate, GateStats, answer_scope, estimated_answer_bytes, process_gate
from worker.providers.http_budget import call_budget, install_budget


def _waiting(gate: AnswerGate, count: int, timeout: float = 5.0) -> None:
    """Until ``count`` admissions have had to wait (each waits in the gate's line)."""
    deadline = time.monotonic() + timeout
    while gate.stats().waits < count:
        assert time.monotonic() < deadline, f"{gate.stats().waits} admissions waiting, expected {count}"
        time.sleep(0.005)


def _in_thread(gate: AnswerGate, size: int, admitted: list[int]) -> threading.Thread:
    def take() -> None:
        gate.acquire(size)
        admitted.append(size)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def test_answers_within_the_limit_are_admitted_at_once() -> None:
    gate = AnswerGate(100)
    assert gate.acquire(40) == 0.0 and gate.acquire(60) == 0.0
    assert gate.stats() == GateStats(held_bytes=100, peak_bytes=100, waits=0)
    gate.release(40)
    gate.release(60)
    assert gate.stats().held_bytes == 0


def test_an_answer_that_does_not_fit_waits_for_a_release() -> None:
    gate = AnswerGate(100)
    gate.acquire(70)
    admitted: list[int] = []
    thread = _in_thread(gate, 50, admitted)
    _waiting(gate, 1)
    assert admitted == [] and gate.stats().held_bytes == 70
    gate.release(70)
    thread.join(timeout=5)
    assert admitted == [50] and gate.stats().held_bytes == 50


def test_a_small_answer_does_not_pass_a_large_one_waiting_before_it() -> None:
    """First come, first served: otherwise a stream of small answers could hold a 4K one back for ever."""
    gate = AnswerGate(100)
    gate.acquire(60)
    admitted: list[int] = []
    large = _in_thread(gate, 90, admitted)
    _waiting(gate, 1)
    small = _in_thread(gate, 10, admitted)  # would fit beside the 60, but the 90 came first
    _waiting(gate, 2)
    assert admitted == []
    gate.release(60)
    large.join(timeout=5)
    small.join(timeout=5)
    assert admitted == [90, 10] and gate.stats().held_bytes == 100


def test_an_answer_larger_than_the_limit_is_admitted_alone() -> None:
    gate = AnswerGate(100)
    assert gate.acquire(250) == 0.0  # nothing else held: it goes through
    admitted: list[int] = []
    thread = _in_thread(gate, 1, admitted)
    _waiting(gate, 1)
    assert admitted == []
    gate.release(250)
    thread.join(timeout=5)
    assert admitted == [1]
    gate.acquire(30)
    later = _in_thread(gate, 250, admitted)  # waits until it is alone
    _waiting(gate, 2)
    gate.release(1)
    time.sleep(0.05)
    assert admitted == [1]
    gate.release(30)
    later.join(timeout=5)
    assert admitted == [1, 250] and gate.stats().peak_bytes == 250


def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    """An admission interrupted while waiting (an exception raised in its thread) must not keep
    the place at the head of the line, or every later answer would wait for ever."""
    gate = AnswerGate(100)
    gate.acquire(100)

    class Interrupted(Exception):
        pass

    real_wait = gate._changed.wait
    calls = 0

    def interrupted_wait(timeout: float | None = None) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Interrupted
        return real_wait(timeout)

    gate._changed.wait = interrupted_wait  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        gate.acquire(10)
    gate._changed.wait = real_wait  # type: ignore[method-assign]
    gate.release(100)
    assert gate.acquire(10) == 0.0  # the line is empty again
    assert gate.stats().held_bytes == 10


def test_many_threads_never_hold_more_than_the_limit() -> None:
    gate = AnswerGate(1000)
    over: list[int] = []
    sizes = [random.Random(seed).randint(1, 400) for seed in range(200)]

    def answer(size: int) -> None:
        gate.acquire(size)
        held = gate.stats().held_bytes
        if held > 1000:
            over.append(held)
        time.sleep(0.001)
        gate.release(size)

    threads = [threading.Thread(target=answer, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stats = gate.stats()
    assert over == [] and stats.held_bytes == 0 and 400 < stats.peak_bytes <= 1000 and stats.waits > 0


def test_the_estimate_is_the_answer_json_of_a_photo_like_png() -> None:
    assert estimated_answer_bytes(1024, 1024) == 2_202_009  # a 1.65 MB PNG in base64: ~2.2 MB
    assert 33_000_000 < estimated_answer_bytes(4096, 4096) < 37_000_000  # 26.5 MB measured -> 35.3 MB


def test_a_limit_of_zero_turns_the_gate_off_and_a_bad_limit_is_refused() -> None:
    assert process_gate(0) is None
    with pytest.raises(ValueError, match="at least 1 byte"):
        AnswerGate(0)


# --- through the call budget's stream: a real httpx client and FakeGemini -------------------------

KEY = "AIzaGATE-canary-5eed"
BODY = {"contents": [{"role": "user", "parts": [{"text": "a lighthouse"}]}]}


def _post(client: httpx2.Client, fake: FakeGemini) -> httpx2.Response:
    url = f"{fake.base_url}/v1beta/models/gemini-3-pro-image:generateContent"
    return client.post(url, json=BODY, headers={"x-goog-api-key": KEY})


def test_answers_wait_their_turn_only_once_they_arrive_not_while_generated() -> None:
    """Two calls at once, room for one answer: both generations run together (the server has both
    requests at once), and only the second answer's read waits, until the first is stored."""
    gate = AnswerGate(100)
    hold_s = 0.6  # the first answer's decoding and storing, after its call
    done: dict[str, float] = {}  # time.time(), as the server stamps the requests it receives
    with FakeGemini(api_key=KEY, latency_s=1.0) as fake, install_budget(httpx2.Client()) as client:
        _post(client, fake)  # one connection warm; the other call opens its own

        def call(name: str) -> None:
            with answer_scope(gate, 80), call_budget(30.0, 2**20):
                assert _post(client, fake).status_code == 200
                done[name] = time.time()
                if len(done) == 1:
                    time.sleep(hold_s)  # the first answer in keeps its place a while
            done[f"{name} scope"] = time.time()

        threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    first, second = sorted(("a", "b"), key=lambda name: done[name])
    assert gate.stats() == GateStats(held_bytes=0, peak_bytes=80, waits=1)
    assert done[second] >= done[f"{first} scope"]  # read only once the first answer was done with
    # Generated together: the server had both requests before the first answer was done with. Had
    # the gate held the second request back until then, it would have arrived after.
    _warm_up, *generated = fake.requests
    assert len(generated) == 2 and max(r.timestamp for r in generated) < done[f"{first} scope"], done


def test_the_time_waited_at_the_gate_is_given_back_to_the_call() -> None:
    """An answer that waits its turn has arrived: the call's budget, which bounds the server, must
    not run out while it waits (a timeout there would pay for the image again)."""
    gate = AnswerGate(100)
    gate.acquire(100)  # all the room is taken for the first 1.5 s
    threading.Timer(1.5, gate.release, args=(100,)).start()
    with (
        FakeGemini(api_key=KEY, image_kind="photo") as fake,  # ~2.2 MB: many reads after the wait
        install_budget(httpx2.Client()) as client,
        answer_scope(gate, 50),
        call_budget(1.4, 64 * 2**20),  # less than the wait, and room to read 2.2 MB on a busy machine
    ):
        started = time.monotonic()
        answer = _post(client, fake)
        waited = time.monotonic() - started
    assert answer.status_code == 200 and len(answer.content) > 2_000_000
    assert waited > 1.4  # longer than the budget: the wait was not counted against it
    assert gate.stats().waits == 1


def test_a_call_that_fails_gives_its_place_back() -> None:
    gate = AnswerGate(100)
    with FakeGemini(api_key=KEY) as fake, install_budget(httpx2.Client()) as client:
        fake.script(Behaviour("error", code=503))
        with pytest.raises(httpx2.HTTPStatusError), answer_scope(gate, 60), call_budget(30.0, 2**20):
            _post(client, fake).raise_for_status()
    assert gate.stats() == GateStats(held_bytes=0, peak_bytes=60, waits=0)


def test_a_second_request_in_one_scope_is_done_with_the_first_answer() -> None:
    """A retry inside the SDK (or a proxy's CONNECT before the request) sends again in the same
    scope: the first answer's place is given up while the next one is generated, and taken again
    when that one arrives."""
    gate = AnswerGate(100)
    during: list[int] = []
    with (
        FakeGemini(api_key=KEY) as fake,
        install_budget(httpx2.Client()) as client,
        answer_scope(gate, 60),
        call_budget(30.0, 2**20),
    ):
        assert _post(client, fake).status_code == 200
        assert gate.stats().held_bytes == 60
        fake.latency_s = 0.8
        threading.Timer(0.4, lambda: during.append(gate.stats().held_bytes)).start()
        assert _post(client, fake).status_code == 200
        assert gate.stats().held_bytes == 60
    assert during == [0]  # nothing held while the second answer was being generated
    assert gate.stats() == GateStats(held_bytes=0, peak_bytes=60, waits=0)


def test_calls_outside_a_scope_or_without_a_gate_count_nothing() -> None:
    gate = AnswerGate(100)
    with FakeGemini(api_key=KEY) as fake, install_budget(httpx2.Client()) as client:
        with call_budget(30.0, 2**20):  # the prompt step's text calls: no scope
            assert _post(client, fake).status_code == 200
        with answer_scope(None, 60), call_budget(30.0, 2**20):  # IMAGEGEN_ANSWER_MEMORY_MB=0
            assert _post(client, fake).status_code == 200
    assert gate.stats() == GateStats(held_bytes=0, peak_bytes=0, waits=0)
