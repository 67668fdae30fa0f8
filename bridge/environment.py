"""What the bridge is given besides the flags: the settings file it reads, and the ``BRIDGE_``
variables that no setting reads (a typo, a retired name), each with a hint.

Nothing here logs: the command line logs the hints once logging is set up (README, Configuration).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from bridge.config import ENV_PREFIX, ConfigError, env_names

DEFAULT_ENV_FILE = Path(".env")

RETIRED = {
    "BRIDGE_OUTBOX_SIZE": "no longer used: the outbox is now bounded in bytes by "
    "BRIDGE_SPOOL_MAX_MB (BRIDGE_MEMORY_MAX_MB with BRIDGE_SPOOL_PATH=none)",
}
"""Names that earlier versions read, and what replaced them."""


def env_file_to_read(given: str | None) -> Path | None:
    """The settings file: ``--env-file`` when given (it must be a readable file), else
    ``.env`` in the working directory when there is one; ``None``: no file."""
    path = DEFAULT_ENV_FILE if given is None else Path(given)
    if given is None and not path.exists():
        return None  # the default file is optional
    fix = "give an existing settings file, or leave --env-file out to read ./.env if any"
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError([f"--env-file: {path} {what}: {fix}"])
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError([f"--env-file: cannot read {path}: {exc.strerror}: {fix}"]) from None
    return path


def unknown_variables(environ: Mapping[str, str], env_file: Path | None) -> list[str]:
    """One line per ``BRIDGE_`` name that no setting reads, in the environment or in
    ``env_file``, saying where it is and what was probably meant."""
    known = set(env_names())
    sources = [("the environment", list(environ))]
    if env_file is not None:
        sources.append((str(env_file), list(dotenv_values(env_file))))
    lines = []
    for where, names in sources:
        for name in names:
            upper = name.upper()  # pydantic-settings reads the names case-insensitively
            if upper.startswith(ENV_PREFIX) and upper not in known:
                lines.append(f"{name} (in {where}) is ignored: {_hint(upper, known)}")
    return lines


def _hint(name: str, known: set[str]) -> str:
    if name in RETIRED:
        return RETIRED[name]
    nearest = difflib.get_close_matches(name, sorted(known), n=1)
    if nearest:
        return f"no setting has this name; did you mean {nearest[0]}?"
    return "no setting has this name (config.example.env lists them all)"
