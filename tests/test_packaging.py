"""Release packaging: the sdist carries what it takes to build and test from it, the wheels are
built where cibuildwheel claims and without debug info, the workflow names what exists, and the
tests and benchmarks import the installed package when a checkout's is not built.
scripts/wheel_check.sh proves the wheel itself (auditwheel, fresh venv, Kafka run)."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

import feedhandler

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WORKFLOW = ROOT / ".github" / "workflows" / "wheels.yml"
# What a build or a test run leaves in a checkout, and that no copy of its sources should hold.
BUILD_PRODUCTS = shutil.ignore_patterns(".git", "build", "dist", "wheelhouse", "__pycache__",
                                        "*.so", "*.egg-info", ".pytest_cache", ".benchmarks",
                                        ".kafka", "*.c", "*.html")


@pytest.fixture(scope="module")
def unbuilt_checkout(tmp_path_factory) -> Path:
    """The checkout's sources without anything built: what a fresh clone looks like."""
    copy = tmp_path_factory.mktemp("checkout") / "feedhandler-src"
    shutil.copytree(ROOT, copy, ignore=BUILD_PRODUCTS)
    return copy


@pytest.fixture(scope="module")
def sdist(unbuilt_checkout, tmp_path_factory) -> Path:
    """Built without isolation, from the build requirements installed here (scripts/bootstrap.sh
    installs them; a cibuildwheel test environment has only the wheel and its test extra)."""
    pytest.importorskip("Cython", reason="the build requirements are not installed here")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out),
                    str(unbuilt_checkout)], check=True, capture_output=True)
    return next(out.glob("*.tar.gz"))


def sdist_members(path: Path) -> set[str]:
    with tarfile.open(path) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def test_sdist_carries_what_it_takes_to_build_and_test(sdist, unbuilt_checkout):
    members = sdist_members(sdist)
    needed = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"}
    for folder, patterns in {"ext": ("*.pyx", "*.pxd", "*.h"), "tests": ("*.py",),
                             "bench": ("*.py", "*.json"), "docs": ("*.md",),
                             "scripts": ("*.py", "*.sh")}.items():
        for pattern in patterns:
            needed |= {str(p.relative_to(unbuilt_checkout))
                       for p in (unbuilt_checkout / folder).rglob(pattern)}
    needed |= {str(p.relative_to(unbuilt_checkout))
               for p in (unbuilt_checkout / "tests" / "vectors").rglob("*") if p.is_file()}
    assert not needed - members, sorted(needed - members)
    assert "ext/decode.pyx" in members
    # Generated C is rebuilt from the .pyx (Cython is a build requirement), never shipped.
    assert not [m for m in members if m.endswith((".c", ".so"))]


@pytest.mark.slow
def test_sdist_installs_into_a_fresh_venv(sdist, tmp_path):
    """pip builds the sdist in its own isolated environment, as a user's pip would."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    alone = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([python, "-m", "pip", "install", "-q", str(sdist)], check=True, env=alone)
    result = subprocess.run([python, "-c", "from feedhandler.wire import _decode, packet; "
                             "print(packet.__file__)"], cwd=tmp_path, capture_output=True,
                            text=True, env=alone)
    assert result.returncode == 0, result.stderr
    assert str(venv) in result.stdout


def test_release_build_has_no_debug_info():
    """The extension modules under test are release builds: no DWARF, which made each 1.4-2.3
    MB instead of 0.2-0.4 MB (setup.py; FEEDHANDLER_DEBUG_BUILD=1 keeps it)."""
    if os.environ.get("FEEDHANDLER_DEBUG_BUILD") == "1":
        pytest.skip("FEEDHANDLER_DEBUG_BUILD=1 builds with debug info on purpose")
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed: ELF platforms only")
    modules = sorted(Path(feedhandler.__file__).parent.rglob("*.so"))
    assert len(modules) >= 3, modules
    for module in modules:
        sections = subprocess.run(["readelf", "-S", "-W", str(module)], check=True,
                                  capture_output=True, text=True).stdout
        assert ".debug_info" not in sections, module


def build_identifiers(platform: str) -> set[str]:
    if shutil.which("cibuildwheel") is None:
        pytest.skip("cibuildwheel is not installed (the test extra has it)")
    result = subprocess.run(["cibuildwheel", "--print-build-identifiers", "--platform", platform,
                             str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


PYTHONS = ("cp311", "cp312", "cp313", "cp314")


def test_cibuildwheel_builds_linux_x86_64_aarch64_glibc_and_musl():
    assert build_identifiers("linux") == {
        f"{python}-{libc}_{arch}" for python in PYTHONS for libc in ("manylinux", "musllinux")
        for arch in ("x86_64", "aarch64")}


def test_cibuildwheel_skips_windows_for_dlfcn():
    assert build_identifiers("windows") == set()


def test_cibuildwheel_macos_target_is_the_one_liblz4_is_built_for():
    assert {name.split("-")[0] for name in build_identifiers("macos")} == set(PYTHONS)
    macos = PYPROJECT["tool"]["cibuildwheel"]["macos"]
    target = macos["environment"]["MACOSX_DEPLOYMENT_TARGET"]
    script, built_for, prefix = macos["before-all"].split()[1:]
    assert (ROOT / script).is_file() and built_for == target
    assert f"-I{prefix}/include" in macos["environment"]["CFLAGS"]
    assert f"-L{prefix}/lib" in macos["environment"]["LDFLAGS"]


def test_cibuildwheel_installs_liblz4_in_every_linux_image():
    config = PYPROJECT["tool"]["cibuildwheel"]
    assert "dnf install -y lz4-devel" in config["linux"]["before-all"]
    assert "yum install -y lz4-devel" in config["linux"]["before-all"]
    musl = [o for o in config["overrides"] if o["select"] == "*-musllinux_*"]
    assert musl and musl[0]["before-all"] == "apk add lz4-dev"


def test_wheels_workflow_builds_tests_uploads_and_publishes():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    assert set(jobs) >= {"wheels", "sdist", "publish"}
    runners = {entry["os"] for entry in jobs["wheels"]["strategy"]["matrix"]["include"]}
    assert any(r.startswith("ubuntu") and "arm" in r for r in runners), runners
    assert any(r.startswith("ubuntu") and "arm" not in r for r in runners), runners
    assert any(r.startswith("macos") for r in runners), runners
    uses = {job: [step.get("uses", "") for step in jobs[job]["steps"]] for job in jobs}
    assert any(u.startswith("pypa/cibuildwheel@") for u in uses["wheels"])
    assert any(u.startswith("actions/upload-artifact@") for u in uses["wheels"])
    assert any(u.startswith("actions/upload-artifact@") for u in uses["sdist"])
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses["publish"])
    assert set(jobs["publish"]["needs"]) == {"wheels", "sdist"}
    assert "refs/tags/" in jobs["publish"]["if"]
    assert jobs["publish"]["permissions"]["id-token"] == "write"   # trusted publishing
    for job in jobs.values():
        for step in job["steps"]:
            for word in step.get("run", "").split():
                if word.startswith("scripts/"):
                    assert (ROOT / word).is_file(), word


def installed_package_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("feedhandler: "))


def test_bench_runs_from_an_unbuilt_checkout_against_the_installed_package(unbuilt_checkout):
    """`python -m pytest bench` in a checkout after `pip install .` (the checkout's folder comes
    first on sys.path and has no compiled modules)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "bench/bench_decode.py", "-k", "test_parse", "--benchmark-disable"],
                            cwd=unbuilt_checkout, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert str(unbuilt_checkout) not in installed_package_line(result.stdout)


def test_tests_run_against_the_installed_package_from_elsewhere(unbuilt_checkout, tmp_path):
    """As cibuildwheel's test-command runs them: the checkout's tests, an installed package, the
    working directory elsewhere (the docs check imports the package under test)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             str(unbuilt_checkout / "tests" / "test_layout.py")],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert str(unbuilt_checkout) not in installed_package_line(result.stdout)


def test_bench_gate_fails_on_a_drop_and_on_a_missing_ratio(tmp_path):
    """One line per failing ratio and exit 1: a baseline far above what any run measures, and a
    baseline entry that the gate no longer measures (no silent pass)."""
    baseline = json.loads((ROOT / "bench" / "baseline.json").read_text())
    # Only the planted failures may fail, however busy the machine: the others' floors are 0.
    for entry in baseline.values():
        entry["ratio"] = 0.0
    baseline["parse_vs_itchcpp"]["ratio"] = 1e6
    baseline["a_ratio_nobody_measures"] = {"ratio": 1.0, "tolerance": 0.1, "means": "gone"}
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(baseline))
    result = subprocess.run([sys.executable, "-m", "bench.gate", "--rounds", "1",
                             "--baseline", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("gate: ")]
    assert len(failures) == 2, result.stdout
    assert failures[0].startswith("gate: a_ratio_nobody_measures: MISSING")
    assert failures[1].startswith("gate: parse_vs_itchcpp: ") and "is below" in failures[1]


def test_version_lists_every_compiled_module_setup_builds():
    """`feedhandler --version` says whether each compiled module loads: it must name every
    extension setup.py builds, no more, no less."""
    import re

    from feedhandler.ops.version import COMPILED_MODULES

    built = re.findall(r'extension\("([\w.]+)"', (ROOT / "setup.py").read_text())
    assert sorted(f"feedhandler.{name}" for name in built) == sorted(COMPILED_MODULES)
