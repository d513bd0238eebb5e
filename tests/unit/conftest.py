"""Servers shared by many tests: started once, stopped at the end of the session."""

from __future__ import annotations

import pytest
from utils import ServerPreset


@pytest.fixture(scope="session")
def chat_server():
    """The embedded chat model (ServerPreset.chat) with --metrics: the default target of
    every test that needs no particular flags."""
    server = ServerPreset.chat()
    server.server_metrics = True
    server.persistent = True
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server_pool():
    """Lazily started servers shared by a module's tests, keyed by a name:
    `server_pool(name, factory)` starts `factory()` once; all are stopped with the module."""
    servers: dict[str, object] = {}

    def get(name, factory):
        if name not in servers:
            server = factory()
            server.persistent = True
            servers[name] = server.start()
        return servers[name]

    yield get
    for server in servers.values():
        server.stop()
