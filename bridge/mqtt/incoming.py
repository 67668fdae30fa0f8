"""A message that arrived on the command topic, as the command worker gets it.

No I/O happens here: this only reads what paho decoded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as paho

from bridge.mqtt.client import is_topic_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingCommand:
    payload: bytes
    received: float  # time.monotonic()
    retained: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None


class CommandSink(Protocol):
    """Where the link hands each command (the command worker); it must not block."""

    def submit(self, incoming: IncomingCommand) -> None: ...


def incoming_command(message: paho.MQTTMessage, is_v5: bool) -> IncomingCommand:
    """The command in ``message``, with its MQTT v5 response topic and correlation data."""
    properties = getattr(message, "properties", None) if is_v5 else None
    response = getattr(properties, "ResponseTopic", None)
    if isinstance(response, str) and not is_topic_name(response):
        log.warning("ignoring response topic %r: not a topic one can publish to", response)
        response = None
    correlation = getattr(properties, "CorrelationData", None)
    return IncomingCommand(
        payload=bytes(message.payload),
        received=time.monotonic(),
        retained=bool(message.retain),
        response_topic=response if isinstance(response, str) else None,
        correlation=bytes(correlation) if correlation is not None else None,
    )
