"""Settings come from the environment and refuse unsafe combinations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.catalog import load_catalog
from contract.queue import celery_config
from contract.settings import Settings, SettingsError


def test_standard_variable_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("GEMINI_API_KEY", "k-123")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    settings = Settings()
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.gemini_api_key is not None and settings.gemini_api_key.get_secret_value() == "k-123"
    assert "k-123" not in repr(settings)  # a SecretStr never prints
    assert settings.gemini_base_url == "http://127.0.0.1:9/"


def test_visibility_timeout_must_outlive_time_limit_and_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_VISIBILITY_TIMEOUT_S", "300")
    with pytest.raises(SettingsError, match="tasks run twice"):
        Settings()


def test_event_log_retention_must_outlive_a_webhooks_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().events_retention_s == 3600
    monkeypatch.setenv("IMAGEGEN_EVENTS_RETENTION_S", "300")  # 8 attempts x (60 s + 10 s) = 560 s
    with pytest.raises(SettingsError, match=r"IMAGEGEN_EVENTS_RETENTION_S=300 .* \(560 s"):
        Settings()
    monkeypatch.setenv("IMAGEGEN_WEBHOOK_MAX_ATTEMPTS", "4")  # 280 s
    assert Settings().events_retention_s == 300


def test_production_refuses_local_storage_and_test_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_ENVIRONMENT", "production")
    monkeypatch.setenv("IMAGEGEN_OFFLINE_FAILURES", "0:permanent")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert "IMAGEGEN_STORAGE_URL is a local directory" in str(caught.value)
    assert "IMAGEGEN_ALLOWED_SECRET_REFS is empty" in str(caught.value)
    assert "test knobs" in str(caught.value)
    monkeypatch.delenv("IMAGEGEN_OFFLINE_FAILURES")
    monkeypatch.setenv("IMAGEGEN_STORAGE_URL", "s3://images/prod")
    monkeypatch.setenv("IMAGEGEN_ALLOWED_SECRET_REFS", "vault:secret/imagegen/")
    assert Settings().environment == "production"


@pytest.mark.parametrize("variable", ["VAULT_ADDR", "GOOGLE_GEMINI_BASE_URL", "IMAGEGEN_STORAGE_PUBLIC_BASE_URL"])
def test_production_refuses_plain_http_for_the_platforms_own_endpoints(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The Vault token and every secret read, the Gemini key, the images' public URLs: over plain
    HTTP they would cross the network unencrypted."""
    monkeypatch.setenv("IMAGEGEN_ENVIRONMENT", "production")
    monkeypatch.setenv("IMAGEGEN_STORAGE_URL", "s3://images/prod")
    monkeypatch.setenv("IMAGEGEN_ALLOWED_SECRET_REFS", "vault:secret/imagegen/")
    monkeypatch.setenv(variable, "http://vault.example:8200")
    with pytest.raises(SettingsError, match=f"{variable} is plain http:// to 'vault.example'"):
        Settings()
    for fine in ("https://vault.example:8200", "http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200"):
        monkeypatch.setenv(variable, fine)
        assert Settings().environment == "production"
    monkeypatch.setenv(variable, "http://vault.example:8200")
    monkeypatch.setenv("IMAGEGEN_PLAINTEXT_HOSTS", "other.example, vault.example")
    assert Settings().environment == "production"
    monkeypatch.setenv(variable, "ftp://vault.example")
    with pytest.raises(SettingsError, match=f"{variable} must be an https:// URL"):
        Settings()
    monkeypatch.setenv("IMAGEGEN_ENVIRONMENT", "development")
    monkeypatch.setenv(variable, "http://vault.example:8200")
    assert Settings().environment == "development"


@pytest.mark.parametrize(
    ("variable", "url", "why"),
    [
        ("REDIS_URL", "redis://:s3cretpw@127.0.0.1:notaport/0", "Port could not be cast to integer value"),
        ("REDIS_URL", "redis://127.0.0.1:6379/12?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("REDIS_URL", "redis://:s3cretpw@127.0.0.1:6379/notadb", "the path must be a database number"),
        ("IMAGEGEN_BROKER_URL", "amqp://user:s3cretpw@127.0.0.1:notaport//", "Port could not be cast"),
    ],
)
def test_a_url_its_client_cannot_use_is_refused_at_start_up_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, why: str
) -> None:
    """Each had passed and then raised a bare ValueError (a traceback from the CLI) at the first
    connection, for the broker only after the job was claimed."""
    monkeypatch.setenv(variable, url)
    with pytest.raises(SettingsError, match=f"{variable} is not a URL its client can use: {why}") as caught:
        Settings()
    assert "s3cretpw" not in str(caught.value) and "notaport" not in str(caught.value)


def test_urls_of_every_supported_form_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380/3?ssl_cert_reqs=none", "unix:///tmp/r.sock?db=2", "redis://h"):
        monkeypatch.setenv("REDIS_URL", url)
        assert Settings().redis_url == url
    monkeypatch.setenv("IMAGEGEN_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    assert Settings().broker == "amqp://guest:guest@rabbit:5672//"


def test_production_refuses_timeouts_its_limits_do_not_cover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_ENVIRONMENT", "production")
    monkeypatch.setenv("IMAGEGEN_STORAGE_URL", "s3://images/prod")
    monkeypatch.setenv("IMAGEGEN_ALLOWED_SECRET_REFS", "vault:secret/imagegen/")
    assert Settings().job_deadline_s == 7200  # the defaults hold together: 120 + 4 x (30 + 2) = 248 s < 300 s
    monkeypatch.setenv("IMAGEGEN_JOB_DEADLINE_S", "60")
    monkeypatch.setenv("IMAGEGEN_GEMINI_TIMEOUT_S", "900")
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert "IMAGEGEN_JOB_DEADLINE_S=60 is not above the visibility timeout plus one redelivery sweep (930 s)" in str(
        caught.value
    )
    assert "an attempt may take 1028 s" in str(caught.value) and "IMAGEGEN_TASK_SOFT_TIME_LIMIT_S=300" in str(
        caught.value
    )
    monkeypatch.setenv("IMAGEGEN_ENVIRONMENT", "development")  # tests and chaos runs shrink them on purpose
    assert Settings().job_deadline_s == 60


@pytest.mark.parametrize(
    ("variable", "meant"),
    [("IMAGEGEN_ENVIRONMNET", "IMAGEGEN_ENVIRONMENT"), ("IMAGEGEN_WORKER_CONCURENCY", "IMAGEGEN_WORKER_CONCURRENCY")],
)
def test_a_misspelt_setting_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch, variable: str, meant: str) -> None:
    # Ignored, IMAGEGEN_ENVIRONMNET=production had left a deployment in development mode.
    monkeypatch.setenv(variable, "production")
    with pytest.raises(SettingsError, match=f"{variable} is set but is no setting: did you mean {meant}"):
        Settings()


def test_variables_that_are_no_typo_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_PLAYGROUND_PORT", "8000")  # far from any setting
    monkeypatch.setenv("IMAGEGEN_API_TOKEN", "a-token-named-by-a-reference")  # one letter from IMAGEGEN_API_TOKENS
    monkeypatch.setenv("IMAGEGEN_API_TOKENS", "acme=env:IMAGEGEN_API_TOKEN")
    assert Settings().environment == "development"
    monkeypatch.setenv("IMAGEGEN_API_TOKENS", "acme=file:/run/acme")
    with pytest.raises(SettingsError, match="did you mean IMAGEGEN_API_TOKENS"):
        Settings()


def test_kubernetes_service_links_are_no_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    # What Kubernetes sets in every pod for a Service named imagegen-worker (our manifests turn
    # these off with enableServiceLinks: false; a cluster's other manifests may not).
    for name, value in {
        "IMAGEGEN_WORKER_PORT": "tcp://10.0.0.5:9808",  # one letter from IMAGEGEN_WORKER_POOL
        "IMAGEGEN_WORKER_PORT_9808_TCP": "tcp://10.0.0.5:9808",
        "IMAGEGEN_WORKER_PORT_9808_TCP_PROTO": "tcp",
        "IMAGEGEN_WORKER_PORT_9808_TCP_ADDR": "10.0.0.5",
        "IMAGEGEN_WORKER_SERVICE_HOST": "10.0.0.5",
        "IMAGEGEN_WORKER_SERVICE_PORT": "9808",
    }.items():
        monkeypatch.setenv(name, value)
    assert Settings().worker_pool == "threads"
    monkeypatch.setenv("IMAGEGEN_WORKER_PORT", "gevent")  # not a link's value: a misspelt setting
    with pytest.raises(SettingsError, match="did you mean IMAGEGEN_WORKER_POOL"):
        Settings()


def test_celery_reliability_settings() -> None:
    config = celery_config(Settings())
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"]["visibility_timeout"] > config["task_time_limit"]
    assert config["worker_send_task_events"]  # Flower
    assert not config["task_send_sent_event"] and not config["task_track_started"]  # nothing reads them
    assert config["result_expires"] == Settings().result_ttl_s


def test_every_redis_pool_is_sized_from_the_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGEN_WORKER_CONCURRENCY", "300")
    settings = Settings()
    config = celery_config(settings)
    assert settings.pool_size > 300
    assert config["redis_max_connections"] == settings.pool_size  # the worker's other pools: tests/worker


@pytest.mark.parametrize("concurrency", ["0", "513"])
def test_concurrency_is_bounded(monkeypatch: pytest.MonkeyPatch, concurrency: str) -> None:
    monkeypatch.setenv("IMAGEGEN_WORKER_CONCURRENCY", concurrency)
    with pytest.raises(SettingsError, match=f"IMAGEGEN_WORKER_CONCURRENCY={concurrency!r}"):
        Settings()


def test_result_compression_is_on_by_default_and_can_be_turned_off() -> None:
    assert celery_config(Settings())["result_compression"] == "zlib"
    assert celery_config(Settings(result_compression="none"))["result_compression"] is None  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match="IMAGEGEN_RESULT_COMPRESSION='brotli'"):
        Settings(result_compression="brotli")  # type: ignore[call-arg,arg-type]


def test_a_bad_setting_names_the_variable_and_never_echoes_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic's own error shows a cross-field rule's input: every value read, API keys included."""
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-secret-value-0123456789")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.secret-token")
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:6379/0")
    monkeypatch.setenv("IMAGEGEN_MAX_VARIATIONS", "lots")
    with pytest.raises(SettingsError) as caught:
        Settings()
    message = str(caught.value)
    assert "IMAGEGEN_MAX_VARIATIONS='lots': Input should be a valid integer" in message
    assert "AIza-secret" not in message and "hvs.secret" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    monkeypatch.setenv("IMAGEGEN_MAX_VARIATIONS", "4")
    with pytest.raises(SettingsError, match="REDIS_URL: scheme 'http' is not one of") as caught:
        Settings()
    assert "AIza-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (None, "cannot be read (No such file or directory)"),
        ("{not json", "is not JSON"),
        ('{"modles": {}}', "unknown section(s) modles; allowed: models, text_models, default_text_models"),
        ('{"models": {"new_model": {"model_id": "x-1"}}}', "models.new_model.provider: Field required"),
        ('{"models": {"gemini_3_image": {"sizes": {"1024x1024": {"tier": "9K"}}}}}', "models.gemini_3_image.sizes"),
    ],
)
def test_a_bad_catalog_file_fails_at_start_up_naming_the_file_and_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, complaint: str
) -> None:
    # It used to load at the first job: the worker said "ready", crashed every job (left queued
    # for the job deadline), and the API answered 500 while /readyz said 200.
    path = tmp_path / "catalog.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_FILE", str(path))
    with pytest.raises(SettingsError) as caught:
        Settings()
    assert str(path) in str(caught.value) and complaint in str(caught.value)


def test_a_catalog_file_entry_updates_the_built_in_one_field_by_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The README's "fix a retired model id": the entry names only what changed.
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {"gemini_2_5_image": {"model_id": "gemini-2.5-flash-image-002"}}}))
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_FILE", str(path))
    settings = Settings()
    fixed = load_catalog(settings.model_catalog_file, settings.model_catalog_replace).models["gemini_2_5_image"]
    built_in = load_catalog().models["gemini_2_5_image"]
    assert fixed.model_id == "gemini-2.5-flash-image-002"
    assert fixed.sizes == built_in.sizes and fixed.provider == built_in.provider
    # A price table is updated price by price; other top-level keys ("$schema") are not sections.
    tiers = dict(load_catalog().models["gemini_3_image"].price_usd_per_image)
    path.write_text(json.dumps({"$schema": "x", "models": {"gemini_3_image": {"price_usd_per_image": {"4K": 0.3}}}}))
    priced = load_catalog(str(path)).models["gemini_3_image"].price_usd_per_image
    assert dict(priced) == {**tiers, "4K": 0.3}


def test_a_rate_limit_keyed_by_a_model_name_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Keyed by the node's model name, the quota was accepted and booked nothing.
    monkeypatch.setenv("IMAGEGEN_RATE_LIMITS", "gemini_3_image=2:1")
    with pytest.raises(
        SettingsError, match="'gemini_3_image', a model name; quotas are keyed by model id: 'gemini-3-pro-image'"
    ):
        Settings()
    monkeypatch.setenv("IMAGEGEN_RATE_LIMITS", "gemini-3-pro-image=2:1,gemini-2.5-flash=60")
    assert set(Settings().rate_limit_table) == {"gemini-3-pro-image", "gemini-2.5-flash"}
    # An id the catalog no longer lists is no mistake: the deployment's quota for the id a catalog
    # file replaced (deploy/k8s/configmap.yaml keeps one) must not stop every process.
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": {"gemini_2_5_image": {"model_id": "gemini-2.5-flash-image-002"}}}))
    monkeypatch.setenv("IMAGEGEN_MODEL_CATALOG_FILE", str(path))
    monkeypatch.setenv("IMAGEGEN_RATE_LIMITS", "gemini-2.5-flash-image=100:10")
    assert set(Settings().rate_limit_table) == {"gemini-2.5-flash-image"}
