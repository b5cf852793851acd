"""The admin status page's HTML: plain server-rendered markup, a little inline CSS, no JavaScript.

Every value that reaches the page goes through ``esc`` (``html.escape`` with
quotes), attribute values included. Forms that change something carry the
session's CSRF token.
"""
from __future__ import annotations

import time
from html import escape

CONFIRM_WINDOW = 15 * 60  # a dry run older than this must be repeated before a real run

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{display:flex;justify-content:space-between;align-items:center;padding:.6em 1.2em;background:#1f2937;color:#fff}
header h1{font-size:1.2em;margin:0}
main{padding:1em 1.2em;max-width:1200px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin-bottom:1em}
h2{font-size:1.05em;margin:.2em 0 .6em}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #eee;vertical-align:top}
th{background:#fafafa}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px}
.notice{background:#e7f5e9;border:1px solid #9c9;padding:.5em 1em;border-radius:6px;margin-bottom:1em}
.error{background:#fdecea;border:1px solid #e99;padding:.5em 1em;border-radius:6px}
.muted{color:#777}
button{cursor:pointer}
form.inline{display:inline}
.login{max-width:360px;margin:4em auto;background:#fff;border:1px solid #ddd;border-radius:6px;padding:1.2em}
.login input{width:100%;box-sizing:border-box;margin:.4em 0 .8em;padding:.4em}
"""

NOTICES = {
    "retried": "The job was put back in the queue.",
    "gc_dry_run": "GC dry run finished: nothing was deleted. Review the report, then confirm below.",
    "gc_run": "GC finished.",
}


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def size(n: float | int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    if s < 120:
        return f"{sign}{s}s"
    if s < 7200:
        return f"{sign}{s // 60}m"
    if s < 172800:
        return f"{sign}{s // 3600}h"
    return f"{sign}{s // 86400}d"


def when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def document(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>").encode()


def _table(headers: list[str], rows: list[list[str]], *, numeric: set[int] = frozenset(), table_id: str = "") -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _csrf(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


# -- pages ---------------------------------------------------------------------------

def login_page(error: str | None = None) -> bytes:
    problem = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
    return document("mpackhub admin: log in", f"""
<div class="login"><h1>mpackhub admin</h1>{problem}
<form method="post" action="/admin/login" id="login-form">
<label for="token">Admin token</label>
<input type="password" name="token" id="token" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button></form>
<p class="muted">The admin token is MPACKHUB_ADMIN_TOKEN, or admin_token in secrets.json under the hub's home.</p>
</div>""")


def error_page(status: str, detail: str) -> bytes:
    return document(f"mpackhub admin: {status}", f"""
<main><section><h2>{esc(status)}</h2><p class="error">{esc(detail)}</p>
<p><a href="/admin">Back to the status page</a></p></section></main>""")


def status_page(data: dict, csrf: str, notice: str | None = None) -> bytes:
    shown = f'<p class="notice" id="notice">{esc(NOTICES[notice])}</p>' if notice in NOTICES else ""
    header = f"""<header><h1>mpackhub status <span class="muted">{esc(data["public_url"])}</span></h1>
<form method="post" action="/admin/logout" class="inline">{_csrf(csrf)}<button type="submit" id="logout">Log out</button></form>
</header>"""
    sections = (_disk(data["disk"]) + _cache(data) + _jobs(data["jobs"], csrf) + _repositories(data["repositories"])
                + _gc(data["gc_reports"], csrf, data["now"]))
    return document("mpackhub status", f"{header}<main>{shown}{sections}</main>")


# -- sections --------------------------------------------------------------------------

def _disk(disk: dict) -> str:
    quota = disk["cache_max_bytes"]
    if quota:
        used = min(disk["cache_bytes"], quota)
        meter = (f'<meter id="cache-meter" min="0" max="{esc(quota)}" value="{esc(used)}" high="{esc(int(quota * 0.9))}">'
                 f"</meter> {esc(size(disk['cache_bytes']))} of {esc(size(quota))} "
                 f"({esc(round(100 * disk['cache_bytes'] / quota))} %)")
    else:
        meter = f"{esc(size(disk['cache_bytes']))} (no MPACKHUB_CACHE_MAX_BYTES quota)"
    rows = [
        ["Store: blobs", esc(size(disk["blob_bytes"]))],
        ["Cache: packs named by fresh rows", meter],
        ["Cache: packs named by expired rows (GC frees those no fresh row names)", esc(size(disk["expired_cache_bytes"]))],
        ["File system of the hub's home: free of total", f"{esc(size(disk['disk_free']))} of {esc(size(disk['disk_total']))}"],
    ]
    return f'<section id="disk"><h2>Disk</h2>{_table(["", ""], rows)}</section>'


def _cache(data: dict) -> str:
    rate = data["hit_rate"]
    counts = ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(rate["counts"].items())) or "no fetches yet"
    shown = "-" if rate["rate"] is None else f"{rate['rate'] * 100:.1f} %"
    rows = [[esc(r["repo"]), f'<code title="{esc(r["tip"])}">{esc(r["tip"][:23])}</code>', esc("delta" if r["delta"] else "full"),
             esc(size(r["size"])), esc(r["commits"]), esc(r["hits"]), esc(duration(r["expires_in"])),
             esc(duration(r["last_used_ago"]))] for r in data["cache"]]
    table = _table(["Repository", "Tip", "Kind", "Size", "Commits", "Hits", "Expires in", "Last used"], rows,
                   numeric={3, 4, 5, 6, 7}, table_id="cache-rows")
    return (f'<section id="cache"><h2>Fetch cache</h2><p>Hit rate since start: <strong id="hit-rate">{esc(shown)}</strong>'
            f' <span class="muted">({counts})</span></p>{table}'
            f'<p class="muted">Hits are written at most once a minute per row.</p></section>')


def _job_rows(items: list[dict], csrf: str, *, retry: bool) -> list[list[str]]:
    rows = []
    for job in items:
        row = [f'<code title="{esc(job["job_id"])}">{esc(job["job_id"][:12])}</code>', esc(job["job_type"]),
               esc(job["repo_id"] or "-"), esc(f'{job["attempt"]}/{job["max_attempts"]}'), esc(when(job["created_at"])),
               f'<code class="last-error">{esc(job["last_error"] or "")}</code>']
        if retry:
            row.append(f'<form method="post" action="/admin/actions/retry" class="inline">{_csrf(csrf)}'
                       f'<input type="hidden" name="job_id" value="{esc(job["job_id"])}">'
                       f'<button type="submit" class="retry">Retry</button></form>')
        rows.append(row)
    return rows


def _jobs(jobs: dict, csrf: str) -> str:
    counts = " · ".join(f'{esc(status)} <strong id="jobs-{esc(status)}">{esc(n)}</strong>'
                        for status, n in jobs["counts"].items())
    headers = ["Job", "Type", "Repo", "Attempt", "Created", "Last error"]
    parts = [f'<section id="jobs"><h2>Jobs</h2><p>{counts}</p>']
    for status in ("pending", "running", "failed"):
        failed = status == "failed"
        rows = _job_rows(jobs[status], csrf, retry=failed)
        parts.append(f"<h3>{esc(status.capitalize())}</h3>"
                     + _table(headers + ([""] if failed else []), rows, table_id=f"jobs-{status}-table"))
    parts.append("</section>")
    return "".join(parts)


def _repositories(repos: list[dict]) -> str:
    rows = [[esc(r["name"]), esc(r["visibility"]), esc(r["commits"]), esc(r["branches"]), esc(r["objects"]),
             esc(size(r["object_bytes"])), esc(r["cache_rows"]), esc(size(r["cache_bytes"]))] for r in repos]
    table = _table(["Repository", "Visibility", "Commits", "Branches", "Objects", "Object bytes", "Cache rows",
                    "Cache bytes"], rows, numeric={2, 3, 4, 5, 6, 7}, table_id="repos-table")
    return f'<section id="repos"><h2>Repositories</h2>{table}</section>'


def _gc_report_rows(reports: list[dict]) -> list[list[str]]:
    return [[esc(when(r["started_at"])), esc(r["scope"] or "all"), esc("dry run" if r["dry_run"] else "run"),
             esc(r["report"]["cache_rows_deleted"] + r["report"]["quota_rows_evicted"]),
             esc(r["report"]["mpacks_deleted"] + r["report"]["orphans_deleted"]), esc(size(r["report"]["bytes_freed"])),
             esc(r["report"]["jobs_pruned"]), esc(r["report"]["duration_ms"])] for r in reports]


def _gc(reports: list[dict], csrf: str, now: float) -> str:
    table = _table(["Started", "Scope", "Mode", "Rows", "Files", "Bytes", "Jobs pruned", "ms"], _gc_report_rows(reports),
                   numeric={3, 4, 5, 6, 7}, table_id="gc-reports")
    preview = (f'<form method="post" action="/admin/actions/gc" class="inline">{_csrf(csrf)}'
               f'<input type="hidden" name="mode" value="dry_run"><button type="submit" id="gc-dry-run">'
               f"GC dry run (deletes nothing)</button></form>")
    latest = reports[0] if reports else None
    confirm = ""
    if latest is not None and latest["dry_run"] and now - latest["started_at"] < CONFIRM_WINDOW:
        would = latest["report"]
        confirm = (f'<form method="post" action="/admin/actions/gc" class="inline" id="gc-confirm-form">{_csrf(csrf)}'
                   f'<input type="hidden" name="mode" value="run"><input type="hidden" name="confirm" value="yes">'
                   f'<button type="submit" id="gc-run">Run GC for real: free {esc(size(would["bytes_freed"]))}, '
                   f'{esc(would["cache_rows_deleted"] + would["quota_rows_evicted"])} rows</button></form>')
    return f'<section id="gc"><h2>Garbage collection</h2><p>{preview} {confirm}</p>{table}</section>'
