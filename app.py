"""The WSGI application: ``create_app(hub)`` builds it; ``get_app()`` reads the environment.

gunicorn loads ``app:get_app()`` (see gunicorn.conf.py); ``app.app`` is built
on first access for servers that want a module attribute. Nothing is built at
import time.
"""
from __future__ import annotations

import os

import falcon

from mpack.http import errors as http_errors
from mpack.http.admin import AdminGcAction, AdminLogin, AdminLogout, AdminPage, AdminRetry
from mpack.http.bodies import BodyMiddleware, Intake
from mpack.http.clients import note_client
from mpack.http.logs import configure_logging, with_request_id
from mpack.http.resources import AdminFsck, AdminGc, AdminJobs, AdminUsers, ApiRepos, Download, Health, Metrics, Wire
from mpack.http.send_timeout import SendBounds
from mpack.hub.bootstrap import build_hub
from mpack.hub.db import discard_connection
from mpack.hub.services import Hub
from mpack.hub.settings import Settings

WIRE_SUFFIXES = {
    "refs": "refs", "filter-objects": "filter_objects", "presign": "presign",
    "push/objects": "push_objects", "push": "push", "fetch": "fetch",
    "negotiate": "negotiate", "fetch/mpack": "fetch_mpack",
}


class HubApp:
    """The Falcon app together with the hub it serves (gunicorn hooks reach the pool here)."""

    def __init__(self, falcon_app: falcon.App, hub: Hub) -> None:
        self.falcon_app = falcon_app
        self.hub = hub
        self._trusted_proxies = frozenset(hub.settings.trusted_proxies)

    def __call__(self, environ, start_response):
        note_client(environ, self._trusted_proxies)
        return with_request_id(self.falcon_app, environ, start_response)


def create_app(hub: Hub) -> HubApp:
    api = falcon.App(cors_enable=False, middleware=[BodyMiddleware(Intake(hub.settings))])
    api.req_options.auto_parse_form_urlencoded = False
    api.req_options.strip_url_path_trailing_slash = True
    http_errors.install(api, lambda: discard_connection(hub.db))
    api.add_route("/healthz", Health(hub))
    api.add_route("/metrics", Metrics(hub))
    api.add_route("/admin", AdminPage(hub))
    api.add_route("/admin/login", AdminLogin(hub))
    api.add_route("/admin/logout", AdminLogout(hub))
    api.add_route("/admin/actions/retry", AdminRetry(hub))
    api.add_route("/admin/actions/gc", AdminGcAction(hub))
    api.add_route("/admin/users", AdminUsers(hub))
    api.add_route("/admin/jobs", AdminJobs(hub))
    api.add_route("/admin/gc", AdminGc(hub))
    api.add_route("/admin/fsck", AdminFsck(hub))
    repos = ApiRepos(hub)
    api.add_route("/api/repos", repos)
    api.add_route("/api/repos/{owner}/{name}", repos, suffix="one")
    wire = Wire(hub)
    for path, suffix in WIRE_SUFFIXES.items():
        api.add_route(f"/{{owner}}/{{repo}}/{path}", wire, suffix=suffix)
    settings = hub.settings
    sends = SendBounds(settings.send_timeout, settings.download_min_rate, on_cut=hub.metrics.download_cut)
    api.add_route("/mpacks/{mpack_id}", Download(hub, sends))
    return HubApp(api, hub)


def get_app(environ: dict | None = None) -> HubApp:
    settings = Settings.from_env(os.environ if environ is None else environ)
    configure_logging(settings.log_level)
    return create_app(build_hub(settings))


_built: list[HubApp] = []


def __getattr__(name: str) -> HubApp:
    """``app.app``: built from the environment on first access, then reused."""
    if name != "app":
        raise AttributeError(name)
    if not _built:
        _built.append(get_app())
    return _built[0]
