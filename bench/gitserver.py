"""git's smart HTTP on 127.0.0.1, the way shared/BENCHMARKS.md measures the anchor.

nginx (Debian package ``nginx``) in front of fcgiwrap (Debian package
``fcgiwrap``) in front of ``git http-backend``::

    with GitSmartHttp("/path/to/repos") as server:
        subprocess.run(["git", "clone", "--no-checkout", server.repo_url("ref.git"), "dst"])

Everything runs as the current user from a temporary directory (config, pid
file, logs, nginx temp paths, the fcgiwrap socket); nothing under /etc or
/var is touched. Both processes run in their own session and their whole
process groups are stopped on exit, so no git-http-backend or nginx worker
outlives the block. ``have_git_http()`` says whether the pieces are
installed; ``git_http_missing()`` names what is missing, for a skip message.
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
from pathlib import Path
from typing import Self

from bench.util import free_port

__all__ = ["HTTP_BACKEND", "GitSmartHttp", "git_http_missing", "have_git_http"]

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:  # nginx and fcgiwrap live in sbin, often not on a user's PATH
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def git_http_missing() -> str | None:
    """None when git smart HTTP can be served here, else why not (for skip messages)."""
    missing = [name for name in ("git", "nginx", "fcgiwrap") if _which(name) is None]
    if not os.access(HTTP_BACKEND, os.X_OK):
        missing.append(HTTP_BACKEND)
    if not missing:
        return None
    return ("git smart-HTTP anchor unavailable: missing " + ", ".join(missing)
            + " (apt-get install -y git nginx fcgiwrap)")


def have_git_http() -> bool:
    """True when git, nginx, fcgiwrap and git-http-backend are all installed."""
    return git_http_missing() is None


def _q(value: str | os.PathLike) -> str:
    """A quoted nginx config string."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class GitSmartHttp:
    """Serve every repository under ``repo_root`` at ``{url}/{name}`` over git smart HTTP.

    ``fcgi_children`` is fcgiwrap's number of preforked workers (concurrent
    requests to git-http-backend). Pushes are accepted when a repository has
    ``http.receivepack`` set (``bench.synth_export.make_git_repo`` sets it); requests
    are anonymous. Besides the parameters BENCHMARKS.md names, the config
    passes ``GIT_PROTOCOL`` so clients get protocol v2, as from any modern
    git host.
    """

    def __init__(self, repo_root: str | os.PathLike, *, fcgi_children: int = 4,
                 worker_processes: int = 1, access_log: bool = False) -> None:
        self.repo_root = Path(repo_root).resolve()
        if not self.repo_root.is_dir():
            raise FileNotFoundError(f"no such directory: {self.repo_root}")
        self.fcgi_children = fcgi_children
        self.worker_processes = worker_processes
        self.access_log = access_log
        self.port: int | None = None
        self.tmp: Path | None = None
        self._tmp_obj: tempfile.TemporaryDirectory | None = None
        self._fcgi: subprocess.Popen | None = None
        self._nginx: subprocess.Popen | None = None
        self._logs: list = []

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self.port}"

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name.strip('/')}"

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        reason = git_http_missing()
        if reason:
            raise RuntimeError(reason)
        self._tmp_obj = tempfile.TemporaryDirectory(prefix="gitsmarthttp-")
        self.tmp = Path(self._tmp_obj.name)
        try:
            self._start_fcgiwrap()
            for attempt in range(5):
                self.port = free_port()
                if self._start_nginx():
                    return
            raise RuntimeError("nginx did not come up: " + self.error_log()[-2000:])
        except BaseException:
            self.stop()
            raise

    def _start_fcgiwrap(self) -> None:
        assert self.tmp is not None
        sock = self.tmp / "fcgiwrap.sock"
        self._fcgi = subprocess.Popen(
            [_which("fcgiwrap"), "-c", str(self.fcgi_children), "-s", f"unix:{sock}",
             "-p", HTTP_BACKEND],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log("fcgiwrap.log"),
            start_new_session=True, cwd=self.tmp,
        )
        deadline = time.monotonic() + 10
        while not sock.exists():
            if self._fcgi.poll() is not None:
                raise RuntimeError("fcgiwrap exited: "
                                   + (self.tmp / "fcgiwrap.log").read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise RuntimeError("fcgiwrap did not create its socket")
            time.sleep(0.01)

    def _config(self) -> str:
        assert self.tmp is not None and self.port is not None
        t = self.tmp
        user = ""
        if os.geteuid() == 0:  # a root master would otherwise drop workers to "nobody"
            user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                    f"{grp.getgrgid(os.getegid()).gr_name};")
        access = f"access_log {_q(t / 'access.log')};" if self.access_log else "access_log off;"
        return f"""
daemon off;
master_process on;
worker_processes {self.worker_processes};
pid {_q(t / 'nginx.pid')};
error_log {_q(t / 'error.log')} warn;
{user}
events {{ worker_connections 256; }}
http {{
    {access}
    client_body_temp_path {_q(t / 'client_body')};
    proxy_temp_path {_q(t / 'proxy')};
    fastcgi_temp_path {_q(t / 'fastcgi')};
    uwsgi_temp_path {_q(t / 'uwsgi')};
    scgi_temp_path {_q(t / 'scgi')};
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{self.port};
        server_name localhost;
        client_max_body_size 0;
        location / {{
            fastcgi_pass unix:{t / 'fcgiwrap.sock'};
            fastcgi_buffering off;
            fastcgi_request_buffering off;
            fastcgi_read_timeout 3600s;
            fastcgi_send_timeout 3600s;
            fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_PROJECT_ROOT {_q(self.repo_root)};
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
        }}
    }}
}}
"""

    def _start_nginx(self) -> bool:
        """Start nginx on ``self.port``; False if it died (port taken), to retry."""
        assert self.tmp is not None
        conf = self.tmp / "nginx.conf"
        conf.write_text(self._config())
        log = self.tmp / "error.log"
        self._nginx = subprocess.Popen(
            [_which("nginx"), "-p", str(self.tmp), "-c", str(conf), "-e", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log("nginx.stderr"),
            start_new_session=True, cwd=self.tmp,
        )
        deadline = time.monotonic() + 10
        while True:
            if self._nginx.poll() is not None:
                self._nginx = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                if time.monotonic() > deadline:
                    self._stop_proc(self._nginx, signal.SIGQUIT)
                    self._nginx = None
                    return False
                time.sleep(0.02)

    def _log(self, name: str):
        assert self.tmp is not None
        fh = open(self.tmp / name, "ab")
        self._logs.append(fh)
        return fh

    def error_log(self) -> str:
        """nginx's error log and stderr (for diagnostics)."""
        if self.tmp is None:
            return ""
        parts = []
        for name in ("nginx.stderr", "error.log", "fcgiwrap.log"):
            p = self.tmp / name
            if p.exists():
                parts.append(f"== {name}\n" + p.read_text(errors="replace"))
        return "\n".join(parts)

    @staticmethod
    def _stop_proc(proc: subprocess.Popen | None, sig: int) -> None:
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

    def stop(self) -> None:
        self._stop_proc(self._nginx, signal.SIGQUIT)   # graceful: workers finish, then exit
        self._nginx = None
        self._stop_proc(self._fcgi, signal.SIGTERM)
        self._fcgi = None
        self.port = None
        for fh in self._logs:
            fh.close()
        self._logs.clear()
        if self._tmp_obj is not None:
            self._tmp_obj.cleanup()
            self._tmp_obj = None
            self.tmp = None
