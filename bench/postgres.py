"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian's ``postgresql`` package).

``throwaway_postgres(tmp_dir)`` is a context manager yielding a database URL
(``postgresql://mpackhub@127.0.0.1:PORT/mpackhub``); ``postgres_cluster(tmp_dir)``
yields the ``PostgresCluster`` itself, for tests that stop and start the server
or want one fresh database per test (``create_database``). The cluster:

- is ``initdb``-ed into a fresh directory with trust authentication for local
  connections only, listens on 127.0.0.1 and a free port, keeps its unix socket
  in its own directory, and runs with ``fsync=off`` (a test cluster is never
  worth the disk flushes);
- runs as the unprivileged system user ``mpackhub-test`` (created with
  ``useradd`` if missing) when the caller is root, because ``initdb`` and
  ``postgres`` refuse to run as root; as anyone else it runs as the caller;
- is stopped (``pg_ctl stop -m immediate``) and its directory removed on exit.

The binaries are found in ``$MPACKHUB_PG_BIN``, else the newest
``/usr/lib/postgresql/*/bin``, else on ``PATH``.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_USER = "mpackhub-test"
SUPERUSER = "mpackhub"
DATABASE = "mpackhub"
START_TIMEOUT_S = 60

# Speed over durability: this cluster is thrown away.
SERVER_OPTIONS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "listen_addresses": "127.0.0.1",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries on this machine, or the cluster would not start."""


def find_bin_dir() -> Path:
    configured = os.environ.get("MPACKHUB_PG_BIN")
    if configured:
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable("no initdb found: install Debian's postgresql package or set MPACKHUB_PG_BIN")


def available() -> bool:
    try:
        return (find_bin_dir() / "pg_ctl").exists()
    except PostgresUnavailable:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SERVICE_USER)


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from / down to ``path`` lets other users through (o+x)."""
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


@dataclass
class PostgresCluster:
    """One initdb-ed cluster in ``root``; ``start``/``stop`` may be called repeatedly."""

    root: Path
    port: int
    bin_dir: Path
    run_as: pwd.struct_passwd | None = None
    _databases: int = field(default=0, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self.run_as is not None:
            command = ["setpriv", f"--reuid={self.run_as.pw_uid}", f"--regid={self.run_as.pw_gid}",
                       "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root,
                                env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"})
        if check and result.returncode != 0:
            raise PostgresUnavailable(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}"
                                      f"\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.run_as is not None:
            for path in (self.root, self.socket_dir, self.data_dir):
                os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")

    def start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in {
            **SERVER_OPTIONS, "port": str(self.port), "unix_socket_directories": str(self.socket_dir)}.items())
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", str(START_TIMEOUT_S), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(START_TIMEOUT_S))

    def is_running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser, outside a transaction (psycopg2 if installed, else psql)."""
        try:
            import psycopg2
        except ImportError:
            self.psql(sql, database)
            return
        conn = psycopg2.connect(self.url(database), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through psql as the superuser; returns its unaligned output."""
        result = self._run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                           "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql)
        return result.stdout.strip()

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """Create a database (copied from ``template`` if given) and return its URL."""
        if name is None:
            self._databases += 1
            name = f"t{os.getpid()}_{self._databases}"
        clause = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_cluster(tmp_dir: Path | str) -> Iterator[PostgresCluster]:
    """A started cluster with an empty ``mpackhub`` database; stopped and removed on exit."""
    bin_dir = find_bin_dir()
    run_as = _ensure_service_user() if os.geteuid() == 0 else None
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # The server runs as another user: it must be able to reach its directory.
    parent = tmp_dir if run_as is None or _traversable_by_others(tmp_dir) else None
    root = Path(tempfile.mkdtemp(prefix="mpackhub-pg-", dir=parent))
    if run_as is not None:
        os.chmod(root, 0o755)
    cluster = None
    try:
        cluster = _started(root, bin_dir, run_as)
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        if cluster is not None and cluster.is_running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _started(root: Path, bin_dir: Path, run_as: pwd.struct_passwd | None) -> PostgresCluster:
    cluster = PostgresCluster(root, _free_port(), bin_dir, run_as)
    cluster.init()
    for attempt in range(3):  # the free port may be taken between choosing and binding it
        try:
            cluster.start()
            return cluster
        except PostgresUnavailable:
            if attempt == 2:
                raise
            cluster.port = _free_port()
            time.sleep(0.1)
    return cluster


@contextmanager
def throwaway_postgres(tmp_dir: Path | str) -> Iterator[str]:
    """A started throwaway cluster; yields the URL of its empty ``mpackhub`` database."""
    with postgres_cluster(tmp_dir) as cluster:
        yield cluster.url()
