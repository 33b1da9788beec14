"""The lean paho classes behave as paho's own: same decoded properties, waits, filtered callbacks."""

from __future__ import annotations

import threading

import pytest
from paho.mqtt import client as paho_client
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from usagehub.adapters.mqtt import lean


def _publish_properties() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "prepaid/dev-1/answer"
    props.CorrelationData = b"\x00\x01corr"
    props.UserProperty = [("tenant", "a"), ("tenant", "b")]
    props.MessageExpiryInterval = 30
    props.PayloadFormatIndicator = 1
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


def test_shared_tables_decode_what_paho_decodes() -> None:
    packed = _publish_properties() + b"payload"
    ours, ours_len = lean.SharedTableProperties(PacketTypes.PUBLISH).unpack(packed)
    paho, paho_len = Properties(PacketTypes.PUBLISH).unpack(packed)  # type: ignore[no-untyped-call]
    assert ours_len == paho_len
    assert ours.json() == paho.json()
    assert ours.UserProperty == [("tenant", "a"), ("tenant", "b")]
    # a second packet decoded by another instance starts empty: nothing leaks through the shared tables
    empty, _ = lean.SharedTableProperties(PacketTypes.PUBLISH).unpack(b"\x00")
    assert empty.json() == {}
    assert not hasattr(empty, "ResponseTopic")


def test_shared_tables_refuse_what_paho_refuses() -> None:
    props = lean.SharedTableProperties(PacketTypes.PUBLISH)
    with pytest.raises(MQTTException, match="does not apply"):
        props.ReceiveMaximum = 10  # a CONNECT property, not a PUBLISH one


def test_lazy_message_info_waits_like_pahos() -> None:
    info = lean.LazyMessageInfo(7)
    assert info._lazy_condition is None  # nothing built for a received message
    done = threading.Event()

    def waiter() -> None:
        info.wait_for_publish(timeout=5)
        done.set()

    t = threading.Thread(target=waiter)
    t.start()
    info._set_as_published()
    t.join(5)
    assert done.is_set() and info.is_published()


def test_filtered_callbacks_match_once_registered() -> None:
    matcher = lean.FilteredCallbacks()
    assert list(matcher.iter_match("meters/m1/reading")) == []
    matcher["meters/+/reading"] = "cb"
    assert list(matcher.iter_match("meters/m1/reading")) == ["cb"]
    assert list(matcher.iter_match("alarms/p1")) == []


def test_install_swaps_the_classes_paho_uses() -> None:
    assert lean.install()
    from paho.mqtt import _packet

    assert _packet.Properties is lean.SharedTableProperties
    message = paho_client.MQTTMessage(3, b"meters/m1")
    assert isinstance(message.info, lean.LazyMessageInfo)
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=paho_client.MQTTv5)
    lean.lean_client(client)
    assert isinstance(client._on_message_filtered, lean.FilteredCallbacks)
