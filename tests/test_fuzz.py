"""The fuzz harnesses (tests/fuzz): their contracts replayed over the committed vectors, and a
short deterministic fuzzing run of each. docs/fuzzing.md says how to fuzz for longer."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from feedhandler.session import protocol
from feedhandler.session.protocol import ProtocolError
from fuzz import fuzz_frames, fuzz_itch, fuzz_session

HARNESSES = {"frames": fuzz_frames, "itch": fuzz_itch, "session": fuzz_session}
VECTORS = Path(__file__).resolve().parent / "vectors"
FOUND = VECTORS / "found"        # what the long runs added to the seeds (libFuzzer -merge=1)
CRASHES = VECTORS / "crashes"
ROOT = Path(__file__).resolve().parents[1]

# Findings not fixed yet: their vectors must still fail (strict xfail), so a fix shows up as
# XPASS and its entry here is deleted, turning the vector into a plain regression test.
# Findings that are still open, by vector under tests/vectors/crashes/ (each replays as a
# strict xfail until it is fixed; then its entry goes). Every finding so far is fixed.
KNOWN_BUGS: dict[str, str] = {}


def replayed(directory: Path, known: dict):
    for harness in HARNESSES:
        folder = directory / harness
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            key = f"{harness}/{path.name}"
            marks = [pytest.mark.xfail(strict=True, reason=known[key])] if key in known else []
            yield pytest.param(harness, path, id=key, marks=marks)


@pytest.mark.parametrize("harness, path", [*replayed(VECTORS, {}), *replayed(FOUND, {}),
                                           *replayed(CRASHES, KNOWN_BUGS)])
def test_vector_keeps_the_contract(harness, path):
    HARNESSES[harness].check(path.read_bytes())


def test_known_bugs_have_vectors():
    assert all((CRASHES / key).is_file() for key in KNOWN_BUGS)


def test_seed_vectors_are_valid_input():
    """The seeds are what the encoders make, so they decode without a fault: a mutation of
    them starts from the interesting side of every check."""
    for path in (VECTORS / "frames").iterdir():
        assert not fuzz_frames.packet.decode(path.read_bytes(), policy="quarantine").quarantined
    for path in (VECTORS / "itch").iterdir():
        assert not fuzz_itch.itch.parse_quarantine(path.read_bytes())[1]


def test_debug_frame_holds_its_type_byte():
    """A debug frame of length 0 would leave its type byte outside it: the client would slice a
    4-byte frame and read the next frame from inside the stream (found by reading the code)."""
    with pytest.raises(ProtocolError):
        protocol.check_server_frame(protocol.DEBUG, 0)


# Executions per harness: a few seconds each on one core.
SHORT_RUNS = {"frames": 12000, "itch": 15000, "session": 10000}


@pytest.mark.parametrize("harness", HARNESSES)
def test_short_fuzzing_run(harness, tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, str(ROOT / "tests" / "fuzz" / f"fuzz_{harness}.py"),
               f"-runs={SHORT_RUNS[harness]}", "-seed=1", "-timeout=10", "-rss_limit_mb=2048",
               f"-artifact_prefix={tmp_path}/", str(corpus),
               *[str(seeds / harness) for seeds in (VECTORS, FOUND) if (seeds / harness).is_dir()]]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    # libFuzzer finishes the mutation round it is in once the count is reached: a few more.
    done = re.search(r"^Done (\d+) runs", run.stderr, re.MULTILINE)
    assert done and int(done.group(1)) >= SHORT_RUNS[harness], run.stderr[-2000:]
