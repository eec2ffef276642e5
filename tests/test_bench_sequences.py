"""bench/sequence_fidelity.py (BENCHMARKS.md §11: custom sequences) runs at its tiny size and its numbers
hold: every onset exact to the tick (relative and the first against the stream start), every amplitude
from the capture's DAC bus equal to the file after DAC rounding, no DAC change inside a pulse; a firmware
that stores one onset a tick late shows up in the table; run_all knows the table."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import run_all, sequence_fidelity  # noqa: E402


def test_sequence_fidelity_tiny():
    s = sequence_fidelity.run("tiny")
    h = s.headline
    assert h["all_ok"] and h["amplitudes_ok"], s.body
    assert h["worst_onset_error_ticks"] == 0 and h["changes_in_pulse"] == 0
    assert h["cases"] == 4 and h["pulses"] == 300 + 180 + 100 + 16
    assert "| case | what | pulses |" in s.body and "FAIL" not in s.body and "**differs**" not in s.body


def test_the_onset_check_is_not_vacuous(monkeypatch):
    """Pulse 7 of every upload stored 8 ns (one tick) late by the firmware: the table says so."""
    from firmware import sequence

    orig = sequence.SequenceBuilder.add

    def late(self, first, onsets_ns, amplitudes_ua):
        onsets_ns = list(onsets_ns)
        if first <= 7 < first + len(onsets_ns):
            onsets_ns[7 - first] += 8
        return orig(self, first, onsets_ns, amplitudes_ua)

    monkeypatch.setattr(sequence.SequenceBuilder, "add", late)
    s = sequence_fidelity.run("tiny")
    assert not s.headline["all_ok"] and s.headline["worst_onset_error_ticks"] == 1
    assert "FAIL: sequence onsets: 1/" in s.body


def test_run_all_writes_the_section(tmp_path):
    out = tmp_path / "B.md"
    out.write_text("# old\n\n## 10. Timing and amplitude with ramps\n\nkept 10\n", encoding="utf-8")
    assert run_all.main(["--only", "sequences", "--tiny", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "kept 10" in text
    assert text.index("## 10. Timing and amplitude with ramps") < text.index("## 11. Timing and amplitude of custom")
    assert "**Custom sequences**" in text
