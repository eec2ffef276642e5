"""Mutation testing (mutmut 3.8), one module at a time, with the tests meant to cover it.

    python tools/mutate.py                 # every module in MODULES, then rewrite the BENCHMARKS.md table
    python tools/mutate.py impedance params  # only these (matched against the module path); table rows merged
    python tools/mutate.py --survivors params  # after adding tests: copy the current tests into the
                                               # existing build/mutate/<module>/ tree and re-run only
                                               # the mutants that survived there (same sources)

Why a scratch tree: mutmut 3 copies the sources to ``mutants/`` next to pyproject.toml and names a
module by its file path, but the host package lives in ``host/picostim`` and is imported as
``picostim``. So each module gets its own tree under ``build/mutate/<slug>/`` with ``firmware/``,
``protocol/`` and ``picostim/`` (= host/picostim) at the top, the tests, and a pyproject.toml whose
[tool.mutmut] section is the repository's plus ``only_mutate`` (that one file) and
``pytest_add_cli_args_test_selection`` (its tests). The shared checkout never gets a ``mutants/``.

Score = killed / (total - no tests - skipped); timeouts count as killed (mutmut does the same for
its own score). Slow: this is ``make mutate``, never part of ``make test``.
"""
from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutate"
BENCH = ROOT / "BENCHMARKS.md"
MAX_CHILDREN = "2"

# module (path in the scratch tree) -> tests meant to cover it (paths relative to the repo root)
MODULES: dict[str, list[str]] = {
    "firmware/impedance.py": ["tests/test_impedance.py", "tests/test_mutation_kills_impedance.py"],
    "firmware/pulse_engine.py": ["tests/test_pulse_engine.py", "tests/test_dead_time.py",
                                "tests/test_long_trains.py", "tests/test_ramps.py", "tests/test_triphasic_engine.py",
                                "tests/test_sequence_protocol.py", "tests/test_mutation_kills_pulse_engine.py"],
    "protocol/params.py": ["tests/test_params.py", "tests/test_sequence_protocol.py",
                           "tests/test_mutation_kills_params.py"],
    "protocol/cobs.py": ["tests/test_protocol.py", "tests/test_mutation_kills_cobs.py"],
    "protocol/crc16.py": ["tests/test_protocol.py", "tests/test_mutation_kills_crc16.py"],
    "protocol/framing.py": ["tests/test_protocol.py", "tests/test_mutation_kills_framing.py"],
    "protocol/messages.py": ["tests/test_protocol.py", "tests/test_sequence_protocol.py",
                             "tests/test_mutation_kills_messages.py"],
    # the controller is covered by its own tests and by those that drive it through the virtual Pico's
    # HAL (monitoring, ramps, live amplitude, sequences): the fuzz FakeHal has no ADC samples
    "firmware/controller.py": ["tests/test_controller.py", "tests/test_disarm_stop.py",
                               "tests/test_crash_path.py", "tests/test_impedance.py",
                               "tests/test_impedance_unknown.py", "tests/test_ramps.py", "tests/test_ramp_e2e.py",
                               "tests/test_set_amplitude.py", "tests/test_sequence_controller.py",
                               "tests/test_mutation_kills_controller.py"],
    "firmware/dma_chain.py": ["tests/test_long_trains.py", "tests/test_pulse_engine.py", "tests/test_hal_rp2.py",
                              "tests/test_hal_rp2_races.py", "tests/test_feeder_fast_path.py",
                              "tests/test_sequence_stream.py", "tests/test_mutation_kills_dma_chain.py"],
    "firmware/storage.py": ["tests/test_storage.py", "tests/test_mutation_kills_storage.py"],
    "firmware/sequence.py": ["tests/test_sequence_protocol.py", "tests/test_sequence_controller.py",
                             "tests/test_sequence_stream.py", "tests/test_mutation_kills_sequence.py"],
    "firmware/seq_stream.py": ["tests/test_sequence_stream.py", "tests/test_sequence_dac.py",
                               "tests/test_mutation_kills_seq_stream.py"],
    "picostim/capture/analyzer.py": ["tests/test_analyzer.py", "tests/test_dac_decode.py",
                                     "tests/test_sigrok_spi_agrees.py", "hil_tests/test_triphasic.py",
                                     "tests/test_sequence_analyzer.py", "tests/test_mutation_kills_analyzer.py"],
    "picostim/paramfile.py": ["tests/test_paramfile.py", "tests/test_paramfile_ramps.py",
                              "tests/test_paramfile_sequence.py", "tests/test_paramfile_check_sequence.py",
                              "tests/test_mutation_kills_paramfile.py"],
}

# tests of a selected file left out of a module's run (pytest --deselect, node id prefix): unmarked
# MicroPython-toolchain tests that take the rewritten file as a whole (mpy-cross runs out of memory on
# mutmut's trampolined dma_chain.py, the unix port cannot import it), so mutmut's first run fails
DESELECT: dict[str, list[str]] = {
    "firmware/dma_chain.py": ["tests/test_hal_rp2.py::test_compiles_with_mpy_cross",
                              "tests/test_hal_rp2.py::test_dma_chain_and_hal_import_under_micropython"],
}

MARK_START = "<!-- mutate:start (tools/mutate.py rewrites this block) -->"
MARK_END = "<!-- mutate:end -->"


def slug(module: str) -> str:
    return module.replace("/", "_").removesuffix(".py")


def build_tree(module: str, tests: list[str]) -> Path:
    d = WORK / slug(module)
    if (d / "mutants").exists():
        shutil.rmtree(d / "mutants")  # sources or tests may have changed: start clean
    for name in ("firmware", "protocol", "picostim", "tests", "hil_tests", "presets"):
        if (d / name).exists():
            shutil.rmtree(d / name)
    d.mkdir(parents=True, exist_ok=True)
    ign = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    shutil.copytree(ROOT / "firmware", d / "firmware", ignore=ign)
    shutil.copytree(ROOT / "protocol", d / "protocol", ignore=ign)
    shutil.copytree(ROOT / "host" / "picostim", d / "picostim", ignore=ign)
    shutil.copytree(ROOT / "tests", d / "tests", ignore=ign)
    shutil.copytree(ROOT / "hil_tests", d / "hil_tests", ignore=ign)
    shutil.copytree(ROOT / "presets", d / "presets", ignore=ign)
    write_config(d, module, tests)
    return d


def write_config(d: Path, module: str, tests: list[str]) -> None:
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    text = (ROOT / "pyproject.toml").read_text()
    # replace the [tool.mutmut] section with the per-module one
    cfg = dict(base)
    cfg["only_mutate"] = [module]
    cfg["pytest_add_cli_args_test_selection"] = [t for t in tests if (ROOT / t).exists()]
    for nodeid in DESELECT.get(module, []):
        cfg["pytest_add_cli_args_test_selection"] += ["--deselect", nodeid]
    sect = ["[tool.mutmut]"] + ["%s = %s" % (k, json.dumps(v)) for k, v in cfg.items()]
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "\n".join(sect) + "\n\n", text)
    (d / "pyproject.toml").write_text(text)


def survivors(d: Path, module: str) -> list[str]:
    meta = json.loads((d / "mutants" / (module + ".meta")).read_text())["exit_code_by_key"]
    return [name for name, code in meta.items() if code == 0]


def run_module(module: str, only_survivors: bool = False) -> dict:
    tests = MODULES[module]
    mutmut = [sys.executable, "-m", "mutmut"]
    d = WORK / slug(module)
    names: list[str] = []
    if only_survivors:
        if not (d / "mutants").exists():
            raise SystemExit("no earlier run of %s in %s: run it in full first" % (module, d))
        shutil.rmtree(d / "tests")
        shutil.copytree(ROOT / "tests", d / "tests", ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        names = survivors(d, module)
        meta_path = d / "mutants" / (module + ".meta")
        old_codes = json.loads(meta_path.read_text())["exit_code_by_key"]
        # a new test file changes mutmut's test selection, which resets every verdict: only the
        # survivors are run again and the earlier kills are restored below (same sources; tests
        # were only added, so a killed mutant stays killed)
        write_config(d, module, tests)
        print("== %s: re-running %d survivors with the current tests" % (module, len(names)), flush=True)
    else:
        d = build_tree(module, tests)
        print("== %s (tests: %s)" % (module, " ".join(tests)), flush=True)
    with open(d / "mutmut.log", "a" if only_survivors else "w") as log:
        rc = 0
        if names or not only_survivors:
            rc = subprocess.run(mutmut + ["run", "--max-children", MAX_CHILDREN] + names, cwd=d, check=False,
                                stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit("mutmut run failed for %s (exit %d): see %s" % (module, rc, d / "mutmut.log"))
    if only_survivors:
        meta = json.loads(meta_path.read_text())
        codes = meta["exit_code_by_key"]
        for name, code in old_codes.items():
            if code != 0 and codes.get(name) is None:
                codes[name] = code
        meta_path.write_text(json.dumps(meta))
    subprocess.run(mutmut + ["export-cicd-stats"], cwd=d, check=True, stdout=subprocess.DEVNULL)
    st = json.loads((d / "mutants" / "mutmut-cicd-stats.json").read_text())
    res = subprocess.run(mutmut + ["results"], cwd=d, check=True, capture_output=True, text=True)
    (d / "survivors.txt").write_text(res.stdout)
    killed = st["killed"] + st["timeout"]
    real = st["total"] - st["no_tests"] - st["skipped"]
    row = {"module": module, "killed": killed, "total": real, "survived": st["survived"],
           "no_tests": st["no_tests"],
           "score": 100.0 * killed / real if real else 0.0,
           "date": datetime.date.today().isoformat(),
           "source": source_commit(module, only_survivors),
           "tests": [t for t in tests if (ROOT / t).exists()]}
    print("   killed %d / %d (%.1f %%), survived %d, no tests %d; survivors in %s" % (
        killed, real, row["score"], st["survived"], st["no_tests"], d / "survivors.txt"), flush=True)
    return row


def source_commit(module: str, only_survivors: bool) -> str:
    """The commit whose sources were mutated: a --survivors run keeps its full run's sources (it may
    not be re-run on changed sources), a full run uses the checkout's HEAD (uncommitted changes: +)."""
    if only_survivors:
        return old_rows().get(module, {}).get("source", "?")
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "firmware", "protocol", "host"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def table(rows: dict[str, dict]) -> str:
    out = [MARK_START, "",
           "| module | killed / total | score | survived | no test reaches | sources | date | tests run |",
           "|---|---|---|---|---|---|---|---|"]
    for module in MODULES:
        r = rows.get(module)
        if r is None:
            continue
        out.append("| `%s` | %d / %d | %.1f %% | %d | %d | %s | %s | %s |" % (
            r["module"], r["killed"], r["total"], r["score"], r["survived"], r["no_tests"], r.get("source", "?"),
            r["date"],
            ", ".join("`%s`" % Path(t).name for t in r["tests"])))
    out += ["", "Command: `make mutate` (= `python tools/mutate.py`; one module: "
            "`python tools/mutate.py impedance`), mutmut %s, `--max-children %s`. Total excludes mutants "
            "no selected test reaches (shown separately). *Sources*: the commit whose module was mutated (a "
            "`--survivors` re-run keeps it and adds the tests written since). Surviving mutants and why each is "
            "equivalent or still open: [tests/mutation-survivors.md](tests/mutation-survivors.md)."
            % (mutmut_version(), MAX_CHILDREN), "", MARK_END]
    return "\n".join(out)


def mutmut_version() -> str:
    from importlib.metadata import version
    return version("mutmut")


def old_rows() -> dict[str, dict]:
    j = WORK / "scores.json"
    return json.loads(j.read_text()) if j.exists() else {}


def main(argv: list[str]) -> int:
    only_survivors = "--survivors" in argv
    argv = [a for a in argv if a != "--survivors"]
    wanted = [m for m in MODULES if not argv or any(a in m for a in argv)]
    if not wanted:
        print("no module matches %s; known: %s" % (argv, ", ".join(MODULES)))
        return 2
    for m in wanted:
        row = run_module(m, only_survivors)
        rows = old_rows()  # re-read: another module's run may have finished meanwhile
        rows[m] = row
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "scores.json").write_text(json.dumps(rows, indent=1))
    rows = old_rows()
    block = table(rows)
    text = BENCH.read_text()
    if MARK_START in text:
        text = re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## 9. Test strength (mutation testing)\n\n" + block + "\n"
    BENCH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
