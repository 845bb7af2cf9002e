"""Fixtures: an in-memory fake API for unit tests, and a real server (marked
``server``) started from ``COUNTERSIGN_BIN`` for integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from countersign import Client
from fakeserver import EXECUTOR_KEY, SERVICE_KEY, FakeServer
from harness import LocalServer, Reviewer, binary_available, server_binary


@pytest.fixture
def fake() -> FakeServer:
    return FakeServer()


@pytest.fixture
def service(fake: FakeServer) -> Iterator[Client]:
    with fake.client(SERVICE_KEY) as c:
        yield c


@pytest.fixture
def agent(fake: FakeServer) -> Iterator[Client]:
    with fake.client(fake.run_token()) as c:
        yield c


@pytest.fixture
def executor_client(fake: FakeServer) -> Iterator[Client]:
    with fake.client(EXECUTOR_KEY) as c:
        yield c


# ------------------------------------------------------------ real server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    if not binary_available():
        pytest.fail(
            f"no countersign binary at {server_binary()}: build it or set COUNTERSIGN_BIN "
            "(or deselect these tests with -m 'not server')",
            pytrace=False,
        )
    workdir: Path = tmp_path_factory.mktemp("countersign")
    srv = LocalServer.start(workdir)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def alice(server: LocalServer) -> Iterator[Reviewer]:
    r = Reviewer(server.url, "alice")
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="session")
def bob(server: LocalServer) -> Iterator[Reviewer]:
    r = Reviewer(server.url, "bob")
    try:
        yield r
    finally:
        r.close()
