"""Every client pool of a worker process holds a connection per slot (Settings.pool_size):
the broker's, the result backend's, the job store's, the Gemini SDK's HTTP client and the
storage SDKs'. Their defaults (kombu 10, redis-py 100, httpx 100, botocore and requests 10)
either raise MaxConnectionsError or queue a generation behind others for its whole length."""

from __future__ import annotations

import pytest

from contract.queue import celery_config
from contract.settings import Settings
from worker.celery_app import worker_pools
from worker.providers.gemini import GeminiProvider
from worker.storage.azure_blob import AzureBlobStore
from worker.storage.common import StoreOptions
from worker.storage.s3 import S3Store

AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("IMAGEGEN_WORKER_CONCURRENCY", "300")
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return Settings()


def test_broker_and_result_backend_pools(settings: Settings) -> None:
    config = celery_config(settings)
    pools = worker_pools(settings, config["broker_transport_options"])
    assert settings.pool_size > settings.worker_concurrency
    assert config["redis_max_connections"] == pools["broker_pool_limit"] == settings.pool_size
    assert pools["broker_transport_options"]["max_connections"] == settings.pool_size
    assert pools["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout_s  # kept


def test_rabbitmq_keeps_its_transport_options(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_BROKER_URL", "amqp://u:p@rabbit:5672/imagegen")
    rabbit = Settings()
    pools = worker_pools(rabbit, celery_config(rabbit)["broker_transport_options"])
    assert pools == {"broker_pool_limit": rabbit.pool_size}


def test_gemini_client_keeps_a_connection_per_slot(settings: Settings) -> None:
    client = GeminiProvider(settings)._client._api_client._httpx_client
    pool = client._transport._pool
    assert pool._max_connections == pool._max_keepalive_connections == settings.pool_size


def test_storage_clients_keep_a_connection_per_slot(settings: Settings) -> None:
    options = StoreOptions.from_settings(settings, platform=True)
    assert options.pool_size == settings.pool_size
    s3 = S3Store(
        "bucket", region="eu-west-1", keys={"aws_access_key_id": "a", "aws_secret_access_key": "b"}, options=options
    )
    assert s3.client.meta.config.max_pool_connections == settings.pool_size
    azure = AzureBlobStore("images", connection_string=AZURITE, options=options)
    session = azure.service._config.transport.session
    assert session.get_adapter("https://x.blob.core.windows.net")._pool_maxsize == settings.pool_size
