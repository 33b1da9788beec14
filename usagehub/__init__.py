"""usagehub: an open usage hub for smart meters and security devices."""

__version__ = "0.1.0"
