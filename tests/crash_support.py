"""Child-process targets for the prebuild crash test (multiprocessing 'spawn' imports them)."""
from __future__ import annotations

import threading
from pathlib import Path

from mpack.hub import build
from mpack.hub.bootstrap import build_hub
from mpack.hub.handlers import production_registry
from mpack.hub.pool import run_until_idle
from mpack.hub.settings import Settings
from tests.database import database_url


def build_then_hang(home: str, marker: str, lease_seconds: int) -> None:
    """Claim the prebuild and stop dead half way through writing its pack (until killed)."""
    hub = build_hub(Settings.for_home(home, database_url=database_url(home), public_url="http://hub.test", job_threads=0,
                                      job_lease_seconds=lease_seconds))
    real_add_snapshots = build.MPackWriter.add_spilled_snapshots

    def hang(self, *args):
        real_add_snapshots(self, *args)
        Path(marker).write_text("blocked")  # the temp pack file exists now
        threading.Event().wait()  # until SIGKILL

    build.MPackWriter.add_spilled_snapshots = hang
    run_until_idle(hub, production_registry(), "doomed-worker", lease_seconds=lease_seconds)
