"""Settings: one immutable object, read from environment variables in one place.

``Settings.from_env(environ)`` is the only code that reads the environment.
Secrets that are not configured are generated once and kept in
``$MPACKHUB_HOME/secrets.json`` (mode 0600); they are never logged, and the
object's repr hides them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from mpack.format.errors import MuseError
from storage.local_batch import BATCH_SYNCS

DAY = 24 * 3600


class SettingsError(MuseError):
    code = "settings_error"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    public_url: str
    admin_token: str = field(repr=False)
    signing_keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    cache_ttl: int = 7 * DAY
    url_ttl: int = 3600
    url_ttl_max: int = 7 * DAY
    max_body_bytes: int = 256 * 1024 * 1024  # push and push/objects
    max_small_body_bytes: int = 8 * 1024 * 1024  # every other route
    body_timeout: float = 10.0
    body_min_rate: int = 64 * 1024
    body_drain_bytes: int = 64 * 1024 * 1024
    body_readers: int = 3
    request_builds: int = 3
    request_builds_per_client: int = 1  # 0: no bound per client
    downloads: int = 3  # pack downloads one worker serves at once
    downloads_per_client: int = 2  # 0: no bound per client
    send_timeout: float = 30.0  # seconds a download may wait for its client to read (0: forever)
    download_min_rate: int = 64 * 1024  # bytes/s: a download must end within send_timeout + size / this (0: no bound)
    accel_redirect: str = ""  # a proxy's internal location serving store/mpacks/ ("": the hub sends packs itself)
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # peers whose X-Forwarded-For names the client
    build_min_free_percent: int = 5
    job_threads: int = 2
    job_max_attempts: int = 5
    job_lease_seconds: int = 60
    job_poll_seconds: float = 2.0
    health_probe_seconds: float = 2.0
    job_retention: int = 7 * DAY
    cache_max_bytes: int = 0
    gc_grace: int = 0  # 0 → url_ttl_max (a file outlives any URL that may name it)
    inline_fetch_max_bytes: int = 60 * 1024 * 1024
    pack_blob_zstd_level: int = 0  # 0: blobs go into packs raw (builds run at disk/hash speed)
    log_level: str = "INFO"
    database_wait: int = 30  # seconds a starting hub waits for an unreachable PostgreSQL
    store_url: str = ""  # "" → file://$MPACKHUB_HOME/store; s3://bucket/prefix → the S3 store
    s3_endpoint_url: str = ""  # "" → AWS; R2, MinIO or a test server otherwise
    s3_region: str = ""
    store_sync: str = "syncfs"  # how a local store makes a chunk of pushed blobs durable: syncfs | fsync
    metrics_dir: Path | None = None  # PROMETHEUS_MULTIPROC_DIR: set under gunicorn (one file per worker)

    @property
    def store_root(self) -> Path:
        """The local store's directory (``file://`` store URLs only)."""
        if self.store_url.startswith("file://"):
            return Path(self.store_url[len("file://"):])
        return self.home / "store"

    @property
    def store_kind(self) -> str:
        return "s3" if self.store_url.startswith("s3://") else "file"

    @property
    def effective_gc_grace(self) -> int:
        return self.gc_grace or self.url_ttl_max

    @classmethod
    def for_home(cls, home: Path | str, **overrides: object) -> Settings:
        """Settings for a directory with generated secrets (tests, ``mpackhub serve``)."""
        return cls.from_env({"MPACKHUB_HOME": str(home)}, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Settings:
        env = _Env(environ)
        home = home_of(environ)
        generated = _generated_secrets(home) if _needs_generated(environ) else {}
        values: dict[str, object] = dict(
            home=home,
            database_url=database_url_of(environ, home),
            # Unset, the public URL is the bind address: right for a local hub, to be set behind a proxy.
            public_url=env.str("MPACKHUB_PUBLIC_URL", "http://" + env.str("MPACKHUB_BIND", "127.0.0.1:8000")).rstrip("/"),
            admin_token=env.str("MPACKHUB_ADMIN_TOKEN", "") or str(generated.get("admin_token", "")),
            signing_keys=_parse_keys(env.str("MPACKHUB_SIGNING_KEYS", "") or str(generated.get("signing_keys", ""))),
            cache_ttl=env.int("MPACKHUB_CACHE_TTL", 7 * DAY, minimum=60),
            url_ttl_max=env.int("MPACKHUB_URL_TTL_MAX", 7 * DAY, minimum=60, maximum=7 * DAY),
            max_body_bytes=env.int("MPACKHUB_MAX_BODY_BYTES", 256 * 1024 * 1024, minimum=1024),
            max_small_body_bytes=env.int("MPACKHUB_MAX_SMALL_BODY_BYTES", 8 * 1024 * 1024, minimum=1024),
            body_timeout=env.float("MPACKHUB_BODY_TIMEOUT", 10.0, minimum=0.1, maximum=3600.0),
            body_min_rate=env.int("MPACKHUB_BODY_MIN_RATE", 64 * 1024, minimum=1024),
            body_drain_bytes=env.int("MPACKHUB_BODY_DRAIN_BYTES", 64 * 1024 * 1024, minimum=0),
            # One thread of each worker is kept for requests without a body (/healthz, refs, downloads).
            body_readers=env.int("MPACKHUB_BODY_READERS", max(1, env.int("MPACKHUB_THREADS", 4, minimum=1) - 1),
                                 minimum=1),
            request_builds=env.int("MPACKHUB_REQUEST_BUILDS", max(1, env.int("MPACKHUB_THREADS", 4, minimum=1) - 1),
                                   minimum=1),
            request_builds_per_client=env.int("MPACKHUB_REQUEST_BUILDS_PER_CLIENT", 1, minimum=0),
            downloads=env.int("MPACKHUB_DOWNLOADS", max(1, env.int("MPACKHUB_THREADS", 4, minimum=1) - 1), minimum=1),
            downloads_per_client=env.int("MPACKHUB_DOWNLOADS_PER_CLIENT", 2, minimum=0),
            send_timeout=env.float("MPACKHUB_SEND_TIMEOUT", 30.0, minimum=0.0, maximum=3600.0),
            download_min_rate=env.int("MPACKHUB_DOWNLOAD_MIN_RATE", 64 * 1024, minimum=0),
            accel_redirect=_parse_internal_location(env.str("MPACKHUB_ACCEL_REDIRECT", "")),
            trusted_proxies=_parse_addresses("MPACKHUB_TRUSTED_PROXIES", env.str("MPACKHUB_TRUSTED_PROXIES", "127.0.0.1,::1")),
            build_min_free_percent=env.int("MPACKHUB_BUILD_MIN_FREE_PERCENT", 5, minimum=0, maximum=90),
            job_threads=env.int("MPACKHUB_JOB_THREADS", 2, minimum=0, maximum=64),
            job_max_attempts=env.int("MPACKHUB_JOB_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
            job_lease_seconds=env.int("MPACKHUB_JOB_LEASE_SECONDS", 60, minimum=2),
            job_poll_seconds=env.float("MPACKHUB_JOB_POLL_SECONDS", 2.0, minimum=0.05, maximum=60.0),
            health_probe_seconds=env.float("MPACKHUB_HEALTH_PROBE_SECONDS", 2.0, minimum=0.0, maximum=300.0),
            job_retention=env.int("MPACKHUB_JOB_RETENTION", 7 * DAY, minimum=0),
            cache_max_bytes=env.int("MPACKHUB_CACHE_MAX_BYTES", 0, minimum=0),
            gc_grace=env.int("MPACKHUB_GC_GRACE", 0, minimum=0),
            pack_blob_zstd_level=env.int("MPACKHUB_PACK_BLOB_ZSTD_LEVEL", 0, minimum=0, maximum=22),
            log_level=env.str("MPACKHUB_LOG_LEVEL", "INFO").upper(),
            database_wait=env.int("MPACKHUB_DATABASE_WAIT", 30, minimum=0, maximum=600),
            store_url=env.str("MPACKHUB_STORE_URL", ""),
            s3_endpoint_url=env.str("MPACKHUB_S3_ENDPOINT_URL", ""),
            s3_region=env.str("MPACKHUB_S3_REGION", ""),
            store_sync=env.str("MPACKHUB_STORE_SYNC", "syncfs").lower(),
            metrics_dir=Path(env.str(METRICS_DIR_VAR, "")).resolve() if env.str(METRICS_DIR_VAR, "") else None,
        )
        values["url_ttl"] = env.int("MPACKHUB_URL_TTL", 3600, minimum=10, maximum=int(values["url_ttl_max"]))
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        if len(self.admin_token) < 16:
            raise SettingsError("MPACKHUB_ADMIN_TOKEN must be at least 16 characters")
        if not self.signing_keys:
            raise SettingsError("MPACKHUB_SIGNING_KEYS is empty")
        if self.url_ttl > self.url_ttl_max:
            raise SettingsError("MPACKHUB_URL_TTL exceeds MPACKHUB_URL_TTL_MAX")
        _check_store_url(self.store_url)
        if self.store_sync not in BATCH_SYNCS:
            raise SettingsError(f"MPACKHUB_STORE_SYNC must be one of {', '.join(BATCH_SYNCS)}")

    def describe(self) -> dict[str, object]:
        """The settings as shown in logs and ``mpackhub serve``: secrets masked."""
        hidden = {"admin_token", "signing_keys"}
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in hidden}
        shown["signing_key_ids"] = [kid for kid, _ in self.signing_keys]
        return {k: str(v) if isinstance(v, Path) else v for k, v in shown.items()}


def _check_store_url(url: str) -> None:
    if not url:
        return
    if url.startswith("file://"):
        if not url[len("file://"):].startswith("/"):
            raise SettingsError("MPACKHUB_STORE_URL file:// needs an absolute path (file:///srv/store)")
        return
    bucket = url[len("s3://"):].split("/", 1)[0] if url.startswith("s3://") else ""
    if not bucket or "?" in url or "#" in url:
        raise SettingsError("MPACKHUB_STORE_URL must be file:///path or s3://bucket/prefix")


def home_of(environ: Mapping[str, str]) -> Path:
    """The absolute hub home named by ``MPACKHUB_HOME`` (default ``./var``), created by nothing here."""
    return Path(environ.get("MPACKHUB_HOME", "./var").strip() or "./var").resolve()


def database_url_of(environ: Mapping[str, str], home: Path) -> str:
    return environ.get("MPACKHUB_DATABASE_URL", "").strip() or f"sqlite:///{home / 'mpackhub.sqlite3'}"


# prometheus_client's multiprocess mode reads this variable (its own name) when it is first imported.
METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir_from_env(environ: Mapping[str, str]) -> Path:
    """Where gunicorn's workers keep their metric files: ``PROMETHEUS_MULTIPROC_DIR``, else ``<home>/metrics``."""
    given = environ.get(METRICS_DIR_VAR, "").strip()
    return Path(given).resolve() if given else home_of(environ) / "metrics"


class _Env:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def str(self, name: str, default: str) -> str:
        return self._environ.get(name, default).strip()

    def int(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        return self._bounded(name, value, minimum, maximum)

    def float(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self._environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        return self._bounded(name, value, minimum, maximum)

    @staticmethod
    def _bounded(name: str, value, minimum, maximum):
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise SettingsError(f"{name}={value} is outside {minimum}..{maximum}")
        return value


def _parse_addresses(name: str, spec: str) -> tuple[str, ...]:
    """``127.0.0.1,::1`` → the addresses, each as the peer address of a request spells it."""
    addresses = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise SettingsError(f"{name} lists IP addresses separated by commas; {item!r} is not one") from None
    return tuple(addresses)


_INTERNAL_LOCATION = re.compile(r"/(?:[A-Za-z0-9._~-]+/)+", re.ASCII)


def _parse_internal_location(spec: str) -> str:
    """``/_mpackhub_packs/`` → itself: a path of plain segments that starts and ends with ``/``; "" is off."""
    spec = spec.strip()
    if spec and (not _INTERNAL_LOCATION.fullmatch(spec) or {".", ".."} & set(spec.split("/"))):
        raise SettingsError("MPACKHUB_ACCEL_REDIRECT is the path of the proxy's internal location serving the "
                            f"store's mpacks/ directory, e.g. /_mpackhub_packs/ (starting and ending with /); not {spec!r}")
    return spec


def _parse_keys(spec: str) -> tuple[tuple[str, bytes], ...]:
    """``kid:secret,kid2:secret2`` oldest → newest; the last one signs."""
    keys = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, secret = item.partition(":")
        if not sep or not kid or len(secret) < 16:
            raise SettingsError("MPACKHUB_SIGNING_KEYS entries are kid:secret with a secret of 16+ characters")
        keys.append((kid, secret.encode("utf-8")))
    return tuple(keys)


def _needs_generated(environ: Mapping[str, str]) -> bool:
    return not (environ.get("MPACKHUB_ADMIN_TOKEN") and environ.get("MPACKHUB_SIGNING_KEYS"))


def secrets_path(home: Path) -> Path:
    return home / "secrets.json"


def _generated_secrets(home: Path) -> dict[str, str]:
    """Load, or create once with mode 0600, the secrets of an embedded install."""
    path = secrets_path(home)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        pass
    wanted = {
        "admin_token": "mph_admin_" + secrets.token_urlsafe(32),
        "signing_keys": "k1:" + secrets.token_urlsafe(32),
    }
    # Write a private temp file, then link it into place: the link fails if another
    # worker got there first, and nobody ever reads a half-written file.
    tmp = home / f".secrets.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(wanted, out)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return json.loads(path.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return wanted
