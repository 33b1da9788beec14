"""Checksums agree with the CRC catalogue check values (input b"123456789")."""

import pytest

from usagehub.core.codecs.checksums import ALGORITHMS, checksum_fn, checksum_size

CHECK = {
    "crc16/arc": 0xBB3D,
    "crc16/modbus": 0x4B37,
    "crc16/usb": 0xB4C8,
    "crc16/maxim": 0x44C2,
    "crc16/buypass": 0xFEE8,
    "crc16/xmodem": 0x31C3,
    "crc16/ccitt-false": 0x29B1,
    "crc16/kermit": 0x2189,
    "crc16/x25": 0x906E,
    "crc16/genibus": 0xD64E,
    "crc16/dnp": 0xEA82,
    "crc16/en13757": 0xC2B7,
    "sum8": 0xDD,
    "sum16": 0x01DD,
    "xor8": 0x31,
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_catalogue_check_value(name: str) -> None:
    assert checksum_fn(name)(b"123456789") == CHECK[name]
    assert checksum_size(name) in (1, 2)


def test_unknown_algorithm() -> None:
    with pytest.raises(KeyError):
        checksum_fn("crc16/nope")
