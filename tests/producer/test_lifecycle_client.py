"""The client's lifecycle methods (cancel, events, webhook deliveries) keep the
client's typed errors: a Redis fault is QueueUnavailable, never a raw traceback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contract.errors import NodeValidationError
from contract.settings import Settings
from producer.client import ImageGenClient, QueueUnavailable


@pytest.fixture
def broken_client(settings: Settings, redis_url: str) -> Iterator[ImageGenClient]:
    # A Redis that answers every connection with an error (database 99 does not exist): not retried.
    broken = settings.model_copy(update={"redis_url": redis_url.rsplit("/", 1)[0] + "/99"})
    producer = ImageGenClient(broken)
    yield producer
    producer.close()


def test_lifecycle_methods_raise_queue_unavailable(broken_client: ImageGenClient) -> None:
    with pytest.raises(QueueUnavailable, match="ResponseError"):
        broken_client.cancel("some-job")
    with pytest.raises(QueueUnavailable):
        broken_client.events("some-job")
    with pytest.raises(QueueUnavailable):
        broken_client.webhook_deliveries("some-job")


def test_cancel_and_deliveries_check_the_job_id(client: ImageGenClient) -> None:
    for hostile in ("imagegen:job:x", "a@1", "../x", ""):
        with pytest.raises(NodeValidationError):
            client.cancel(hostile)
        with pytest.raises(NodeValidationError):
            client.webhook_deliveries(hostile)
        with pytest.raises(NodeValidationError):
            client.events(hostile)
