"""What a host setting may hold: a host name or an address alone - never a URL, a port or
brackets - and, when it holds more, the line that says what to write instead.

No I/O happens here.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def host_problem(variable: str, port_variable: str, value: str) -> str | None:
    """Why ``value`` is not a bare host name or address - a URL, ``host:port``, an IPv6
    address in brackets - with what to write instead; ``None`` when it is one. An IPv6
    literal (``fe80::1``, ``fe80::1%eth0``) has two colons or more and is a host."""
    credentials = ""
    if "://" in value:
        location = urlsplit(value).netloc
        kind, shown = "is a URL", value
        if "@" in location:  # user:password@host: never echo the password
            shown = value.replace(location.rpartition("@")[0], "***", 1)
            credentials = "; credentials go in BRIDGE_MQTT_USERNAME and BRIDGE_MQTT_PASSWORD"
            location = location.rpartition("@")[2]
    elif value.startswith("["):
        kind, shown, location = "has brackets", value, value
    elif value.count(":") == 1:
        kind, shown, location = "includes a port", value, value
    else:
        return None
    host, port = _split_host_port(location)
    fix = f"write {variable}={host or '<address>'}"
    if port.isdigit():
        fix += f" and {port_variable}={port}"
    elif port:
        fix += f" (the port goes in {port_variable})"
    return f"{variable}: {shown!r} {kind}, but it takes the host alone: {fix}{credentials}"


def _split_host_port(location: str) -> tuple[str, str]:
    """``"[::1]:4000"`` -> ``("::1", "4000")``; ``"host:4000"``, ``"host"`` alike."""
    if location.startswith("["):
        host, _, rest = location[1:].partition("]")
        return host, rest.removeprefix(":")
    if location.count(":") == 1:
        host, _, port = location.partition(":")
        return host, port
    return location, ""
