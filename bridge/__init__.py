"""springcore-bridge: an MQTT bridge for SpringCard SpringCore readers (JSON over TCP)."""

__version__ = "0.1.0"
