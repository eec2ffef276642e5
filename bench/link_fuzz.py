"""Table 6: fuzzing the link: frames tried and crashes found, on both sides of the wire.

The same seeded mutator as tests/test_fuzz_link.py (tests/fuzz/fuzz_link.py): random bytes, bit flips,
truncation, concatenation, oversize frames and valid frames with hostile bodies, fed to the firmware's
decoder + dispatcher (Controller on a fake HAL) and to the host's decoder + response parsing. Every
input is checked against the invariants (nothing escapes, an invalid frame changes nothing, every
dropped frame is counted, the decoder resynchronises); a crash is any exception.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.common import Section, table

FUZZ_DIR = Path(__file__).resolve().parent.parent / "tests" / "fuzz"


def _fuzz(target: str, min_frames: int) -> dict:
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    import fuzz_link as F

    F.STATS.clear()
    F.STATS.update(inputs=0, frames=0, valid_frames=0)
    crashes: list = []
    t0 = time.perf_counter()
    batch = 0
    while F.STATS["frames"] < min_frames:
        crashes += F.mutation_run(target, 5000, seed=2000 + batch)
        batch += 1
    return dict(F.STATS, crashes=len(crashes), seconds=time.perf_counter() - t0)


def run(scale: str = "full") -> Section:
    t0 = time.perf_counter()
    min_frames = 1_000_000 if scale == "full" else 5_000
    results = {target: _fuzz(target, min_frames) for target in ("firmware", "host")}
    rows = [[target, f"{r['inputs']:,}", f"{r['frames']:,}", f"{r['valid_frames']:,}",
             f"{r.get('malformed', 0):,}" if target == "host" else "—", r["crashes"],
             f"{r['frames'] / r['seconds']:,.0f}"] for target, r in results.items()]
    body = "\n".join([
        __doc__.split("\n", 2)[2].strip(),
        "",
        table(["side", "inputs", "frames tried", "frames with a good CRC", "malformed answers handled",
               "crashes", "frames/s"], rows),
        "",
        "Coverage-guided fuzzing of the same targets with atheris: `make fuzz` (5 min per side); the "
        "corpus replayed under the MicroPython unix port gives byte-identical decisions "
        "(`tests/test_fuzz_link.py`).",
    ])
    return Section("fuzz", "6. Fuzzing the link (frames tried, crashes)", body,
                   headline={t: {"frames": r["frames"], "crashes": r["crashes"]} for t, r in results.items()},
                   elapsed_s=time.perf_counter() - t0)
