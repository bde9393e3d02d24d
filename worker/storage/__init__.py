"""Opens the store a job writes to: the node's own cloud when ``use_cloud`` is
true (a ``Target`` from contract/clouds), otherwise the operator's platform
storage (``IMAGEGEN_STORAGE_URL``: ``s3://``, ``az://``, ``gs://`` or a directory).

The worker re-checks the rules the producer checked (a task may bypass it): the
worker's own identity serves only the platform and ``IMAGEGEN_ALLOWED_TARGETS``;
endpoints obey the endpoint rules. Stores are cached per worker process, keyed
by their target without its prefix (bucket and credential *reference*), for
``IMAGEGEN_SECRET_CACHE_TTL_S`` so rotated credentials are picked up, at most
``MAX_CACHED_STORES`` of them; SDK clients are thread-safe and shared by threads.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

from contract.clouds import Target, TargetError, platform_target, spec_for
from contract.clouds.azure import PLATFORM_CONNECTION_STRING
from contract.errors import NodeValidationError
from contract.settings import Settings
from contract.tenancy import check_refs_of_tenant, tenant_of
from worker.errors import PermanentError, StorageError
from worker.secrets import SecretError, resolve_secret
from worker.storage.base import ImageStore, StoredObject, check_key
from worker.storage.common import StoreOptions
from worker.storage.keys import check_image_key, check_image_uri_shape, object_key
from worker.storage.local import LocalStore
from worker.storage.write_check import clear_write_checks, ensure_writable

__all__ = [
    "ImageStore",
    "Location",
    "StoredObject",
    "Target",
    "check_credentials_of",
    "check_image_key",
    "check_image_uri_shape",
    "check_key",
    "clear_store_cache",
    "location_for",
    "object_key",
    "writable_location",
]


@dataclass(frozen=True)
class Location:
    """A store and the prefix inside it that one job (or one sign request) may use."""

    store: ImageStore
    prefix: str

    def put(
        self,
        job_id: str,
        index: int,
        run: int,
        extension: str,
        data: bytes,
        content_type: str,
        metadata: dict[str, str],
    ) -> StoredObject:
        return self.store.put(object_key(self.prefix, job_id, index, extension, run), data, content_type, metadata)

    def check_writable(self, job_id: str) -> None:
        """Before ``job_id``'s image is paid for: StorageError (or TransientError) unless this
        location took a write recently (worker/storage/write_check.py)."""
        ensure_writable(self.store, self.prefix, job_id)

    def url_for(self, uri: str, tenant: str | None = None) -> StoredObject:
        """A fresh URL for an image this service stored under this location's prefix (for one of
        ``tenant``'s jobs, when given), and nothing else."""
        check_image_key(self.store.key_of(uri), self.prefix, tenant)
        return self.store.url_for(uri)


def check_credentials_of(tenant: str | None, target: Target | None, settings: Settings) -> None:
    """PermanentError unless ``target``'s credentials are ones ``tenant`` may name (None: the
    platform's own), checked before they are read: a message may not come from our producer
    (contract/tenancy.py)."""
    if target is not None and target.credentials:
        try:
            check_refs_of_tenant(tenant, {"inputs.credentials": target.credentials}, settings)
        except NodeValidationError as exc:
            raise PermanentError(f"storage credentials refused: {exc.problems[0].message}") from None


def writable_location(job_id: str, target: Target | None, settings: Settings) -> Location:
    """Where ``job_id``'s images go, checked before anything is paid for (a variation's image, the
    prompt step's text call): the target's credentials are ones the job's tenant may name, and
    the store takes a write (worker/storage/write_check.py). PermanentError, StorageError or
    TransientError otherwise."""
    check_credentials_of(tenant_of(job_id), target, settings)
    location = location_for(target, settings)
    location.check_writable(job_id)
    return location


def location_for(target: Target | None, settings: Settings) -> Location:
    """The node's own target, or (None) the platform storage."""
    if target is None:
        return _platform_location(settings)
    if target.platform:
        raise PermanentError("a node's target cannot claim to be the platform storage")
    try:
        spec = spec_for(target.provider)  # a message may name any provider
    except TargetError as exc:
        raise PermanentError(str(exc)) from None
    try:
        settings.target_policy.check_identity(target)
    except TargetError as exc:
        raise PermanentError(f"{spec.credential_field} {exc}") from None
    return Location(_cloud_store(target, StoreOptions.from_settings(settings, platform=False), settings), target.prefix)


def _platform_location(settings: Settings) -> Location:
    url = settings.storage_url
    try:
        target = platform_target(url, settings)
    except TargetError as exc:
        raise PermanentError(str(exc)) from None
    if target is None:
        return Location(_local_store(url.removeprefix("file://"), settings.storage_public_base_url), "")
    store = _cloud_store(target, StoreOptions.from_settings(settings, platform=True), settings)
    return Location(store, target.prefix)


@functools.lru_cache(maxsize=8)
def _local_store(root: str, public_base_url: str | None) -> LocalStore:
    """One per directory: building one resolves the root, a syscall per path component."""
    return LocalStore(root, public_base_url)


_StoreKey = tuple[Target, StoreOptions]
# Stores kept per process, least recently used evicted first: tenants name their own buckets and
# credentials, and each store holds an SDK client and its connections.
MAX_CACHED_STORES = 64
_lock = threading.Lock()  # guards the two dicts below; never held while a store is built
_stores: OrderedDict[_StoreKey, tuple[float, ImageStore]] = OrderedDict()
_building: dict[_StoreKey, threading.Lock] = {}


def _cloud_store(target: Target, options: StoreOptions, settings: Settings) -> ImageStore:
    key = (replace(target, prefix=""), options)
    with _lock:
        store = _cached(key)
        if store is not None:
            return store
        build_lock = _building.setdefault(key, threading.Lock())
    # One thread builds a given store (a cold start has many threads wanting the same one); a
    # slow build (a Vault read, a token fetch) holds up only the threads waiting for that store.
    with build_lock:
        with _lock:
            store = _cached(key)
        if store is not None:
            return store
        built: ImageStore | None = None
        try:
            built = _build(key[0], options, settings)
        finally:
            with _lock:
                if _building.get(key) is build_lock:  # not a later thread's, made after a failure
                    del _building[key]
                if built is not None and settings.secret_cache_ttl_s > 0:
                    _stores.pop(key, None)  # a rebuilt store is the most recently used, not the oldest
                    _stores[key] = (time.monotonic() + settings.secret_cache_ttl_s, built)
                    _evict()
        return built


def _cached(key: _StoreKey) -> ImageStore | None:
    entry = _stores.get(key)
    if entry is None or entry[0] <= time.monotonic():
        return None
    _stores.move_to_end(key)
    return entry[1]


def _evict() -> None:
    now = time.monotonic()
    for stale in [key for key, (expires, _) in _stores.items() if expires <= now]:
        del _stores[stale]
    while len(_stores) > MAX_CACHED_STORES:
        _stores.popitem(last=False)


def clear_store_cache() -> None:
    with _lock:
        _stores.clear()
    _local_store.cache_clear()
    clear_write_checks()


def _build(target: Target, options: StoreOptions, settings: Settings) -> ImageStore:
    spec = spec_for(target.provider)
    secret = None
    if target.platform and target.credentials == PLATFORM_CONNECTION_STRING:
        # The operator's own setting, not a tenant's reference: the tenants' allow-list does not apply.
        secret = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
    elif target.credentials:
        try:
            secret = resolve_secret(target.credentials, settings)
        except SecretError as exc:
            raise StorageError(f"{target.where}: {exc}") from None
    module, _, name = spec.store.partition(":")
    # Imported here: each SDK is heavy and a worker may use only one of them.
    store_class = getattr(importlib.import_module(module), name)
    try:
        store: ImageStore = store_class.open(target, secret, options, settings.target_policy)
    except (ValueError, TargetError) as exc:
        # Raised by our parsers and rules with a message that never quotes the secret.
        field = "AZURE_STORAGE_CONNECTION_STRING" if target.platform and target.credentials else None
        field = field or f"{spec.credential_field} {target.credentials or ''}".rstrip()
        raise StorageError(f"{target.where}: {field}: {exc}") from None
    return store
