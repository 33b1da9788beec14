"""DC-09 message bodies: SIA-DCS data blocks and ADM-CID (Contact ID) events.

A body yields a list of event records: the SIA code, its description and
billing category, zone/user, partition/area, free text, and for arm/disarm the
``armed`` state the profile's state meter reads.
"""

from __future__ import annotations

import re
from typing import Any

from usagehub.core.codecs.dc09_codes import contact_id_to_sia, describe
from usagehub.errors import DecodeError

_CID = re.compile(r"^(?P<q>[136])(?P<event>\d{3}) (?P<part>[0-9A-F]{2}) (?P<zone>[0-9A-F]{3})$")
_SIA_EVENT = re.compile(r"^(?P<code>[A-Z]{2})(?P<num>[0-9A-F]*)(?P<rest>.*)$")
_MODIFIER = re.compile(r"([a-z]{2})([0-9:.\-]*)")


def event(code: str, **fields: Any) -> dict[str, Any]:
    """One event record for ``code`` with its description, category and armed state."""
    description, category = describe(code)
    record: dict[str, Any] = {"code": code, "description": description, "category": category, **fields}
    if category in ("arm", "disarm"):
        record["armed"] = category == "arm"
    return record


def data_account(data: str) -> str | None:
    """The ``#acct`` that may open a data block (used when the header carries no account)."""
    if data.startswith("#"):
        return data[1:].partition("|")[0] or None
    return None


def _strip_account(data: str) -> str:
    """Drop the optional ``#acct|`` or ``|`` prefix of the data block."""
    if data.startswith("#"):
        data = data.partition("|")[2] if "|" in data else ""
    elif data.startswith("|"):
        data = data[1:]
    return data


def parse_adm_cid(data: str) -> list[dict[str, Any]]:
    """``[#acct|QEEE PP ZZZ]``: qualifier, Contact ID event, partition, zone or user."""
    body = _strip_account(data).strip()
    m = _CID.match(body)
    if m is None:
        raise DecodeError("bad ADM-CID body", detail=body[:60])
    code = contact_id_to_sia(m["q"], m["event"])
    fields = {"qualifier": int(m["q"]), "contact_id": m["event"], "partition": m["part"], "zone": m["zone"]}
    if code is None:
        return [{"code": None, "description": None, "category": "other", **fields}]
    return [event(code, **fields)]


def _sia_modifiers(text: str) -> tuple[dict[str, str], str]:
    """Leading lower-case modifiers (``ri1``, ``id0042``, ``ti12:00``) and what follows them."""
    mods: dict[str, str] = {}
    pos = 0
    while True:
        m = _MODIFIER.match(text, pos)
        if m is None:
            return mods, text[pos:]
        mods[m.group(1)] = m.group(2)
        pos = m.end()


def parse_sia_dcs(data: str) -> list[dict[str, Any]]:
    """``[#acct|Nri1/CL501^text^]``: one or more events separated by ``/``."""
    body = _strip_account(data)
    text = None
    if "^" in body:
        body, _, rest = body.partition("^")
        text = rest.rstrip("^")
    if body[:1] in ("N", "O"):
        body = body[1:]
    events: list[dict[str, Any]] = []
    mods: dict[str, str] = {}
    for part in body.split("/"):
        found, rest = _sia_modifiers(part)
        mods.update(found)
        m = _SIA_EVENT.match(rest)
        if m is None:
            continue
        events.append(
            event(
                m["code"],
                zone=m["num"] or None,
                area=mods.get("ri"),
                user=mods.get("id"),
                text=text,
                extra=m["rest"] or None,
            )
        )
    if not events:
        raise DecodeError("no SIA event in message", detail=data[:60])
    return events
