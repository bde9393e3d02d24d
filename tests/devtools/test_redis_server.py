"""The Redis helper that ``make demo`` and the tests use: it never mistakes a server that is
already there for one it started, and a server that refuses the URL is an error, not a reason
to start another."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from devtools.redis_server import RedisUnusable, ensure_redis, start_redis
from tests.conftest import ROOT


def test_a_server_that_refuses_the_url_is_named_not_replaced(redis_url: str) -> None:
    wrong_db = redis_url.rsplit("/", 1)[0] + "/99"
    with pytest.raises(RedisUnusable, match="DB index is out of range"):
        ensure_redis(wrong_db)
    with pytest.raises(RedisUnusable, match="plain redis:// URL"):
        ensure_redis("sentinel://127.0.0.1:26379/mymaster")


def test_a_port_in_use_is_not_claimed_as_embedded(redis_url: str) -> None:
    taken = urlsplit(redis_url).port
    with pytest.raises(RuntimeError, match="the port is in use"):
        start_redis(taken)


def test_the_demo_says_what_is_wrong_with_redis_url_in_one_line(redis_url: str) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url.replace("redis://", "redis://:s3cret@", 1)[:-1] + "99"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 2 and "Traceback" not in demo.stderr, demo.stderr
    assert "cannot use redis://:***@" in demo.stderr and "s3cret" not in demo.stderr + demo.stdout
