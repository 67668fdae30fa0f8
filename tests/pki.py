"""Throwaway certificates for the tests: a CA, a foreign CA and leaves, made with ``openssl``.

One set per test session (the ``certs`` fixture in conftest); nothing here talks to a broker.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    dir: Path

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_key(path: Path) -> Path:
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def make_ca(directory: Path, name: str) -> Path:
    key, cert = make_key(directory / f"{name}.key"), directory / f"{name}.crt"
    openssl(
        "req", "-x509", "-new", "-key", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert


def make_leaf(directory: Path, name: str, *, ca: str, cn: str, usage: str, san: str) -> None:
    key, csr = make_key(directory / f"{name}.key"), directory / f"{name}.csr"
    openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
    )
    openssl(
        "x509", "-req", "-in", csr, "-CA", directory / f"{ca}.crt", "-CAkey",
        directory / f"{ca}.key", "-set_serial", str(secrets.randbits(63)), "-days", "2",
        "-extfile", extensions, "-out", directory / f"{name}.crt",
    )  # fmt: skip


def make_certs(directory: Path) -> Certs:
    """Two CAs; server leaves (for both names, DNS only, from the other CA); a client leaf."""
    ca, other_ca = make_ca(directory, "ca"), make_ca(directory, "other-ca")
    both = "DNS:localhost,IP:127.0.0.1"
    make_leaf(directory, "server", ca="ca", cn="localhost", usage="serverAuth", san=both)
    make_leaf(
        directory, "dns-only", ca="ca", cn="localhost", usage="serverAuth", san="DNS:localhost"
    )
    make_leaf(directory, "foreign", ca="other-ca", cn="localhost", usage="serverAuth", san=both)
    make_leaf(directory, "client", ca="ca", cn="springcore-bridge", usage="clientAuth", san="")
    return Certs(ca, other_ca, directory)
