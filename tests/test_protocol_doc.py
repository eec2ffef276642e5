"""docs/PROTOCOL.md is generated from protocol/: it must match the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protocol_doc.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\n(regenerate: python tools/gen_protocol_doc.py)"


def test_reference_names_every_message_and_limit():
    from protocol import messages as M
    from protocol import params as P

    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    for name in list(M.REQUEST_NAMES.values()) + list(P.LIMIT_NAMES) + list(P.FIELD_NAMES):
        assert name in text
