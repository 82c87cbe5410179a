"""Shared fixtures; the helpers they use are in tests/helpers.py."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import ROOT, tiny_params_copy, write_params


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    """A params file whose stages finish in seconds on 2 CPU cores."""
    return write_params(tmp_path / "params.yaml", tiny_params_copy())


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture
def host_lookups(monkeypatch) -> list[str]:
    """Host names looked up during the test; any but localhost fails. A local load must not
    reach the network, and datasets swallows the error of its download-count ping, so tests
    assert on the record rather than rely on the raise."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def record(host, *args, **kwargs):
        seen.append(str(host))
        if host not in ("localhost", "127.0.0.1", "::1", None):
            raise socket.gaierror(f"test: no lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", record)
    return seen
