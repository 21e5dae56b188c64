"""Shared fixtures: a Ray cluster of the tests' own, stopped by its own handle (never `ray stop`)."""

from __future__ import annotations

import os

from collections.abc import Iterator

import pytest

from connectors.modbus import PlcSimulator
from connectors.mqtt import MosquittoBroker
from connectors.pacs import OrthancServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from this run")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray started for this test session (2 CPUs) and shut down at its end."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    """A real Mosquitto (Debian's) on a free loopback port."""
    with MosquittoBroker() as b:
        yield b


@pytest.fixture(scope="session")
def orthanc() -> Iterator[OrthancServer]:
    """A real Orthanc (Debian's, with DICOMweb) on free loopback ports, storage in a temporary folder; studies
    turn stable 1 s after their last instance."""
    with OrthancServer(stable_age_s=1) as server:
        yield server


@pytest.fixture
def plc() -> Iterator[PlcSimulator]:
    """The pymodbus PLC simulator on a free loopback port, in a background thread."""
    with PlcSimulator() as sim:
        yield sim
