"""SIA event codes (DC-03) and the Contact ID (DC-05) events that map onto them.

Each SIA code has a description and a billing category: ``alarm`` and
``trouble`` count as activities, ``arm``/``disarm`` open and close the armed
session, ``restore``, ``test``, ``supervision`` and ``other`` are kept but not billed.
"""

from __future__ import annotations

# code -> (description, category)
SIA_CODES: dict[str, tuple[str, str]] = {
    "AR": ("AC Restoral", "restore"), "AT": ("AC Trouble", "trouble"),
    "BA": ("Burglary Alarm", "alarm"), "BB": ("Burglary Bypass", "other"), "BC": ("Burglary Cancel", "other"),
    "BH": ("Burglary Alarm Restore", "restore"), "BJ": ("Burglary Trouble Restore", "restore"),
    "BR": ("Burglary Restoral", "restore"), "BT": ("Burglary Trouble", "trouble"),
    "BU": ("Burglary Unbypass", "other"), "BV": ("Burglary Verified", "alarm"),
    "BX": ("Burglary Test", "test"),
    "CA": ("Automatic Closing", "arm"), "CE": ("Closing Extend", "arm"), "CF": ("Forced Closing", "arm"),
    "CG": ("Close Area", "arm"), "CI": ("Fail to Close", "trouble"), "CL": ("Closing Report", "arm"),
    "CP": ("Automatic Closing", "arm"), "CQ": ("Remote Closing", "arm"), "CR": ("Recent Closing", "arm"),
    "CS": ("Closing Keyswitch", "arm"),
    "EM": ("Expansion Device Missing", "trouble"), "ER": ("Expansion Restoral", "restore"),
    "ET": ("Expansion Trouble", "trouble"),
    "FA": ("Fire Alarm", "alarm"), "FH": ("Fire Alarm Restore", "restore"), "FJ": ("Fire Trouble Restore", "restore"),
    "FR": ("Fire Restoral", "restore"), "FT": ("Fire Trouble", "trouble"), "FX": ("Fire Test", "test"),
    "GA": ("Gas Alarm", "alarm"), "GH": ("Gas Alarm Restore", "restore"), "GR": ("Gas Restoral", "restore"),
    "GT": ("Gas Trouble", "trouble"),
    "HA": ("Holdup Alarm", "alarm"), "HH": ("Holdup Alarm Restore", "restore"), "HR": ("Holdup Restoral", "restore"),
    "HT": ("Holdup Trouble", "trouble"),
    "IA": ("Equipment Failure Condition", "trouble"), "IR": ("Equipment Fail - Restoral", "restore"),
    "JA": ("User code Tamper", "trouble"), "JC": ("User code tamper canceled", "restore"),
    "KA": ("Heat Alarm", "alarm"), "KH": ("Heat Alarm Restore", "restore"), "KR": ("Heat Restoral", "restore"),
    "KT": ("Heat Trouble", "trouble"),
    "LR": ("Phone Line Restoral", "restore"), "LT": ("Phone Line Trouble", "trouble"),
    "MA": ("Medical Alarm", "alarm"), "MH": ("Medical Alarm Restore", "restore"), "MR": ("Medical Restoral", "restore"),
    "NL": ("Perimeter Armed", "arm"),
    "OA": ("Automatic Opening", "disarm"), "OC": ("Cancel Report", "other"), "OG": ("Open Area", "disarm"),
    "OK": ("Early Open", "disarm"), "OP": ("Opening Report", "disarm"), "OQ": ("Remote Opening", "disarm"),
    "OR": ("Disarm From Alarm", "disarm"), "OS": ("Opening Keyswitch", "disarm"),
    "PA": ("Panic Alarm", "alarm"), "PH": ("Panic Alarm Restore", "restore"), "PR": ("Panic Restoral", "restore"),
    "PT": ("Panic Trouble", "trouble"),
    "QA": ("Emergency Alarm", "alarm"), "QR": ("Emergency Restoral", "restore"),
    "RP": ("Automatic Test", "test"), "RR": ("Power Up", "other"), "RX": ("Manual Test", "test"),
    "RY": ("Test Off Normal", "test"),
    "SA": ("Sprinkler Alarm", "alarm"), "SR": ("Sprinkler Restoral", "restore"), "ST": ("Sprinkler Trouble", "trouble"),
    "TA": ("Tamper Alarm", "alarm"), "TR": ("Tamper Restoral", "restore"),
    "UA": ("Untyped Zone Alarm", "alarm"), "UB": ("Untyped Zone Bypass", "other"),
    "UJ": ("Untyped Zone Trouble Restore", "restore"), "UR": ("Untyped Zone Restoral", "restore"),
    "UT": ("Untyped Zone Trouble", "trouble"), "UU": ("Untyped Zone Unbypass", "other"),
    "WA": ("Water Alarm", "alarm"), "WH": ("Water Alarm Restore", "restore"), "WR": ("Water Restoral", "restore"),
    "WT": ("Water Trouble", "trouble"),
    "XR": ("Transmitter Battery Restoral", "restore"), "XT": ("Transmitter Battery Trouble", "trouble"),
    "YC": ("Communications Fail", "trouble"), "YK": ("Communications Restoral", "restore"),
    "YM": ("System Battery Missing", "trouble"), "YR": ("System Battery Restoral", "restore"),
    "YT": ("System Battery Trouble", "trouble"), "YA": ("Bell Fault", "trouble"), "YH": ("Bell Restored", "restore"),
    "ZA": ("Freeze Alarm", "alarm"), "ZH": ("Freeze Alarm Restore", "restore"), "ZR": ("Freeze Restoral", "restore"),
    "ZT": ("Freeze Trouble", "trouble"),
}

# Contact ID event -> (SIA code for qualifier 1 "new event/opening", for qualifier 3 "restore/closing").
CONTACT_ID: dict[str, tuple[str, str]] = {
    "100": ("MA", "MH"), "101": ("MA", "MH"), "102": ("MA", "MH"),
    "110": ("FA", "FH"), "111": ("FA", "FH"), "112": ("FA", "FH"), "113": ("SA", "SR"), "114": ("KA", "KH"),
    "115": ("FA", "FH"), "117": ("FA", "FH"), "118": ("FA", "FH"),
    "120": ("PA", "PH"), "121": ("HA", "HH"), "122": ("HA", "HH"), "123": ("PA", "PH"),
    "130": ("BA", "BH"), "131": ("BA", "BH"), "132": ("BA", "BH"), "133": ("BA", "BH"), "134": ("BA", "BH"),
    "135": ("BA", "BH"), "136": ("BA", "BH"), "137": ("TA", "TR"), "138": ("BA", "BH"), "139": ("BV", "BH"),
    "140": ("UA", "UR"), "150": ("UA", "UR"), "151": ("GA", "GH"), "154": ("WA", "WH"), "158": ("KA", "KH"),
    "159": ("ZA", "ZH"), "162": ("GA", "GH"),
    "300": ("IA", "IR"), "301": ("AT", "AR"), "302": ("YT", "YR"), "305": ("RR", "RR"), "311": ("YM", "YR"),
    "321": ("YA", "YH"), "333": ("ET", "ER"), "350": ("YC", "YK"), "351": ("LT", "LR"), "373": ("FT", "FJ"),
    "380": ("UT", "UJ"), "383": ("TA", "TR"), "384": ("XT", "XR"),
    "400": ("OP", "CL"), "401": ("OP", "CL"), "402": ("OG", "CG"), "403": ("OA", "CA"), "404": ("OQ", "CQ"),
    "406": ("OC", "OC"), "407": ("OQ", "CQ"), "408": ("CL", "CL"), "409": ("OS", "CS"), "441": ("OP", "NL"),
    "442": ("OS", "CS"), "570": ("UB", "UU"), "573": ("BB", "BU"),
    "601": ("RX", "RX"), "602": ("RP", "RP"), "603": ("RP", "RP"),
}


def describe(code: str) -> tuple[str | None, str]:
    """Description and category of SIA ``code`` (unknown codes: no description, category ``other``)."""
    found = SIA_CODES.get(code)
    return (found[0], found[1]) if found else (None, "other")


def contact_id_to_sia(qualifier: str, event: str) -> str | None:
    """The SIA code a Contact ID event stands for; None when the event is not mapped."""
    pair = CONTACT_ID.get(event)
    if pair is None:
        return None
    return pair[1] if qualifier == "3" else pair[0]
