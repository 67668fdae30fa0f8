"""The TLS context of the broker connection, built from :class:`MqttOptions`, and what is wrong
with a CA, certificate or key file, said per setting.

``Settings.check_run`` builds it so that ``run`` and ``check`` stop at start on a bad file (exit
2, one line naming the variable); ``bridge.mqtt.client.new_client`` builds the same one for
paho. It reads files and touches no network; it must not import pydantic (the runner loads it).
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

from bridge.options import ConfigError, MqttOptions

_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_SOURCE_LINE = re.compile(r"\s*\(_ssl\.c:\d+\)")


class _EncryptedKeyError(Exception):
    """OpenSSL asked for the key's passphrase; the bridge has none to give."""


def client_context(options: MqttOptions) -> ssl.SSLContext:
    """The context paho's ``tls_set`` would build from these files, checked file by file.

    :class:`ConfigError` holds one line per unusable file; a key is judged only once its
    certificate is right (until then, which one is wrong cannot be told).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host name checked
    if options.tls_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    lines = [
        line
        for line in (_load_ca(context, options.ca_file), _load_pair(context, options))
        if line is not None
    ]
    if lines:
        raise ConfigError(lines)
    return context


def _load_ca(context: ssl.SSLContext, ca_file: Path | None) -> str | None:
    if ca_file is None:
        context.load_default_certs()
        return None
    unreadable = _unreadable("BRIDGE_MQTT_CA_FILE", ca_file)
    if unreadable:
        return unreadable
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        return (
            f"BRIDGE_MQTT_CA_FILE: {ca_file} holds no PEM certificate ({_reason(exc)}): give the "
            f"CA certificate that signed the broker's, as PEM ({_PEM_CERTIFICATE}); "
            f"convert a DER file with: openssl x509 -inform der -in FILE -out FILE.pem"
        )
    return None


def _load_pair(context: ssl.SSLContext, options: MqttOptions) -> str | None:
    """The client certificate and its key; ``check_run`` reports one given without the other."""
    cert, key = options.cert_file, options.key_file
    if cert is None or key is None:
        return None
    unreadable = _unreadable("BRIDGE_MQTT_CERT_FILE", cert) or _unreadable(
        "BRIDGE_MQTT_KEY_FILE", key
    )
    if unreadable:
        return unreadable
    try:  # the certificate alone first, so that a bad one is not blamed on the key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        return (
            f"BRIDGE_MQTT_CERT_FILE: {cert} holds no PEM certificate ({_reason(exc)}): give "
            f"the bridge's client certificate as PEM ({_PEM_CERTIFICATE})"
        )
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _EncryptedKeyError:
        return (
            f"BRIDGE_MQTT_KEY_FILE: {key} is encrypted and the bridge has no passphrase "
            f"setting: write it unencrypted (openssl pkey -in {key} -out PLAIN.key) "
            "and keep that file private"
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return (
                f"BRIDGE_MQTT_KEY_FILE: {key} does not match the certificate in "
                f"BRIDGE_MQTT_CERT_FILE ({cert}): give the key that certificate was made for"
            )
        return (  # OpenSSL says only "PEM lib" here: no reason worth quoting
            f"BRIDGE_MQTT_KEY_FILE: {key} holds no PEM private key: give the private key of "
            f"{cert}, as PEM (-----BEGIN PRIVATE KEY-----)"
        )
    return None


def _unreadable(variable: str, path: Path) -> str | None:
    """Why ``path`` cannot be read by this process, or ``None``."""
    try:
        with path.open("rb"):
            return None
    except OSError as exc:
        return (
            f"{variable}: cannot read {path}: {exc.strerror}: make it readable by the user the "
            f"bridge runs as (uid {os.getuid()})"
        )


def _refuse_passphrase() -> str:
    """OpenSSL's password callback: without one, it would prompt on the terminal."""
    raise _EncryptedKeyError


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in a few words: ``no certificate or crl found``."""
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    text = _SOURCE_LINE.sub("", str(exc.strerror or exc))  # "[SSL] PEM lib (_ssl.c:3905)"
    return text.removeprefix("[SSL] ").strip() or "no reason given"
