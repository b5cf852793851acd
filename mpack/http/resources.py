"""HTTP resources: parse, make one domain call, render. No SQL, hashing or file I/O here."""
from __future__ import annotations

from typing import TYPE_CHECKING

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mpack.format.errors import MuseError
from mpack.http.clients import client_of, from_trusted_proxy
from mpack.http.media import large_limits, read_body, send, small_limits
from mpack.http.send_timeout import SendBounds
from mpack.hub import auth, bundle, download, fetch, fsck, gc, health, job_reports, metrics, push, repos
from mpack.hub.errors import InvalidField

if TYPE_CHECKING:
    from mpack.hub.services import Hub


class Resource:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._limits = {False: small_limits(hub.settings), True: large_limits(hub.settings)}  # settings never change

    def body(self, req: falcon.Request, *, optional: bool = False, large: bool = False) -> dict:
        """The decoded body under this route's limits: ``large`` for push and push/objects only."""
        return read_body(req, self._limits[large], optional=optional)

    @staticmethod
    def user(req: falcon.Request):
        return auth.user_for(req.get_header("Authorization"))


class Health(Resource):
    def __init__(self, hub) -> None:
        super().__init__(hub)
        self.probes = health.WriteProbes()  # this process's recent write probes: the route is anonymous

    def on_get(self, req, resp):
        report = health.health(self.hub, self.probes)
        send(req, resp, report, falcon.HTTP_200 if report["status"] == "ok" else falcon.HTTP_503)


class Metrics(Resource):
    """``GET /metrics``: Prometheus text format, admin token required."""

    def on_get(self, req, resp):
        auth.require_admin(self.hub, req.get_header("Authorization"))
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(metrics.Scrape(self.hub.metrics, self.hub.settings, self.hub.now))


class AdminUsers(Resource):
    def on_post(self, req, resp):
        auth.require_admin(self.hub, req.get_header("Authorization"))
        user, token = auth.create_user(self.hub, self.body(req).get("username"))
        send(req, resp, {"username": user.username, "token": token}, falcon.HTTP_201)


class AdminJobs(Resource):
    def on_get(self, req, resp):
        auth.require_admin(self.hub, req.get_header("Authorization"))
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=50)
        send(req, resp, job_reports.overview(self.hub, limit=limit))


class AdminGc(Resource):
    def on_post(self, req, resp):
        auth.require_admin(self.hub, req.get_header("Authorization"))
        repo, dry_run = gc.parse_request(self.body(req, optional=True))
        send(req, resp, gc.run_gc(self.hub, repo=repo, dry_run=dry_run).as_dict())


class AdminFsck(Resource):
    def on_post(self, req, resp):
        auth.require_admin(self.hub, req.get_header("Authorization"))
        dry_run = fsck.parse_request(self.body(req, optional=True))
        send(req, resp, fsck.run_fsck(self.hub, dry_run=dry_run).as_dict())


class ApiRepos(Resource):
    def on_post(self, req, resp):
        owner = auth.require_user(req.get_header("Authorization"))
        body = self.body(req)
        repo = repos.create_repo(self.hub, owner, body.get("name"), body.get("visibility", "public"))
        send(req, resp, repos.describe(self.hub, repo), falcon.HTTP_201)

    def on_get_one(self, req, resp, owner, name):
        repo = repos.readable_repo(owner, name, self.user(req))
        send(req, resp, repos.describe(self.hub, repo))


class Wire(Resource):
    """The Muse wire protocol under ``/{owner}/{repo}/…`` (PROTOCOL.md)."""

    def on_get_refs(self, req, resp, owner, repo):
        send(req, resp, repos.refs(repos.readable_repo(owner, repo, self.user(req))))

    def on_post_filter_objects(self, req, resp, owner, repo):
        target = repos.writable_repo(owner, repo, self.user(req))
        object_ids = self.body(req).get("object_ids")
        if not isinstance(object_ids, list):
            raise InvalidField("object_ids", "must be a list")
        send(req, resp, {"missing": push.missing_objects(target, object_ids)})

    def on_post_presign(self, req, resp, owner, repo):
        target = repos.writable_repo(owner, repo, self.user(req))
        send(req, resp, bundle.presign_objects(self.hub, target, self.body(req)))

    def on_post_push_objects(self, req, resp, owner, repo):
        target = repos.writable_repo(owner, repo, self.user(req))
        send(req, resp, push.receive_objects(self.hub, target, self.body(req, large=True)))

    def on_post_push(self, req, resp, owner, repo):
        target = repos.writable_repo(owner, repo, self.user(req))
        send(req, resp, push.push(self.hub, target, self.body(req, large=True)))

    def on_post_fetch(self, req, resp, owner, repo):
        target = repos.readable_repo(owner, repo, self.user(req))
        send(req, resp, bundle.wire_fetch_bundle(self.hub, target, self.body(req)))

    def on_post_negotiate(self, req, resp, owner, repo):
        target = repos.readable_repo(owner, repo, self.user(req))
        send(req, resp, bundle.negotiate(target, self.body(req)))

    def on_post_fetch_mpack(self, req, resp, owner, repo):
        user = self.user(req)
        try:
            body = self.body(req)
        except MuseError:  # an unknown or hidden repo answers 404 before a bad body, as on every route
            repos.readable_repo(owner, repo, user)
            raise
        send(req, resp, fetch.fetch_mpack(self.hub, owner, repo, user, body, address=client_of(req.env)))


class Download(Resource):
    """``GET|HEAD /mpacks/{mpack_id}?expires&kid&sig``: a signed, ranged, sendfile download, its socket
    under the process's ``SendBounds`` (a client that stalls or trickles is cut)."""

    def __init__(self, hub, sends: SendBounds) -> None:
        super().__init__(hub)
        self.sends = sends
        self._proxies = frozenset(hub.settings.trusted_proxies)

    def on_get(self, req, resp, mpack_id):
        address = client_of(req.env)
        served = download.open_signed_download(self.hub, mpack_id, req.params, req.get_header("Range"),
                                               head=req.method == "HEAD", address=address,
                                               via_proxy=from_trusted_proxy(req.env, self._proxies))
        resp.status = falcon.HTTP_206 if served.partial else falcon.HTTP_200
        resp.content_type = "application/vnd.muse.mpack"
        resp.set_headers(served.headers)
        if served.stream is None:  # handed to the proxy (X-Accel-Redirect): it sends the file
            return
        if req.method == "HEAD":
            served.close()
            resp.content_length = served.length
        else:
            served.stream.when_closed(self.sends.bound(req.env, served.length, address))
            resp.set_stream(served.stream, served.length)

    on_head = on_get
