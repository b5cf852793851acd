"""The production job handlers: job type → function(hub, job_id) → result dict."""
from __future__ import annotations

from mpack.hub.jobs import JobRegistry
from mpack.hub.prebuild import PREBUILD, process_fetch_mpack_prebuild_job


def production_registry() -> JobRegistry:
    registry = JobRegistry()
    registry.register(PREBUILD, process_fetch_mpack_prebuild_job)
    return registry
