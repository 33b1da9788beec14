"""EN 13757-3 lookup tables: VIF/VIFE units and scales, media, fixed-structure units.

Unit and quantity names follow libmbus's normalized output (``mbus_parse_hex -n``)
so decoded records can be compared with its published vectors.
"""

from __future__ import annotations

from decimal import Decimal

# code -> (unit, quantity, multiplier). Primary VIFs are 0x00-0x7F, the VIFE table
# after VIF 0xFD is 0x100-0x17F, the one after 0xFB is 0x200-0x27F.
VifEntry = tuple[str, str, Decimal]
VIF: dict[int, VifEntry] = {}

_TIME = (Decimal(1), Decimal(60), Decimal(3600), Decimal(86400))
_MONTH, _YEAR = Decimal("2629743.83"), Decimal(31556926)


def _pow(exp: int) -> Decimal:
    return Decimal(1).scaleb(exp)


def _run(base: int, count: int, unit: str, quantity: str, first_exp: int) -> None:
    for n in range(count):
        VIF[base + n] = (unit, quantity, _pow(first_exp + n))


def _times(base: int, quantity: str, factors: tuple[Decimal, ...] = _TIME) -> None:
    for n, factor in enumerate(factors):
        VIF[base + n] = ("s", quantity, factor)


def _named(base: int, names: list[str]) -> None:
    for n, name in enumerate(names):
        VIF[base + n] = ("Reserved", "Reserved", Decimal(1)) if name == "Reserved" else ("", name, Decimal(1))


def _primary() -> None:
    _run(0x00, 8, "Wh", "Energy", -3)
    _run(0x08, 8, "J", "Energy", 0)
    _run(0x10, 8, "m^3", "Volume", -6)
    _run(0x18, 8, "kg", "Mass", -3)
    _times(0x20, "On time")
    _times(0x24, "Operating time")
    _run(0x28, 8, "W", "Power", -3)
    _run(0x30, 8, "J/h", "Power", 0)
    _run(0x38, 8, "m^3/h", "Volume flow", -6)
    _run(0x40, 8, "m^3/min", "Volume flow", -7)
    _run(0x48, 8, "m^3/s", "Volume flow", -9)
    _run(0x50, 8, "kg/h", "Mass flow", -3)
    _run(0x58, 4, "°C", "Flow temperature", -3)
    _run(0x5C, 4, "°C", "Return temperature", -3)
    _run(0x60, 4, "K", "Temperature difference", -3)
    _run(0x64, 4, "°C", "External temperature", -3)
    _run(0x68, 4, "bar", "Pressure", -3)
    VIF[0x6C] = ("-", "Time point (date)", Decimal(1))
    VIF[0x6D] = ("-", "Time point (date & time)", Decimal(1))
    VIF[0x6E] = ("Units for H.C.A.", "H.C.A.", Decimal(1))
    VIF[0x6F] = ("Reserved", "Reserved", Decimal(0))
    _times(0x70, "Averaging Duration")
    _times(0x74, "Actuality Duration")
    for code, name in (
        (0x78, "Fabrication No"),
        (0x79, "(Enhanced) Identification"),
        (0x7A, "Bus Address"),
        (0x7E, "Any VIF"),
        (0x7F, "Manufacturer specific"),
    ):
        VIF[code] = ("", name, Decimal(1))


def _fd_table() -> None:
    _run(0x100, 4, "Currency units", "Credit", -3)
    _run(0x104, 4, "Currency units", "Debit", -3)
    _named(
        0x108,
        [
            "Access Number (transmission count)",
            "Medium",
            "Manufacturer",
            "Parameter set identification",
            "Model / Version",
            "Hardware version",
            "Firmware version",
            "Software version",
            "Customer location",
            "Customer",
            "Access Code User",
            "Access Code Operator",
            "Access Code System Operator",
            "Access Code Developer",
            "Password",
            "Error flags",
            "Error mask",
            "Reserved",
            "Digital Output",
            "Digital Input",
        ],
    )
    VIF[0x11C] = ("Baud", "Baudrate", Decimal(1))
    VIF[0x11D] = ("Bittimes", "Response delay time", Decimal(1))
    _named(
        0x11E,
        [
            "Retry",
            "Reserved",
            "First storage # for cyclic storage",
            "Last storage # for cyclic storage",
            "Size of storage block",
            "Reserved",
        ],
    )
    _times(0x124, "Storage interval", (*_TIME, _MONTH, _YEAR))
    _named(0x12A, ["Reserved", "Reserved"])
    _times(0x12C, "Duration since last readout")
    VIF[0x130] = ("Reserved", "Reserved", Decimal(1))
    _times(0x131, "Storage interval", _TIME[1:])
    _times(0x134, "Period of tariff", (*_TIME, _MONTH, _YEAR))
    VIF[0x13A] = ("", "Dimensionless", Decimal(1))
    _named(0x13B, ["Reserved"] * 5)
    _run(0x140, 16, "V", "Voltage", -9)
    _run(0x150, 16, "A", "Current", -12)
    _named(
        0x160,
        [
            "Reset counter",
            "Cumulation counter",
            "Control signal",
            "Day of week",
            "Week number",
            "Time point of day change",
            "State of parameter activation",
            "Special supplier information",
        ],
    )
    _times(0x168, "Duration since last cumulation", (_TIME[2], _TIME[3], _MONTH, _YEAR))
    _times(0x16C, "Operating time battery", (_TIME[2], _TIME[3], _MONTH, _YEAR))
    VIF[0x170] = ("", "Date and time of battery change", Decimal(1))
    _named(0x171, ["Reserved"] * 15)


def _fb_table() -> None:
    _run(0x200, 2, "Wh", "Energy", 5)
    _run(0x208, 2, "J", "Energy", 8)
    _run(0x210, 2, "m^3", "Volume", 2)
    _run(0x218, 2, "kg", "Mass", 5)
    _run(0x21A, 2, "%", "Relative humidity", -1)  # EN 13757-3:2013; pyMeterBus WEP-indoor reads 53.1 %
    VIF[0x221] = ("feet^3", "Volume", Decimal("0.1"))
    VIF[0x222] = ("American gallon", "Volume", Decimal("0.1"))
    VIF[0x223] = ("American gallon", "Volume", Decimal(1))
    VIF[0x224] = ("American gallon/min", "Volume flow", Decimal("0.001"))
    VIF[0x225] = ("American gallon/min", "Volume flow", Decimal(1))
    VIF[0x226] = ("American gallon/h", "Volume flow", Decimal(1))
    _run(0x228, 2, "W", "Power", 5)
    _run(0x230, 2, "J/h", "Power", 8)
    _run(0x258, 4, "°F", "Flow temperature", -3)
    _run(0x25C, 4, "°F", "Return temperature", -3)
    _run(0x260, 4, "°F", "Temperature difference", -3)
    _run(0x264, 4, "°F", "External temperature", -3)
    _run(0x270, 4, "°F", "Cold / Warm Temperature Limit", -3)
    _run(0x274, 4, "°C", "Cold / Warm Temperature Limit", -3)
    _run(0x278, 8, "W", "Cumul count max power", -3)
    for code in range(0x200, 0x280):
        VIF.setdefault(code, ("Reserved", "Reserved", Decimal(1)))


_primary()
_fd_table()
_fb_table()

MEDIUM: dict[int, str] = {
    0x00: "Other",
    0x01: "Oil",
    0x02: "Electricity",
    0x03: "Gas",
    0x04: "Heat: Outlet",
    0x05: "Steam",
    0x06: "Warm water (30-90°C)",
    0x07: "Water",
    0x08: "Heat Cost Allocator",
    0x09: "Compressed Air",
    0x0A: "Cooling load meter: Outlet",
    0x0B: "Cooling load meter: Inlet",
    0x0C: "Heat: Inlet",
    0x0D: "Heat / Cooling load meter",
    0x0E: "Bus/System",
    0x0F: "Unknown Medium",
    0x10: "Irrigation Water",
    0x11: "Water Logger",
    0x12: "Gas Logger",
    0x13: "Gas Converter",
    0x14: "Calorific value",
    0x15: "Hot water (>90°C)",
    0x16: "Cold water",
    0x17: "Dual water",
    0x18: "Pressure",
    0x19: "A/D Converter",
    0x1A: "Smoke Detector",
    0x1B: "Ambient Sensor",
    0x1C: "Gas Detector",
    0x20: "Breaker: Electricity",
    0x21: "Valve: Gas or Water",
    0x25: "Customer Unit: Display Device",
    0x28: "Waste Water",
    0x29: "Garbage",
    0x30: "Service Unit",
    0x36: "Radio Converter: System",
    0x37: "Radio Converter: Meter",
}


def medium_name(code: int) -> str:
    """The medium (device type) of a variable-structure header."""
    if code in MEDIUM:
        return MEDIUM[code]
    return "Reserved" if 0x10 <= code <= 0x3F else f"Unknown medium (0x{code:02x})"


FIXED_MEDIUM = (
    "Other",
    "Oil",
    "Electricity",
    "Gas",
    "Heat",
    "Steam",
    "Hot Water",
    "Water",
    "H.C.A.",
    "Reserved",
    "Gas Mode 2",
    "Heat Mode 2",
    "Hot Water Mode 2",
    "Water Mode 2",
    "H.C.A. Mode 2",
    "Reserved",
)


def _fixed_units() -> dict[int, tuple[str, str, str, Decimal]]:
    """Fixed-structure unit code -> (raw unit text, normalized unit, quantity, multiplier)."""
    table: dict[int, tuple[str, str, str, Decimal]] = {
        0: ("h,m,s", "h,m,s", "Time", Decimal(1)),
        1: ("D,M,Y", "D,M,Y", "Time", Decimal(1)),
    }
    groups = (
        (
            0x02,
            "Wh",
            "Energy",
            0,
            ("Wh", "10 Wh", "100 Wh", "kWh", "10 kWh", "100 kWh", "MWh", "10 MWh", "100 MWh"),
        ),
        (0x0B, "J", "Energy", 3, ("kJ", "10 kJ", "100 kJ", "MJ", "10 MJ", "100 MJ", "GJ", "10 GJ", "100 GJ")),
        (0x14, "W", "Power", 0, ("W", "10 W", "100 W", "kW", "10 kW", "100 kW", "MW", "10 MW", "100 MW")),
        (
            0x1D,
            "J/h",
            "Power",
            3,
            ("kJ/h", "10 kJ/h", "100 kJ/h", "MJ/h", "10 MJ/h", "100 MJ/h", "GJ/h", "10 GJ/h", "100 GJ/h"),
        ),
        (
            0x26,
            "m^3",
            "Volume",
            -6,
            ("ml", "10 ml", "100 ml", "l", "10 l", "100 l", "m^3", "10 m^3", "100 m^3"),
        ),
        (
            0x2F,
            "m^3/h",
            "Volume flow",
            -6,
            ("ml/h", "10 ml/h", "100 ml/h", "l/h", "10 l/h", "100 l/h", "m^3/h", "10 m^3/h", "100 m^3/h"),
        ),
    )
    for base, unit, quantity, exp, raws in groups:
        for n, raw in enumerate(raws):
            table[base + n] = (raw, unit, quantity, _pow(exp + n))
    table[0x38] = ("1e-3 °C", "°C", "Temperature", Decimal("0.001"))
    table[0x39] = ("units for HCA", "Units for H.C.A.", "H.C.A.", Decimal(1))
    for code in range(0x3A, 0x3E):
        table[code] = ("reserved", "Reserved", "Reserved", Decimal(1))
    table[0x3E] = ("reserved but historic", "", "historic", Decimal(1))
    table[0x3F] = ("without units", "", "No units", Decimal(1))
    return table


FIXED_UNIT = _fixed_units()

APPLICATION_ERRORS = {
    0: "Unspecified error",
    1: "Unimplemented CI-Field",
    2: "Buffer too long, truncated",
    3: "Too many records",
    4: "Premature end of record",
    5: "More than 10 DIFE's",
    6: "More than 10 VIFE's",
    7: "Reserved",
    8: "Application busy",
    9: "Too many readouts",
}

FUNCTIONS = ("Instantaneous value", "Maximum value", "Minimum value", "Value during error state")
