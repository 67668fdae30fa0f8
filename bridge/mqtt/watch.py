"""Why the broker connection was refused, failed or keeps dropping: one log line with the fix.

``MqttLink``'s paho callbacks report here, all from paho's one network thread, so the little
state kept (refusals already logged, short sessions in a row) needs no lock. Nothing here
touches the paho client: the link applies the reconnection delay this returns.
"""

from __future__ import annotations

import logging

from paho.mqtt.reasoncodes import ReasonCode

from bridge.logs import Throttle
from bridge.mqtt.client import CONNACK_HINTS, describe_connect_error
from bridge.options import MqttOptions

log = logging.getLogger(__name__)

TAKEOVER_DELAY = 60
"""Seconds to wait after another client took our client id, so the two do not evict each
other in a tight loop (each connection with an id closes the older one, MQTT 3.1.4-3)."""
SHORT_SESSION = 2.0
"""Seconds: a connection the broker closed sooner counts as short; three in a row look like
a takeover (a v3.1.1 broker gives no reason code)."""
_SESSION_TAKEN_OVER = 142  # MQTT v5 reason code 0x8E
_KEEPALIVE_TIMEOUT = 141  # 0x8D, what paho reports when the broker stops answering pings
_CONNECT = "broker-connect"
_DISCONNECT_HINTS = {  # MQTT 5 §3.14.2.1, the codes a broker sends in DISCONNECT
    137: "the broker is busy; it should accept us again shortly",
    139: "the broker is shutting down",
    135: "not authorised: check the broker's ACL for this client",
    149: "a message was larger than the broker's message_size_limit",
    151: "the broker's quota was exceeded",
    152: "an administrator disconnected this client",
    153: "the payload format was refused",
}


class ConnectionWatch:
    """Logs each connection failure once, with what to check; counts takeovers."""

    def __init__(self, options: MqttOptions, device_id: str) -> None:
        self.options = options
        self.takeovers = 0
        self._extra = {"device_id": device_id, "link": "broker"}
        self._short_sessions = 0  # connections in a row that the broker closed within 2 s
        self._refused = False  # the last CONNACK was a refusal (already logged)
        self._throttle = Throttle(log)  # failed attempts: the first, then one line a minute

    def where(self) -> str:
        return f"{self.options.host}:{self.options.port}"

    def refused(self, reason_code: ReasonCode) -> None:
        """The broker answered CONNECT with a refusal."""
        hint = CONNACK_HINTS.get(reason_code.value, "see the broker's log")
        if reason_code.value in (134, 135) and self.options.username is None:
            hint = (
                "the broker wants credentials and none are set: set BRIDGE_MQTT_USERNAME "
                "and BRIDGE_MQTT_PASSWORD (or BRIDGE_MQTT_PASSWORD_FILE)"
            )
        self._refused = True
        self._throttle.log(
            logging.ERROR,
            _CONNECT,
            "broker %s refused the connection (%s): %s; retrying",
            self.where(),
            reason_code,
            hint,
        )

    def connected(self) -> None:
        self._throttle.reset(_CONNECT)  # the count of failed attempts, if any, first
        log.info("connected to broker %s", self.where(), extra={**self._extra, "state": "up"})

    def connect_failed(self, error: BaseException | None) -> None:
        """No connection at all (TCP, TLS): ``error`` is what the last attempt raised."""
        reason = describe_connect_error(error, self.options.tls)
        self._throttle.warning(
            _CONNECT, "cannot connect to broker %s: %s; retrying", self.where(), reason
        )

    def disconnected(
        self, reason_code: ReasonCode, was_connected: bool, lasted: float, from_broker: bool
    ) -> float:
        """The connection ended after ``lasted`` s (``from_broker``: the broker said so with
        a DISCONNECT packet); the reconnection delay to use instead of the usual one (after
        a takeover), or 0."""
        if not was_connected:
            self._closed_before_connack()
            return 0
        self._short_sessions = self._short_sessions + 1 if lasted < SHORT_SESSION else 0
        taken_over = reason_code.value == _SESSION_TAKEN_OVER
        if not taken_over and self._short_sessions < 3:
            log.warning(
                "lost the broker %s: %s; reconnecting",
                self.where(),
                self._why_lost(reason_code, from_broker),
                extra={**self._extra, "state": "down"},
            )
            return 0
        self.takeovers += 1
        cause = (
            "another client connected with our client id and took over the session"
            if taken_over
            else "the broker keeps closing our connection right after it opens "
            "(another client with our client id, or an ACL?)"
        )
        log.error(
            "%s: give each bridge its own BRIDGE_MQTT_CLIENT_ID (now %r); reconnecting in %d s",
            cause,
            self.options.client_id,
            TAKEOVER_DELAY,
            extra={**self._extra, "state": "down"},
        )
        return TAKEOVER_DELAY

    def _why_lost(self, reason_code: ReasonCode, from_broker: bool) -> str:
        """What ended a connection, in words (paho says "Unspecified error" for most)."""
        if from_broker:
            hint = _DISCONNECT_HINTS.get(reason_code.value, "see the broker's log")
            return f"the broker closed the session ({reason_code}): {hint}"
        if reason_code.value == _KEEPALIVE_TIMEOUT:
            return (
                "the broker did not answer a keepalive ping (BRIDGE_MQTT_KEEPALIVE="
                f"{self.options.keepalive} s): the broker or the network path hangs"
            )
        return (
            "the connection closed without a word from the broker (it stopped or restarted, "
            "or the network dropped the connection)"
        )

    def _closed_before_connack(self) -> None:
        """The broker closed the link after TCP (and TLS) but before a CONNACK."""
        if self._refused:  # the CONNACK refusal was logged already
            self._refused = False
            return
        hint = (
            "does it require a client certificate (BRIDGE_MQTT_CERT_FILE / BRIDGE_MQTT_KEY_FILE)?"
            if self.options.tls
            else "is BRIDGE_MQTT_PORT a TLS port? then set BRIDGE_MQTT_TLS=true"
        )
        self._throttle.warning(
            _CONNECT,
            "broker %s closed the connection before accepting it: %s; retrying",
            self.where(),
            hint,
        )
