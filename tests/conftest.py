"""Shared pytest hooks: the reliability figures (tests/reliability_report.py) in the terminal summary."""


def pytest_terminal_summary(terminalreporter):
    from reliability_report import FIGURES, OUT

    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures (also in %s)" % OUT)
        for name, figs in sorted(FIGURES.items()):
            terminalreporter.write_line("%s: %s" % (name, ", ".join(
                "%s=%s" % (k, v) for k, v in figs.items() if k != "recorded")))
