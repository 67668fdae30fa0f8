"""Fixtures: a real Mosquitto on a free port, the reader simulator, bridges, subscribers.

The pieces themselves live in ``tests/support.py``; they are re-exported here for the tests'
type annotations.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.app import Bridge
from bridge.config import env_names, load_settings
from bridge.simulator import Simulator
from tests.pki import Certs, make_certs
from tests.support import (
    Broker,
    Received,
    Subscriber,
    bridge_command,
    bridge_env,
    free_port,
    local_settings,
    wait_port,
    wait_until,
)

__all__ = [
    "Broker",
    "Received",
    "Subscriber",
    "bridge_command",
    "bridge_env",
    "free_port",
    "wait_port",
    "wait_until",
]

_ids = itertools.count(1)


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Default spools go to a temporary state directory, never the user's (subprocesses too)."""
    saved = {name: os.environ.pop(name, None) for name in ("XDG_STATE_HOME", "STATE_DIRECTORY")}
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway PKI (tests/pki.py), made once per session."""
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(port=0) as sim:
        yield sim


@pytest.fixture
def subscribe(broker: Broker) -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(topic: str = "#", qos: int = 1) -> Subscriber:
        made.append(Subscriber(broker.port, topic, qos))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def device_id() -> str:
    return f"test{os.getpid()}-{next(_ids)}"


@pytest.fixture
def make_bridge(
    broker: Broker, simulator: Simulator, device_id: str, tmp_path: Path
) -> Iterator[Callable[..., Bridge]]:
    """Build and start a bridge between ``simulator`` and ``broker``; stopped at the end."""
    started: list[Bridge] = []

    def make(**overrides: object) -> Bridge:
        spool = str(tmp_path / f"spool-{len(started)}.db")
        defaults = local_settings(simulator.port, broker.port, device_id, spool_path=spool)
        settings = load_settings(env_file=None, **{**defaults, **overrides})
        bridge = Bridge(settings)
        bridge.start()
        started.append(bridge)
        return bridge

    yield make
    for bridge in started:
        bridge.stop(timeout=1.0)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BRIDGE_* variable of the caller's environment, and ``tmp_path`` as the working
    directory (no stray .env); returns it."""
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path
