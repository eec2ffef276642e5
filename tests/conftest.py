"""Shared pytest hooks and fixtures: the reliability figures (tests/reliability_report.py) in the
terminal summary; ``vp`` / ``client``, a stepped-time virtual Pico and a protocol client on it (for the
CLI tests, which open the same pty)."""

import pytest


@pytest.fixture
def vp():
    """A 4-channel virtual Pico whose virtual time moves only with ``vp.advance()``."""
    from picostim.virtual import device

    with device.VirtualPico(channels=4) as board:
        yield board


@pytest.fixture
def client(vp):
    """A HELLO'd client on ``vp``, not exclusive: the CLI opens the same pty while it stays open."""
    from picostim import transport
    from picostim.client import Client

    c = Client(transport.open_port(vp.path, exclusive=False), timeout=1.0, retries=2)
    c.hello()
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter):
    from reliability_report import FIGURES, OUT

    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures (also in %s)" % OUT)
        for name, figs in sorted(FIGURES.items()):
            terminalreporter.write_line("%s: %s" % (name, ", ".join(
                "%s=%s" % (k, v) for k, v in figs.items() if k != "recorded")))
