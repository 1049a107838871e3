"""Thread defaults: never more busy threads than the machine has cores."""

from __future__ import annotations

import pytest

from charrnn import hardware
from charrnn.distributed import World


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(hardware, "physical_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_one_process_uses_every_physical_core(eight_cores):
    assert hardware.default_threads() == 8


def test_processes_on_one_machine_share_its_cores(eight_cores):
    assert hardware.default_threads(processes_on_this_machine=4) == 2
    assert hardware.default_threads(processes_on_this_machine=16) == 1


def test_omp_num_threads_wins_when_set(eight_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.default_threads(processes_on_this_machine=4) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a number: ignored
    assert hardware.default_threads() == 8


def test_torchrun_tells_how_many_processes_share_the_machine():
    world = World.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    assert (world.world_size, world.local_world_size) == (4, 2)
    assert World.from_env({"RANK": "0", "WORLD_SIZE": "2"}).local_world_size == 1
