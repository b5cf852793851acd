"""Prometheus metrics: what the hub counts, and the gauges read from the database at scrape time.

``HubMetrics`` holds the counters and histograms the domain records into
(``hub.metrics.fetch("hit")``, ``hub.metrics.pack_built(...)`` …). Each hub
owns its metric objects (never the library's global registry), so tests stay
independent.

Under gunicorn every worker is its own process: ``prometheus_client``'s
multiprocess mode keeps each process's values in memory-mapped files under
``PROMETHEUS_MULTIPROC_DIR`` (``Settings.metrics_dir``), and a scrape, in any
worker, sums the files of all of them. Job threads live in the workers, so
their work is counted too. The variable must be set before
``prometheus_client`` is first imported (``mpack.http.serving`` does it).

Gauges of shared state (cache rows and bytes, store bytes, jobs by status,
queue age, free disk) are not kept in any process: ``StateCollector``
computes them with a few SQL aggregates when Prometheus scrapes, so they are
right whichever worker answers. ``docs/operations.md`` lists every metric.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import peewee as pw
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from mpack.format.errors import MuseError
from mpack.hub.models import BackgroundJob, FetchMPackCache, Object
from mpack.hub.settings import Settings

FETCH_RESULTS = ("hit", "miss", "delta", "error")
PREFIX = "mpackhub"
# Pack builds take from milliseconds (a one-commit delta) to minutes (a large clone).
BUILD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class MetricsModeError(MuseError):
    """A metrics directory was given, but prometheus_client was imported before it was set."""

    code = "metrics_mode"


class HubMetrics:
    """The hub's counters and histograms; ``registry`` yields them (``Scrape`` adds the gauges).

    ``multiprocess_dir`` set: values live in that directory (one file per
    process) and ``registry`` merges every process's files on each scrape.
    Unset: values live in this object and ``registry`` holds them directly.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir and values.ValueClass is values.MutexValue:
            raise MetricsModeError(f"PROMETHEUS_MULTIPROC_DIR ({multiprocess_dir}) was set after prometheus_client "
                                   "was imported: start the hub with gunicorn.conf.py or 'mpackhub serve'")
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        own = None if multiprocess_dir else self.registry
        self._fetch_children: dict[str, object] = {}
        self.fetch_requests = Counter(f"{PREFIX}_fetch_requests", "fetch/mpack requests by result",
                                      ["result"], registry=own)
        self.bucket_urls = Counter(f"{PREFIX}_bucket_download_urls",
                                   "presigned bucket URLs of packs answered to fetches (the bucket serves them)",
                                   registry=own)
        self.download_bytes = Counter(f"{PREFIX}_download_bytes", "bytes sent by the signed download route",
                                      registry=own)
        self.downloads = Counter(f"{PREFIX}_downloads", "signed downloads by kind (full, range, proxied)", ["kind"],
                                 registry=own)
        self.downloads_cut = Counter(f"{PREFIX}_downloads_cut",
                                     "downloads cut for falling below MPACKHUB_DOWNLOAD_MIN_RATE", registry=own)
        self.pack_builds = Counter(f"{PREFIX}_pack_builds", "mpacks built (requests and prebuild jobs)",
                                   registry=own)
        self.pack_build_seconds = Histogram(f"{PREFIX}_pack_build_seconds", "time to build one mpack",
                                            buckets=BUILD_BUCKETS, registry=own)
        self.pack_build_bytes = Counter(f"{PREFIX}_pack_build_bytes", "bytes of the mpacks built", registry=own)
        self.job_runs = Counter(f"{PREFIX}_job_runs", "job attempts by type and outcome", ["type", "outcome"],
                                registry=own)
        self.job_seconds = Histogram(f"{PREFIX}_job_duration_seconds", "time one job attempt ran", ["type"],
                                     buckets=BUILD_BUCKETS, registry=own)
        self.gc_runs = Counter(f"{PREFIX}_gc_runs", "GC passes", ["mode"], registry=own)
        self.gc_rows = Counter(f"{PREFIX}_gc_rows_deleted", "cache rows GC deleted", ["reason"], registry=own)
        self.gc_files = Counter(f"{PREFIX}_gc_files_deleted", "files GC deleted", ["kind"], registry=own)
        self.gc_bytes = Counter(f"{PREFIX}_gc_bytes_freed", "bytes GC freed", registry=own)
        self.gc_jobs = Counter(f"{PREFIX}_gc_jobs_pruned", "finished jobs GC deleted", registry=own)
        self.pushes = Counter(f"{PREFIX}_pushes", "pushes by result (ok, rejected)", ["result"], registry=own)
        self.push_objects = Counter(f"{PREFIX}_push_objects", "objects received and stored by pushes",
                                    registry=own)
        self.push_bytes = Counter(f"{PREFIX}_push_bytes", "bytes of the objects pushes stored", registry=own)
        if multiprocess_dir:
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))

    # -- recording (called by the domain) ---------------------------------------------

    def fetch(self, result: str, *, bucket_url: bool = False) -> None:
        """One fetch request; ``bucket_url``: its answer is a presigned bucket URL, whose download the
        hub never sees (``downloads_total`` counts only the hub's own download route)."""
        child = self._fetch_children.get(result)
        if child is None:  # labels() validates and locks on every call: look each result up once
            child = self._fetch_children[result] = self.fetch_requests.labels(result=result)
        child.inc()
        if bucket_url and result != "error":
            self.bucket_urls.inc()

    def download(self, length: int, *, partial: bool) -> None:
        self.downloads.labels(kind="range" if partial else "full").inc()
        self.download_bytes.inc(length)

    def download_proxied(self) -> None:
        self.downloads.labels(kind="proxied").inc()

    def download_cut(self) -> None:
        self.downloads_cut.inc()

    def pack_built(self, seconds: float, size: int) -> None:
        self.pack_builds.inc()
        self.pack_build_seconds.observe(seconds)
        self.pack_build_bytes.inc(size)

    def job_ran(self, job_type: str, outcome: str, seconds: float) -> None:
        self.job_runs.labels(type=job_type, outcome=outcome).inc()
        self.job_seconds.labels(type=job_type).observe(seconds)

    def gc_ran(self, report) -> None:
        """Count one GC pass; a dry run frees nothing, so only its run is counted."""
        self.gc_runs.labels(mode="dry_run" if report.dry_run else "run").inc()
        if report.dry_run:
            return
        self._gc_deleted(report, evicted_for="quota")
        self.gc_files.labels(kind="orphan").inc(report.orphans_deleted)
        self.gc_jobs.inc(report.jobs_pruned)

    def room_made(self, report) -> None:
        """Count what the cache deleted to make room for a build at the disk's reserve (``gc.make_room``)."""
        self._gc_deleted(report, evicted_for="room")

    def _gc_deleted(self, report, *, evicted_for: str) -> None:
        self.gc_rows.labels(reason="expired").inc(report.cache_rows_deleted)
        self.gc_rows.labels(reason=evicted_for).inc(report.quota_rows_evicted)
        self.gc_files.labels(kind="mpack").inc(report.mpacks_deleted)
        self.gc_bytes.inc(report.bytes_freed)

    def pushed(self, result: str) -> None:
        self.pushes.labels(result=result).inc()

    def objects_stored(self, count: int, size: int) -> None:
        self.push_objects.inc(count)
        self.push_bytes.inc(size)

    # -- reading back (the admin page) ------------------------------------------------

    def totals(self, metric: str, label: str) -> dict[str, float]:
        """Current ``<metric>_total`` per value of ``label``, summed over every process."""
        wanted = f"{PREFIX}_{metric}_total"
        totals: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == wanted:
                    key = sample.labels.get(label, "")
                    totals[key] = totals.get(key, 0.0) + sample.value
        return totals


# -- gauges read at scrape time ---------------------------------------------------------

def _pack_bytes(condition) -> int:
    """Bytes of the packs the rows matching ``condition`` name, each pack once."""
    packs = (FetchMPackCache.select(FetchMPackCache.mpack_id, pw.fn.MAX(FetchMPackCache.size).alias("size"))
             .where(condition).group_by(FetchMPackCache.mpack_id))
    return int(FetchMPackCache.select(pw.fn.COALESCE(pw.fn.SUM(packs.c.size), 0)).from_(packs).scalar() or 0)


def cache_usage(now: float) -> dict[str, dict[str, int]]:
    """``{"fresh"|"expired": {"rows": n, "bytes": n}}`` at ``now``; bytes count each stored pack once.

    A pack named by a fresh row and an expired one counts in both states.
    """
    usage = {}
    for state, condition in (("fresh", FetchMPackCache.expires_at > now), ("expired", FetchMPackCache.expires_at <= now)):
        usage[state] = {"rows": FetchMPackCache.select().where(condition).count(), "bytes": _pack_bytes(condition)}
    return usage


def mpack_bytes() -> int:
    """Bytes of every pack a cache row names (each once)."""
    return _pack_bytes(True)


def blob_bytes() -> int:
    """Bytes of the stored blobs (each blob once, however many repos hold it)."""
    blobs = Object.select(Object.digest, pw.fn.MAX(Object.size).alias("size")).group_by(Object.digest)
    return int(Object.select(pw.fn.COALESCE(pw.fn.SUM(blobs.c.size), 0)).from_(blobs).scalar() or 0)


def jobs_by_status_and_type() -> dict[tuple[str, str], int]:
    query = (BackgroundJob.select(BackgroundJob.status, BackgroundJob.job_type, pw.fn.COUNT(BackgroundJob.job_id))
             .group_by(BackgroundJob.status, BackgroundJob.job_type))
    return {(status, job_type): count for status, job_type, count in query.tuples()}


def queue_age(now: float) -> dict[str, float]:
    """Per job type: how long the oldest due pending job has waited at ``now`` (seconds since it became due)."""
    query = (BackgroundJob.select(BackgroundJob.job_type, pw.fn.MIN(BackgroundJob.run_after))
             .where((BackgroundJob.status == "pending") & (BackgroundJob.run_after <= now))
             .group_by(BackgroundJob.job_type))
    return {job_type: max(0.0, now - due) for job_type, due in query.tuples()}


class StateCollector:
    """Gauges of what the database and the disk hold, computed on each scrape."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings, self.clock = settings, clock

    def collect(self) -> Iterator[Metric]:
        yield from self._cache()
        yield from self._store()
        yield from self._jobs()
        yield from self._disk()

    def _cache(self) -> Iterator[Metric]:
        rows = GaugeMetricFamily(f"{PREFIX}_cache_rows", "fetch cache rows by state (fresh, expired)", labels=["state"])
        size = GaugeMetricFamily(f"{PREFIX}_cache_bytes", "bytes of the packs cache rows name, by state",
                                 labels=["state"])
        for state, usage in cache_usage(self.clock()).items():
            rows.add_metric([state], usage["rows"])
            size.add_metric([state], usage["bytes"])
        limit = GaugeMetricFamily(f"{PREFIX}_cache_max_bytes", "MPACKHUB_CACHE_MAX_BYTES (0: no quota)",
                                  value=self.settings.cache_max_bytes)
        return iter((rows, size, limit))

    def _store(self) -> Iterator[Metric]:
        store = GaugeMetricFamily(f"{PREFIX}_store_bytes", "bytes in the store by kind (blobs, mpacks named by the cache)",
                                  labels=["kind"])
        store.add_metric(["blobs"], blob_bytes())
        store.add_metric(["mpacks"], mpack_bytes())
        yield store

    def _jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "background jobs by status and type", labels=["status", "type"])
        counts = jobs_by_status_and_type()
        types = sorted({t for _, t in counts})  # every type the table holds, at 0 where none
        for status in ("pending", "running", "done", "failed"):
            for job_type in types:
                jobs.add_metric([status, job_type], counts.get((status, job_type), 0))
        age = GaugeMetricFamily(f"{PREFIX}_job_queue_age_seconds",
                                "how long the oldest due pending job of each type has waited", labels=["type"])
        ages = queue_age(self.clock())
        for job_type in types:
            age.add_metric([job_type], ages.get(job_type, 0.0))
        return iter((jobs, age))

    def _disk(self) -> Iterator[Metric]:
        usage = shutil.disk_usage(self.settings.home)
        free = GaugeMetricFamily(f"{PREFIX}_disk_free_bytes", "free bytes on the file system of MPACKHUB_HOME",
                                 value=usage.free)
        total = GaugeMetricFamily(f"{PREFIX}_disk_total_bytes", "size of the file system of MPACKHUB_HOME",
                                  value=usage.total)
        return iter((free, total))


class Scrape:
    """What ``GET /metrics`` exposes: the counters of every process, then the state gauges."""

    def __init__(self, metrics: HubMetrics, settings: Settings, clock: Callable[[], float]) -> None:
        self.parts = (metrics.registry, StateCollector(settings, clock))

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()
