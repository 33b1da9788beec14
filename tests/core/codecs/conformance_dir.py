"""Where the published conformance vectors are (../shared/conformance/README.md): beside the checkout.

CI's checkout has ``shared/`` beside it, as the development machine does; a clone elsewhere (``git clone .
/tmp/x``) has none, and every vector test would fail on a missing file. It fails once, here, saying why.
"""

from __future__ import annotations

from pathlib import Path

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"

if not CONFORMANCE.is_dir():
    raise FileNotFoundError(f"the conformance vectors are not at {CONFORMANCE}: the tests read "
                            "shared/conformance beside the checkout (clone the repository next to shared/)")
