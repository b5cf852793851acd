"""A real S3 endpoint on loopback for tests and benchmarks: moto's standalone server in its own process.

``moto_server()`` starts ``python -m moto.server`` on a free 127.0.0.1 port
and yields an ``S3Endpoint`` (URL and the credentials to use with it);
``create_bucket`` makes a fresh bucket. moto accepts any credentials and does
not check presigned URLs' signatures: tests that need the check put
``tests/s3_support.BucketFront`` in front of it.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.live_hub import free_port
from storage.s3_client import make_client

ACCESS_KEY = "AKIDMPACKHUBTEST"
SECRET_KEY = "mpackhub-test-secret-key-0123456789"
REGION = "us-east-1"


@dataclass
class S3Endpoint:
    url: str
    process: subprocess.Popen | None = None

    @property
    def credentials(self) -> tuple[str, str]:
        return ACCESS_KEY, SECRET_KEY

    def env(self, bucket: str, prefix: str = "hub", url: str | None = None) -> dict[str, str]:
        """The hub's environment to use ``s3://bucket/prefix`` on this endpoint."""
        return {
            "MPACKHUB_STORE_URL": f"s3://{bucket}/{prefix}", "MPACKHUB_S3_ENDPOINT_URL": url or self.url,
            "MPACKHUB_S3_REGION": REGION, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def client(self, url: str | None = None, **options):
        return make_client(endpoint_url=url or self.url, region=REGION, credentials=self.credentials, **options)


def create_bucket(endpoint: S3Endpoint, name: str | None = None, client=None) -> str:
    name = name or "mpack-" + secrets.token_hex(6)
    (client or endpoint.client()).create_bucket(Bucket=name)
    return name


def wait_listening(url: str, process: subprocess.Popen, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("moto server did not start")


@contextmanager
def moto_server(log_dir: Path | None = None):
    """Yield an ``S3Endpoint`` served by a fresh moto server process; stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = (log_dir or Path(os.environ.get("TMPDIR", "/tmp"))) / f"moto-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(url, process)
            yield S3Endpoint(url, process)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
