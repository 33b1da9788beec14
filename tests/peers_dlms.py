"""A simulated DLMS/COSEM meter for tests, run as its own process: ``python -m tests.peers_dlms CONFIG.json``.

It answers the IEC 62056-47 TCP wrapper (what meters serve on port 4059), or HDLC over TCP
(``"transport": "hdlc"``, a meter behind a serial-to-TCP converter), with
the APDU classes of the ``dlms-cosem`` library (MIT), the same library the hub's
client uses for encoding; the meter logic here (association checks, LLS,
HLS-GMAC, security suite 0 ciphering, GET with range selection, ACTION) is
written for this test peer from IEC 62056-5-3 and is not part of the product.

The JSON file (re-read on every request, so a test changes values between
polls by rewriting it) holds::

    {"port": 0, "system_title": "4D4D4D0000000001", "authentication": "none" | "lls" | "hls_gmac",
     "password": "12345678", "ek": "<hex>", "ak": "<hex>",
     "clock": "<ISO 8601 or null = now, UTC>", "local_zone": "<IANA zone: send local times, no deviation>",
     "objects": {"1.0.1.8.0.255": {"class": 3, "value": 123, "scaler": 0, "unit": 30}, ...},
     "profile": {"obis": "1.0.99.1.0.255", "columns": [["0.0.1.0.0.255", 8, 2], ["1.0.1.8.0.255", 3, 2]],
                 "rows": [["2026-11-27T10:00:00+00:00", 1000], ...]},
     "disconnect": {"obis": "0.0.96.3.10.255", "state": 1}}

The bound port is printed on stdout as ``PORT <n>``. Requests are logged to
``<config>.log`` (one JSON line each) so tests can assert what was asked.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dlms_cosem import cosem, dlms_data, enumerations, security
from dlms_cosem.dlms_data import encode_variable_integer
from dlms_cosem.protocol import acse, xdlms
from dlms_cosem.protocol.wrappers import WrapperHeader
from dlms_cosem.protocol.xdlms.conformance import Conformance
from dlms_cosem.time import datetime_to_bytes

ASSOCIATION = "0.0.40.0.0.255"
_LOCK = threading.Lock()
_DISCONNECT_STATE: dict[str, int] = {}  # control state set by ACTIONs, outlives one association
_LAST_CLIENT_IC: dict[str, int] = {}    # a client invocation counter must grow across associations


def _obis(o: cosem.Obis) -> str:
    return ".".join(str(x) for x in (o.a, o.b, o.c, o.d, o.e, o.f))


def _value(value: Any) -> dlms_data.BaseDlmsData:
    if value is None:
        return dlms_data.NullData(None)
    if isinstance(value, str):
        return dlms_data.VisibleStringData(value)
    if value < 0:
        return dlms_data.Long64Data(value)
    return dlms_data.UnsignedLong64Data(value) if value > 0xFFFFFFFF else dlms_data.DoubleLongUnsignedData(value)


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # dlms-cosem reads deviation 0 as naive


def _clock_bytes(when: datetime, zone: str | None = None) -> dlms_data.OctetStringData:
    if zone is None:
        return dlms_data.OctetStringData(datetime_to_bytes(when.astimezone(UTC)))
    local = when.astimezone(ZoneInfo(zone)).replace(tzinfo=None)  # local wall time, deviation "not specified"
    return dlms_data.OctetStringData(datetime_to_bytes(local))


class Meter:
    """One association's state over one TCP connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conf: dict[str, Any] = {}
        self.reload()
        self.client_title: bytes | None = None
        self.ciphered = False
        self.associated = False
        self.hls_pending = False
        self.challenge = os.urandom(16)
        self.client_challenge = b""
        self.server_ic = 1000

    def reload(self) -> None:
        """Read the meter's file again (the test may have changed it)."""
        self.conf = json.loads(self.path.read_text())

    def log(self, **entry: Any) -> None:
        """Append one request line to ``<config>.log``."""
        with _LOCK, open(str(self.path) + ".log", "a") as out:
            out.write(json.dumps(entry) + "\n")

    @property
    def title(self) -> bytes:
        return bytes.fromhex(self.conf.get("system_title", "4D4D4D0000000001"))

    def keys(self) -> tuple[bytes, bytes]:
        return bytes.fromhex(self.conf["ek"]), bytes.fromhex(self.conf["ak"])

    # --- association -------------------------------------------------------------------------------
    def aarq(self, data: bytes) -> bytes:
        """Check an AARQ against the configured security and answer an AARE."""
        self.reload()
        request = acse.ApplicationAssociationRequest.from_bytes(data)
        wanted = self.conf.get("authentication", "none")
        mechanism = request.authentication or enumerations.AuthenticationMechanism.NONE
        content = request.user_information.content if request.user_information else None
        self.client_title = request.system_title
        self.client_challenge = request.authentication_value or b""
        ok = True
        if wanted == "lls":
            ok = (mechanism == enumerations.AuthenticationMechanism.LLS
                  and request.authentication_value == self.conf["password"].encode())
        elif wanted == "hls_gmac":
            ok = mechanism == enumerations.AuthenticationMechanism.HLS_GMAC
        if self.conf.get("ek"):
            ok = ok and isinstance(content, xdlms.GlobalCipherInitiateRequest) and self._initiate_ok(content)
        self.log(service="aarq", mechanism=int(mechanism), accepted=ok)
        if not ok:
            return acse.ApplicationAssociationResponse(
                result=enumerations.AssociationResult.REJECTED_PERMANENT,
                result_source_diagnostics=enumerations.AcseServiceUserDiagnostics.AUTHENTICATION_FAILED,
            ).to_bytes()
        self.ciphered = bool(self.conf.get("ek"))
        self.hls_pending = wanted == "hls_gmac"
        self.associated = not self.hls_pending
        initiate = xdlms.InitiateResponse(negotiated_conformance=Conformance(
            general_protection=self.ciphered, get=True, set=True, action=True, selective_access=True,
            block_transfer_with_get_or_read=True), server_max_receive_pdu_size=65535)
        info: Any = initiate
        if self.ciphered:
            text, ic = self.encrypt(initiate.to_bytes())
            info = xdlms.GlobalCipherInitiateResponse(security_control=self.control(), invocation_counter=ic,
                                                      ciphered_text=text)
        return acse.ApplicationAssociationResponse(
            result=enumerations.AssociationResult.ACCEPTED,
            result_source_diagnostics=enumerations.AcseServiceUserDiagnostics.NULL,
            ciphered=self.ciphered, authentication=mechanism if wanted == "hls_gmac" else None,
            system_title=self.title, authentication_value=self.challenge if self.hls_pending else None,
            user_information=acse.UserInformation(content=info),
        ).to_bytes()

    def _initiate_ok(self, content: xdlms.GlobalCipherInitiateRequest) -> bool:
        try:
            self.decrypt(content.ciphered_text, content.invocation_counter)
        except Exception:  # a wrong key: the tag does not verify
            return False
        return True

    # --- ciphering ---------------------------------------------------------------------------------
    def control(self) -> security.SecurityControlField:
        return security.SecurityControlField(security_suite=0, authenticated=True, encrypted=True)

    def encrypt(self, plain: bytes) -> tuple[bytes, int]:
        ek, ak = self.keys()
        self.server_ic += 1
        return security.encrypt(self.control(), self.title, self.server_ic, ek, plain, ak), self.server_ic

    def decrypt(self, text: bytes, ic: int) -> bytes:
        ek, ak = self.keys()
        assert self.client_title is not None
        title = self.client_title.hex()
        with _LOCK:
            if ic <= _LAST_CLIENT_IC.get(title, -1):
                raise ValueError(f"replayed invocation counter {ic}")
        plain: bytes = security.decrypt(self.control(), self.client_title, ic, ek, text, ak)
        with _LOCK:
            _LAST_CLIENT_IC[title] = ic
        return plain

    # --- requests ----------------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes:
        """The response APDU to one request APDU."""
        if data[0] == acse.ApplicationAssociationRequest.TAG:
            return self.aarq(data)
        if data[0] == 0x62:  # RLRQ
            self.associated = False
            return acse.ReleaseResponse(reason=enumerations.ReleaseResponseReason.NORMAL).to_bytes()
        if data[0] == xdlms.GeneralGlobalCipher.TAG:
            wrapped = xdlms.GeneralGlobalCipher.from_bytes(data)
            plain = self.decrypt(wrapped.ciphered_text, wrapped.invocation_counter)
            answer = self.service(plain)
            text, ic = self.encrypt(answer)
            # general-glo-ciphering, encoded here: the library's encoder writes lengths over 127 as one byte
            body = self.control().to_bytes() + ic.to_bytes(4, "big") + text
            return bytes([xdlms.GeneralGlobalCipher.TAG, 8]) + self.title + encode_variable_integer(len(body)) + body
        if self.ciphered:
            raise ValueError("plain APDU in a ciphered association")
        return self.service(data)

    def service(self, data: bytes) -> bytes:
        self.reload()
        if data[0] == xdlms.GetRequestNormal.TAG:
            return self.get(xdlms.GetRequestNormal.from_bytes(data))
        if data[0] == xdlms.ActionRequestNormal.TAG:
            return self.action(xdlms.ActionRequestNormal.from_bytes(data))
        raise ValueError(f"unsupported APDU {data[:1].hex()}")

    def get(self, request: xdlms.GetRequestNormal) -> bytes:
        attribute = request.cosem_attribute
        obis, number = _obis(attribute.instance), attribute.attribute
        self.log(service="get", obis=obis, attribute=number, range=self._range_log(request.access_selection))
        data = self.read(obis, int(attribute.interface), number, request.access_selection) \
            if self.associated else None
        head = bytes([0xC4, 0x01]) + request.invoke_id_and_priority.to_bytes()
        if data is None:  # Get-Data-Result choice 1: data-access-result (the library's encoder has a bug here)
            error = (enumerations.DataAccessResult.OBJECT_UNDEFINED if self.associated
                     else enumerations.DataAccessResult.READ_WRITE_DENIED)
            return head + bytes([1, error])
        return head + b"\x00" + data

    @staticmethod
    def _range_log(selection: Any) -> list[str] | None:
        if selection is None:
            return None
        return [selection.from_value.isoformat(), selection.to_value.isoformat()]

    def now(self) -> datetime:
        fixed = self.conf.get("clock")
        return datetime.fromisoformat(fixed) if fixed else datetime.now(UTC)

    def read(self, obis: str, interface: int, number: int, selection: Any) -> bytes | None:
        """The A-XDR value of one attribute, or None when the meter has no such thing."""
        if obis == self.conf.get("clock_obis", "0.0.1.0.0.255") and interface == 8 and number == 2:
            return _clock_bytes(self.now(), self.conf.get("local_zone")).to_bytes()
        profile = self.conf.get("profile")
        if profile and obis == profile["obis"] and interface == 7:
            return self._profile(profile, number, selection)
        disconnect = self.conf.get("disconnect")
        if disconnect and obis == disconnect["obis"] and interface == 70 and number in (2, 3):
            state = _DISCONNECT_STATE.get(obis, disconnect.get("state", 1))
            return bytes([3, state == 1]) if number == 2 else dlms_data.EnumData(state).to_bytes()
        item = self.conf.get("objects", {}).get(obis)
        if item is None or item["class"] != interface:
            return None
        if number == 2:
            return _value(item["value"]).to_bytes()
        if number == 3 and interface in (3, 4):
            return dlms_data.DataStructure([dlms_data.IntegerData(item.get("scaler", 0)),
                                            dlms_data.EnumData(item.get("unit", 255))]).to_bytes()
        return None

    def _profile(self, profile: dict[str, Any], number: int, selection: Any) -> bytes | None:
        columns = profile["columns"]
        if number == 3:
            return dlms_data.DataArray([
                dlms_data.DataStructure([dlms_data.UnsignedLongData(c[1]), dlms_data.OctetStringData(
                    bytes(int(x) for x in c[0].split("."))), dlms_data.IntegerData(c[2]),
                    dlms_data.UnsignedLongData(0)]) for c in columns]).to_bytes()
        if number == 4:
            return dlms_data.DoubleLongUnsignedData(profile.get("period_s", 900)).to_bytes()
        if number != 2:
            return None
        rows = []
        low, high = ((_aware(selection.from_value), _aware(selection.to_value)) if selection is not None
                     else (None, None))
        for when_text, *values in profile["rows"]:
            when = datetime.fromisoformat(when_text)
            if low is not None and high is not None and not low <= when <= high:
                continue
            rows.append(dlms_data.DataStructure([_clock_bytes(when, self.conf.get("local_zone")),
                                                 *(_value(v) for v in values)]))
        return dlms_data.DataArray(rows).to_bytes()

    def action(self, request: xdlms.ActionRequestNormal) -> bytes:
        method = request.cosem_method
        obis = _obis(method.instance)
        self.log(service="action", obis=obis, method=method.method)
        if obis == ASSOCIATION and method.method == 1 and self.hls_pending:
            return self._reply_to_hls(request)
        disconnect = self.conf.get("disconnect")
        if self.associated and disconnect and obis == disconnect["obis"] and method.method in (1, 2):
            if not disconnect.get("stuck"):  # a stuck relay acknowledges and does not switch
                _DISCONNECT_STATE[obis] = 0 if method.method == 1 else 1  # 0 disconnected, 1 connected
            return xdlms.ActionResponseNormal(status=enumerations.ActionResultStatus.SUCCESS,
                                              invoke_id_and_priority=request.invoke_id_and_priority).to_bytes()
        return xdlms.ActionResponseNormal(status=enumerations.ActionResultStatus.OBJECT_UNDEFINED,
                                          invoke_id_and_priority=request.invoke_id_and_priority).to_bytes()

    def _reply_to_hls(self, request: xdlms.ActionRequestNormal) -> bytes:
        """Check f(StoC) from the client, answer f(CtoS) (HLS-GMAC, IEC 62056-5-3 9.2.7.4)."""
        ek, ak = self.keys()
        reply = bytes(request.data or b"")[2:]  # octet-string tag and length
        control = security.SecurityControlField.from_bytes(reply[:1])
        ic = int.from_bytes(reply[1:5], "big")
        assert self.client_title is not None
        expected = security.gmac(control, self.client_title, ic, ek, ak, self.challenge)
        if reply[5:] != expected:
            self.log(service="hls", ok=False)
            return xdlms.ActionResponseNormal(status=enumerations.ActionResultStatus.OTHER_REASON,
                                              invoke_id_and_priority=request.invoke_id_and_priority).to_bytes()
        self.hls_pending, self.associated = False, True
        self.server_ic += 1
        auth_only = security.SecurityControlField(security_suite=0, authenticated=True, encrypted=False)
        tag = security.gmac(auth_only, self.title, self.server_ic, ek, ak, self.client_challenge)
        answer = auth_only.to_bytes() + self.server_ic.to_bytes(4, "big") + tag
        self.log(service="hls", ok=True)
        return xdlms.ActionResponseNormalWithData(
            status=enumerations.ActionResultStatus.SUCCESS, data=dlms_data.OctetStringData(answer).to_bytes(),
            invoke_id_and_priority=request.invoke_id_and_priority).to_bytes()


class _Handler(socketserver.BaseRequestHandler):
    """One TCP connection: the wrapper, or HDLC (tests/peers_dlms_hdlc.py) when the meter's file says so."""

    def handle(self) -> None:
        from tests.peers_dlms_hdlc import HdlcSession  # the HDLC side imports Meter from here

        meter = Meter(self.server.path)  # type: ignore[attr-defined]
        sock = self.request
        sock.settimeout(30)
        if meter.conf.get("transport") == "hdlc":
            HdlcSession(sock, meter).serve()
            return
        while True:
            header = _recv(sock, 8)
            if not header:
                return
            head = WrapperHeader.from_bytes(header)
            body = _recv(sock, head.length)
            try:
                answer = meter.handle(body)
            except Exception as err:  # a hostile or wrong request: drop the connection like a meter would
                meter.log(service="error", error=f"{type(err).__name__}: {err}")
                return
            out = WrapperHeader(source_wport=head.destination_wport, destination_wport=head.source_wport,
                                length=len(answer)).to_bytes() + answer
            sock.sendall(out)


def _recv(sock: Any, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> None:
    """Serve the meter described by ``argv[0]`` until killed."""
    path = Path(argv[0])
    conf = json.loads(path.read_text())
    server = _Server(("127.0.0.1", int(conf.get("port", 0))), _Handler)
    server.path = path  # type: ignore[attr-defined]
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
