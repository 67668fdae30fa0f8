"""What ``pip install .`` ships: every package of the bridge (a wheel once lacked bridge.mqtt)."""

from __future__ import annotations

import fnmatch
import tomllib

from tests.support import REPO


def test_every_bridge_package_is_in_the_distribution():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    # setuptools' packages.find: a package ships when a pattern matches its dotted name.
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    inits = (REPO / "bridge").rglob("__init__.py")
    on_disk = {".".join(init.parent.relative_to(REPO).parts) for init in inits}
    assert "bridge.mqtt" in on_disk
    left_out = {name for name in on_disk if not any(fnmatch.fnmatch(name, p) for p in include)}
    assert left_out == set()
