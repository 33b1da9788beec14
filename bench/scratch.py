"""A benchmark's scratch folder (database, broker, logs): removed when the benchmark exits.

``BENCH_KEEP=1`` keeps it (its path is printed). Call it before starting an embedded server in the
folder: exit handlers run last-registered first, so the folder goes after the server has stopped.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def scratch(prefix: str) -> Path:
    """A fresh folder under the system temp dir, readable by the embedded server's user."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    if os.environ.get("BENCH_KEEP"):
        print(f"keeping {folder} (BENCH_KEEP)", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, folder, True)
    return folder
