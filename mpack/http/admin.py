"""The admin status page: ``GET /admin``, log in and out, retry a job, run GC (dry run first).

Logging in with the admin token sets the cookie ``mpackhub_admin``: a signed
session value (``mpack.hub.admin_session``), never the token; ``HttpOnly``,
``SameSite=Strict``, ``Path=/admin``, and ``Secure`` when the public URL is
https. Every POST is refused cross-site twice over: ``Sec-Fetch-Site`` (when
the browser sends it) must be ``same-origin`` and ``Origin`` (when sent) must
be the hub's; and, once logged in, the form must carry the session's CSRF
token. After an action the browser is redirected (303) back to the page.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import falcon

from mpack.http import admin_html
from mpack.http.bodies import read_raw
from mpack.hub import admin_session, gc, jobs, status
from mpack.hub.errors import BadRequest, BodyTooLarge, Forbidden, InvalidField, MalformedBody, Unauthorized

if TYPE_CHECKING:
    from mpack.hub.services import Hub

COOKIE = "mpackhub_admin"
FORM_LIMIT = 16 * 1024
FORM = "application/x-www-form-urlencoded"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def read_form(req: falcon.Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body of at most 16 KiB → {name: first value}."""
    if (req.content_type or "").split(";")[0].strip().lower() != FORM:
        raise BadRequest(f"expected a form ({FORM})")
    if (req.content_length or 0) > FORM_LIMIT:
        raise BodyTooLarge(f"a form is at most {FORM_LIMIT} bytes")
    raw = read_raw(req, FORM_LIMIT)  # with the body deadline and readers (mpack.http.bodies)
    try:
        fields = parse_qs(bytes(raw).decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise MalformedBody("malformed form") from None
    return {name: values[0] for name, values in fields.items()}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(hub: Hub, req: falcon.Request) -> None:
    """Refuse a POST a browser marks as cross-site, or whose Origin is not this hub."""
    site = req.get_header("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
    origin = req.get_header("Origin")
    allowed = {_origin(hub.settings.public_url), f"{req.scheme}://{req.netloc}".lower()}
    if origin is not None and origin.strip().lower() not in allowed:
        raise Forbidden("cross-origin request refused (Origin is not this hub)")


def _redirect(resp: falcon.Response, location: str) -> None:
    resp.status = falcon.HTTP_303
    resp.location = location


def _html(resp: falcon.Response, body: bytes, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_HTML
    resp.set_headers(SECURITY_HEADERS)
    resp.data = body


class AdminResource:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def session(self, req: falcon.Request) -> admin_session.Session:
        return admin_session.check(self.hub, req.cookies.get(COOKIE))

    def action(self, req: falcon.Request) -> dict[str, str]:
        """A logged-in, same-origin form with the session's CSRF token → its fields."""
        req.context.html = True
        session = self.session(req)
        check_same_origin(self.hub, req)
        form = read_form(req)
        admin_session.check_csrf(session, form.get("csrf"))
        return form


class AdminPage(AdminResource):
    def on_get(self, req, resp):
        req.context.html = True
        try:
            session = self.session(req)
        except Unauthorized:
            _redirect(resp, "/admin/login")
            return
        _html(resp, admin_html.status_page(status.overview(self.hub), session.csrf, req.get_param("done")))


class AdminLogin(AdminResource):
    def on_get(self, req, resp):
        _html(resp, admin_html.login_page())

    def on_post(self, req, resp):
        req.context.html = True
        check_same_origin(self.hub, req)
        try:
            session = admin_session.login(self.hub, read_form(req).get("token"))
        except Forbidden:
            _html(resp, admin_html.login_page("That is not the admin token."), falcon.HTTP_403)
            return
        resp.set_cookie(COOKIE, session.value, max_age=admin_session.SESSION_TTL, path="/admin",
                        secure=self.hub.settings.public_url.startswith("https://"), http_only=True, same_site="Strict")
        _redirect(resp, "/admin")


class AdminLogout(AdminResource):
    def on_post(self, req, resp):
        self.action(req)
        resp.unset_cookie(COOKIE, path="/admin", same_site="Strict")
        _redirect(resp, "/admin/login")


class AdminRetry(AdminResource):
    def on_post(self, req, resp):
        jobs.retry(self.hub, self.action(req).get("job_id", ""))
        _redirect(resp, "/admin?done=retried#jobs")


class AdminGcAction(AdminResource):
    """``mode=dry_run`` deletes nothing and shows the confirm button; ``mode=run`` needs ``confirm=yes``."""

    def on_post(self, req, resp):
        form = self.action(req)
        mode = form.get("mode")
        if mode not in ("dry_run", "run"):
            raise InvalidField("mode", "must be dry_run or run")
        if mode == "run" and form.get("confirm") != "yes":
            raise InvalidField("confirm", "a real GC run needs confirm=yes (run a dry run first)")
        gc.run_gc(self.hub, dry_run=mode == "dry_run")
        _redirect(resp, f"/admin?done=gc_{mode}#gc")
