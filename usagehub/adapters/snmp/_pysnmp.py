"""The pysnmp names we use, imported once with pysmi's deprecation noise silenced.

When ``pysmi`` is installed (snmpsim needs it), ``pysnmp.hlapi`` imports it and
pysmi warns about its own renamed functions; that is not ours to fix, and with
``filterwarnings = error`` it would break every import of this adapter.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import pysnmp.smi.mibs
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        UsmUserData,
        bulk_walk_cmd,
        get_cmd,
        walk_cmd,
    )
    from pysnmp.smi import builder, view


class _NoMibCompiler:
    """Stands in for pysmi's compiler: we use numeric OIDs only and never fetch or compile MIBs."""

    def compile(self, *names: str, **options: Any) -> dict[str, str]:
        """Report every MIB as missing, exactly as when pysmi is not installed."""
        return dict.fromkeys(names, "missing")


def new_engine() -> Any:
    """A SnmpEngine whose MIB view never loads pysmi (which would try to download MIBs on a miss)."""
    engine = SnmpEngine()
    mib_builder = builder.MibBuilder()
    mib_builder.set_mib_compiler(_NoMibCompiler(), str(Path(pysnmp.smi.mibs.__file__).parent))
    engine.cache["mibViewController"] = view.MibViewController(mib_builder)
    return engine


__all__ = ["CommunityData", "ContextData", "ObjectIdentity", "ObjectType", "SnmpEngine", "UdpTransportTarget",
           "UsmUserData", "bulk_walk_cmd", "get_cmd", "new_engine", "walk_cmd"]
