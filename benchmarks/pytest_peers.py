"""Blocking detectors in a test suite, side by side on loopwatch's corpus (tests/corpus).

Each tool runs the same 30 async tests (18 block the loop on a line marked ``# BLOCKS``,
12 do not), the way its documentation says to use it in pytest:

- loopwatch: ``pytest --loopwatch``;
- blockbuster: an autouse fixture around every test, ``with blockbuster_ctx()``;
- pyleak: its plugin's ``no_leaks("blocking")`` mark on every test;
- aiocop: an autouse async fixture that activates it on the test's loop (audit functions
  patched, blocking I/O and slow tasks over 0.1 s), failing the test when it reported one.

A blocking test counts as caught when it fails; a fine one that fails is a false alarm;
"names the line" when the failure text holds the ``# BLOCKS`` line. The peers are
installed into benchmarks/.peers-lib, put on PYTHONPATH for their run only.

Usage: python benchmarks/pytest_peers.py   (writes benchmarks/results/pytest_peers.json)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_pytest_plugin import corpus_lines  # noqa: E402 - the corpus's one reader

CORPUS = ROOT / "tests" / "corpus"
PEERS = ROOT / "benchmarks" / ".peers-lib"
PEER_PACKAGES = ("blockbuster==1.5.29", "pyleak==0.2.0", "aiocop==1.2.1")
INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
asyncio_default_test_loop_scope = function
"""
CONFTESTS = {
    "loopwatch": "",
    "blockbuster": """
import pytest
from blockbuster import blockbuster_ctx

@pytest.fixture(autouse=True)
def _blockbuster():
    with blockbuster_ctx() as bb:
        yield bb
""",
    "pyleak": """
import inspect
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.no_leaks("blocking"))
""",
    "aiocop": """
import pytest
import aiocop

aiocop.patch_audit_functions()
aiocop.start_blocking_io_detection(trace_depth=20)

@pytest.fixture(autouse=True)
async def _aiocop():
    found = []
    aiocop.detect_slow_tasks(threshold_ms=100, on_slow_task=found.append)
    aiocop.activate()
    yield
    aiocop.deactivate()
    hits = [e for e in found if e.exceeded_threshold or e.blocking_events]
    if hits:
        pytest.fail(f"aiocop: {hits[0].reason} {hits[0].blocking_events[:1]}")
""",
}
ARGS = {
    "loopwatch": ["--loopwatch", "-p", "no:pyleak"],
    "blockbuster": ["-p", "no:pyleak", "-p", "no:loopwatch"],
    "pyleak": ["-p", "no:loopwatch"],
    "aiocop": ["-p", "no:pyleak", "-p", "no:loopwatch"],
}


def ensure_peers() -> None:
    if not (PEERS / "pyleak").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(PEERS), *PEER_PACKAGES],
            check=True,
        )


def run(tool: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        shutil.copy(CORPUS / "corpus_tests.py", where / "test_corpus.py")
        shutil.copy(CORPUS / "vendor_client.py", where / "vendor_client.py")
        (where / "pytest.ini").write_text(INI)
        (where / "conftest.py").write_text(CONFTESTS[tool])
        env = {"PYTHONPATH": f"{PEERS}:{ROOT}", "PATH": "/usr/bin:/bin"}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml=out.xml", *ARGS[tool]],
            cwd=where, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        cases = ET.parse(where / "out.xml").getroot().iter("testcase")  # noqa: S314 - our own run's file
        outcomes = {}
        for case in cases:
            failure = case.find("failure")
            error = case.find("error")
            text = ""
            for node in (failure, error):
                if node is not None:
                    text += (node.get("message") or "") + (node.text or "")
            outcomes[case.get("name", "")] = text or None
    lines = corpus_lines()
    blocking = [t for t in outcomes if t.startswith("test_blocks_")]
    fine = [t for t in outcomes if t.startswith("test_fine_")]
    caught = [t for t in blocking if outcomes[t]]
    named = [t for t in caught if f"test_corpus.py:{lines[t]}" in (outcomes[t] or "")]
    return {
        "tool": tool,
        "blocking": len(blocking),
        "caught": len(caught),
        "missed": sorted(set(blocking) - set(caught)),
        "names_the_line": len(named),
        "fine": len(fine),
        "false_alarms": sorted(t for t in fine if outcomes[t]),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ensure_peers()
    rows = [run(tool) for tool in (sys.argv[1:] or CONFTESTS)]
    out = ROOT / "benchmarks/results/pytest_peers.json"
    out.write_text(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2) + "\n")
    print(
        "| tool | blocking tests caught | names the `# BLOCKS` line | false alarms (of fine tests) | suite time |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['tool']} | {r['caught']}/{r['blocking']} | {r['names_the_line']} | "
            f"{len(r['false_alarms'])}/{r['fine']} | {r['seconds']} s |"
        )
    for r in rows:
        print(
            f"{r['tool']}: missed {', '.join(r['missed']) or 'none'}; false alarms {', '.join(r['false_alarms']) or 'none'}"
        )


if __name__ == "__main__":
    main()
