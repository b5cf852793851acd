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

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.nginx import Nginx, quoted, stop_process_group, which

__all__ = ["HTTP_BACKEND", "GitSmartHttp", "git_http_missing", "have_git_http"]

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def git_http_missing() -> str | None:
    """None when git smart HTTP can be served here, else why not (for skip messages)."""
    missing = [name for name in ("git", "nginx", "fcgiwrap") if which(name) is None]
    if not os.access(HTTP_BACKEND, os.X_OK):
        missing.append(HTTP_BACKEND)
    if not missing:
        return None
    return ("git smart-HTTP anchor unavailable: missing " + ", ".join(missing)
            + " (apt-get install -y git nginx fcgiwrap)")


def have_git_http() -> bool:
    """True when git, nginx, fcgiwrap and git-http-backend are all installed."""
    return git_http_missing() is None


class GitSmartHttp(Nginx):
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
        super().__init__(self._locations, worker_processes=worker_processes, access_log=access_log)
        self.fcgi_children = fcgi_children
        self._fcgi: subprocess.Popen | None = None
        self._fcgi_log = None

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name.strip('/')}"

    def start(self) -> None:
        reason = git_http_missing()
        if reason:
            raise RuntimeError(reason)
        self._tmp_obj = tempfile.TemporaryDirectory(prefix="gitsmarthttp-")
        self.tmp = Path(self._tmp_obj.name)
        try:
            self._start_fcgiwrap()
            super().start()
        except BaseException:
            self.stop()
            raise

    def _start_fcgiwrap(self) -> None:
        assert self.tmp is not None
        sock = self.tmp / "fcgiwrap.sock"
        self._fcgi_log = open(self.tmp / "fcgiwrap.log", "ab")
        self._fcgi = subprocess.Popen(
            [which("fcgiwrap"), "-c", str(self.fcgi_children), "-s", f"unix:{sock}",
             "-p", HTTP_BACKEND],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._fcgi_log,
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

    def _locations(self, tmp: Path) -> str:
        return f"""
        client_max_body_size 0;
        location / {{
            fastcgi_pass unix:{tmp / 'fcgiwrap.sock'};
            fastcgi_buffering off;
            fastcgi_request_buffering off;
            fastcgi_read_timeout 3600s;
            fastcgi_send_timeout 3600s;
            fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_PROJECT_ROOT {quoted(self.repo_root)};
            fastcgi_param PATH_INFO $uri;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_USER $remote_user;
            fastcgi_param GIT_PROTOCOL $http_git_protocol;
        }}"""

    def error_log(self) -> str:
        """nginx's error log and stderr, and fcgiwrap's (for diagnostics)."""
        log = self.tmp / "fcgiwrap.log" if self.tmp is not None else None
        fcgi = "\n== fcgiwrap.log\n" + log.read_text(errors="replace") if log is not None and log.exists() else ""
        return super().error_log() + fcgi

    def stop(self) -> None:
        stop_process_group(self._fcgi, signal.SIGTERM)
        self._fcgi = None
        if self._fcgi_log is not None:
            self._fcgi_log.close()
            self._fcgi_log = None
        super().stop()  # nginx, then the temporary directory
