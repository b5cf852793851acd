"""nginx on 127.0.0.1 and a free port, run as the current user from a temporary directory.

The caller gives what goes inside the ``server`` block (its locations); the
rest — pid file, logs, temp paths, a root master's worker user — is here::

    with Nginx(lambda tmp: "location / { proxy_pass http://127.0.0.1:8000; }") as nginx:
        urllib.request.urlopen(nginx.url + "/healthz")

Nothing under /etc or /var is touched; nginx runs in its own session and its
whole process group is stopped on exit. ``nginx_missing()`` says why nginx
cannot run here (for skip messages).
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from bench.util import free_port

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def which(name: str) -> str | None:
    """A program on PATH, or in an sbin directory (nginx and fcgiwrap live there, often not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_missing() -> str | None:
    """None when nginx can be run here, else why not."""
    return None if which("nginx") else "nginx is not installed (apt-get install -y nginx)"


def quoted(value: str | os.PathLike) -> str:
    """A quoted nginx config string."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def stop_process_group(proc: subprocess.Popen | None, sig: int) -> None:
    """Stop ``proc`` and the process group it leads (it was started in a new session)."""
    if proc is None:
        return
    pgid = proc.pid
    if proc.poll() is None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    # the leader is gone; anything left in its group (workers, CGI children) goes too
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()


class Nginx:
    """One nginx serving ``server_body(tmp)`` on ``self.url``.

    ``tmp``: the directory for config, logs and temp paths (a new temporary one by default, removed on stop).
    ``port``: the port to listen on (a free one by default, retried if another process takes it first).
    """

    def __init__(self, server_body: Callable[[Path], str], *, tmp: Path | None = None, port: int | None = None,
                 worker_processes: int = 1, access_log: bool = False) -> None:
        self.server_body = server_body
        self.fixed_port = port
        self.worker_processes = worker_processes
        self.access_log = access_log
        self.tmp = tmp
        self.port: int | None = None
        self._tmp_obj: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nginx is not running")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        reason = nginx_missing()
        if reason:
            raise RuntimeError(reason)
        if self.tmp is None:
            self._tmp_obj = tempfile.TemporaryDirectory(prefix="nginx-")
            self.tmp = Path(self._tmp_obj.name)
        try:
            for _ in range(1 if self.fixed_port else 5):
                self.port = self.fixed_port or free_port()
                if self._start_once():
                    return
            raise RuntimeError("nginx did not come up: " + self.error_log()[-2000:])
        except BaseException:
            self.stop()
            raise

    def _config(self) -> str:
        assert self.tmp is not None and self.port is not None
        t = self.tmp
        user = ""
        if os.geteuid() == 0:  # a root master would otherwise drop workers to "nobody"
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        access = f"access_log {quoted(t / 'access.log')};" if self.access_log else "access_log off;"
        return f"""
daemon off;
master_process on;
worker_processes {self.worker_processes};
pid {quoted(t / 'nginx.pid')};
error_log {quoted(t / 'error.log')} warn;
{user}
events {{ worker_connections 256; }}
http {{
    {access}
    client_body_temp_path {quoted(t / 'client_body')};
    proxy_temp_path {quoted(t / 'proxy')};
    fastcgi_temp_path {quoted(t / 'fastcgi')};
    uwsgi_temp_path {quoted(t / 'uwsgi')};
    scgi_temp_path {quoted(t / 'scgi')};
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{self.port};
        server_name localhost;
{self.server_body(t)}
    }}
}}
"""

    def _start_once(self) -> bool:
        """Start nginx on ``self.port``; False if it died (port taken), to retry."""
        assert self.tmp is not None
        conf = self.tmp / "nginx.conf"
        conf.write_text(self._config())
        log = self.tmp / "error.log"
        if self._stderr is None:
            self._stderr = open(self.tmp / "nginx.stderr", "ab")
        self._proc = subprocess.Popen(
            [which("nginx"), "-p", str(self.tmp), "-c", str(conf), "-e", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            start_new_session=True, cwd=self.tmp,
        )
        deadline = time.monotonic() + 10
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    stop_process_group(self._proc, signal.SIGQUIT)
                    self._proc = None
                    return False
                time.sleep(0.02)

    def error_log(self) -> str:
        """nginx's error log and stderr (for diagnostics)."""
        if self.tmp is None:
            return ""
        parts = []
        for name in ("nginx.stderr", "error.log"):
            path = self.tmp / name
            if path.exists():
                parts.append(f"== {name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        stop_process_group(self._proc, signal.SIGQUIT)  # graceful: workers finish, then exit
        self._proc = None
        self.port = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._tmp_obj is not None:
            self._tmp_obj.cleanup()
            self._tmp_obj = None
            self.tmp = None
