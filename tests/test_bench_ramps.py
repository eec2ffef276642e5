"""bench/ramp_fidelity.py (BENCHMARKS.md §10: ramps, soft stop, live changes) runs at its tiny size and
its numbers hold: every edge exact to the tick, every pulse's amplitude from the capture's DAC bus equal
to the model, no DAC change inside a pulse; run_all knows the table and a regeneration keeps sections 7+."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import ramp_fidelity, run_all  # noqa: E402


def test_ramp_fidelity_tiny():
    s = ramp_fidelity.run("tiny")
    h = s.headline
    assert h["all_ok"] and h["amplitudes_ok"]
    assert h["worst_timing_error_ticks"] == 0 and h["changes_in_pulse"] == 0
    assert h["cases"] == len(ramp_fidelity.TINY) and h["pulses"] > 50
    assert "| case | what | pulses |" in s.body and "FAIL" not in s.body and "= model**" not in s.body


def test_the_amplitude_check_is_not_vacuous(monkeypatch):
    """A firmware whose soft start rounds down instead of to the nearest code shows up in the table."""
    from firmware import pulse_engine

    orig = pulse_engine.RampWriter.__init__

    def floor_init(self, trains, channels, waits, down):
        orig(self, trains, channels, waits, down)
        if not down:
            for st in self.state:  # [k, code1, step, num, den, ...]: num = 2 code1 + k -> 2 code1 (floor)
                st[3] -= st[0] if st[0] > 0 else trains[st[-1]].ramp_up_k
    monkeypatch.setattr(pulse_engine.RampWriter, "__init__", floor_init)
    s = ramp_fidelity.run("tiny")
    assert not s.headline["amplitudes_ok"] and not s.headline["all_ok"]
    assert "= model**" in s.body and "amplitude check **FAILED**" in s.body


def test_run_all_writes_the_section_and_keeps_the_others(tmp_path):
    out = tmp_path / "B.md"
    out.write_text("# old\n\n## 7. Long trains\n\nkept 7\n\n## 9. Test strength\n\nkept 9\n", encoding="utf-8")
    assert run_all.main(["--only", "ramps", "--tiny", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "kept 7" in text and "kept 9" in text
    seven, nine = text.index("## 7. Long trains"), text.index("## 9. Test strength")
    assert seven < nine < text.index("## 10. Timing and amplitude")
    assert "**Ramps, soft stop, live amplitude changes**" in text
