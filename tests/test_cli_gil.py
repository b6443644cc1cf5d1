"""The worker shortens the GIL switch interval so the executor thread gets the GIL back quickly."""

import sys

import pytest

from runtime.cli import GIL_SWITCH_INTERVAL_S, set_gil_switch_interval


@pytest.fixture
def restore_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_default_is_well_under_a_decode_step(restore_interval, monkeypatch):
    monkeypatch.delenv("WORKER_ORCD_GIL_SWITCH_S", raising=False)
    assert set_gil_switch_interval() == GIL_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    assert GIL_SWITCH_INTERVAL_S < 0.001 < 0.005  # Python's own default is 5 ms


def test_environment_overrides_it(restore_interval, monkeypatch):
    monkeypatch.setenv("WORKER_ORCD_GIL_SWITCH_S", "0.005")
    assert set_gil_switch_interval() == 0.005
    assert sys.getswitchinterval() == pytest.approx(0.005)
