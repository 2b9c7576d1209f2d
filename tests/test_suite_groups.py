"""The suite's own scheduling: tests that share a fixture built once (tests/conftest.py's
ONE_PER_SESSION) run in one pytest-xdist process, so the README's `pytest -n auto --dist
loadgroup` builds each of them once, however xdist splits the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A plugin that prints, after collection, each test and the xdist group conftest gave it.
PROBE = '''
def pytest_collection_finish(session):
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        group = (mark.kwargs.get("name") or mark.args[0]) if mark else "-"
        print("GROUP", item.nodeid, group)
'''


def test_each_test_of_a_shared_fixture_is_sent_to_its_fixtures_process(tmp_path):
    from tests.conftest import ONE_PER_SESSION

    (tmp_path / "groups_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    files = ["tests/test_toy_model.py", "tests/test_slurm.py", "tests/test_app_real_runs.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "groups_probe", "-p", "no:cacheprovider", *files],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    groups = dict(line.split()[1:3] for line in done.stdout.splitlines() if line.startswith("GROUP "))
    assert set(ONE_PER_SESSION) == {"slurm_cluster", "real_runs_tree", "toy_result"}
    toy = {node: group for node, group in groups.items() if node.startswith("tests/test_toy_model.py")}
    # Both tests of the toy training (its fixture takes ~1.5 min) in its group; the others free.
    assert sorted(group for group in toy.values() if group != "-") == ["toy_result", "toy_result"], toy
    assert groups["tests/test_toy_model.py::test_the_shipped_toy_model_matches_its_checksums_and_stays_small"] == "-"
    for prefix, group in (("tests/test_slurm.py", "slurm_cluster"), ("tests/test_app_real_runs.py", "real_runs_tree")):
        assert any(node.startswith(prefix) and g == group for node, g in groups.items()), (prefix, groups)


# A plugin that says, at the end of the session, which test cache the run used and that it exists.
CACHE_PROBE = '''
import os

def pytest_sessionfinish(session):
    folder = os.environ["COPYLORA_CACHE"]
    print("CACHE", folder, os.path.isdir(folder))
'''


def test_a_run_leaves_no_test_cache_and_no_folders_of_passed_tests_behind(tmp_path):
    """Each run's private model cache (~110 MB) and the folders of passed tests (~3 GB a run,
    three runs kept) once stayed in the temporary folder until the CI machine's disk was full."""
    (tmp_path / "cache_probe.py").write_text(CACHE_PROBE)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "COPYLORA_CACHE"}
    env.update(TMPDIR=str(scratch), PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    test = "tests/test_cli_hostile.py::test_new_folders_get_the_umask_mode_not_mkdtemps"  # passes, uses tmp_path
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "cache_probe", "-p", "no:cacheprovider", test],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cache = [line.split("CACHE ", 1)[1].split() for line in done.stdout.splitlines() if "CACHE " in line]
    assert len(cache) == 1 and cache[0][1] == "True", done.stdout[-2000:]
    assert Path(cache[0][0]).parent == scratch
    assert not Path(cache[0][0]).exists()
    left = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*") if "test_new_folders" in path.name)
    assert left == [], left
