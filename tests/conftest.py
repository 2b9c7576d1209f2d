"""Shared test setup.

The CI machine has two shared cores; torch with two threads under load was measured ~250x
slower than with one, so every test process pins torch (and OpenMP/MKL) to one thread before
torch is imported anywhere.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Never reach for the Hugging Face hub from tests: everything must work offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# pytest-xdist's worker processes get COLUMNS=80 and LINES=24 in their environment; a serial run
# gets none. The CLI's tables read them, so a table a test reads from a command's output was cut
# to 80 columns only in a parallel run. Tests that need a width set it themselves.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

import sys  # noqa: E402
import tempfile  # noqa: E402

# The app reads a user keymap from ~/.config; tests use the default keys unless they say otherwise.
os.environ.setdefault("COPYLORA_KEYMAP", os.path.join(tempfile.gettempdir(), "copylora-tests-no-keymap.toml"))

# The tiny model is built once per test session into a private cache, never into the user's
# ~/.cache (tests must not depend on, or disturb, what a previous run left there). The process
# that made the folder removes it when it exits: left behind, each run's ~110 MB filled the CI
# machine's disk after a few hundred runs (it failed with "No space left on device"). xdist's
# worker processes inherit the variable, so they share the controller's folder and leave it be.
if "COPYLORA_CACHE" not in os.environ:
    import atexit  # noqa: E402
    import shutil  # noqa: E402

    os.environ["COPYLORA_CACHE"] = _test_cache = tempfile.mkdtemp(prefix="copylora-test-cache-")
    _maker = os.getpid()

    def _remove_test_cache() -> None:
        # A process forked from this one (the warm-start tests fork job processes) inherits the
        # handler; only the maker removes the folder, after every test that reads it has ended.
        if os.getpid() == _maker:
            shutil.rmtree(_test_cache, ignore_errors=True)

    atexit.register(_remove_test_cache)

import pytest  # noqa: E402


def _pin_torch_threads() -> None:
    # Only if something already imported torch: importing it here would defeat the
    # import-hygiene tests that check the app starts without torch.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    _pin_torch_threads()
    yield


# Fixtures built once (per session, or per module for toy_result) that must stay built once when
# pytest-xdist runs the suite in several processes (README: `pytest -n auto --dist loadgroup`): a
# second Slurm cluster on this node, a second build of the real-runs tree (~1.5 min here) or a
# second toy training (toy_result, ~1.5 min: xdist's load scheduling put its two tests in two
# processes in a 3-process run) would cost more than the parallelism gains. Each test that uses
# one is sent to the same process.
ONE_PER_SESSION = ("slurm_cluster", "real_runs_tree", "toy_result")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = [name for name in ONE_PER_SESSION if name in getattr(item, "fixturenames", ())]
        if shared and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: GPU tests cannot run either way
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def real_runs_tree(tmp_path_factory):
    """Projects and a queue left behind by real runs of the worker (see tests/real_runs.py);
    built once per session (about half a minute), cloned per test by ``real_runs``."""
    from tests.real_runs import build

    root = tmp_path_factory.mktemp("real-runs")
    build(root)
    return root


@pytest.fixture
def real_runs(real_runs_tree, tmp_path, monkeypatch):
    """A private clone of the real-runs tree; COPYLORA_HOME points at its queue, pictures are
    text only, and starting the worker is recorded instead of done. Returns the projects folder."""
    from tests.real_runs import clone
    from tests.test_app_support import use_home

    use_home(monkeypatch, tmp_path)
    projects, state = clone(real_runs_tree, tmp_path / "tree")
    monkeypatch.setenv("COPYLORA_HOME", str(state))
    return projects


@pytest.fixture(scope="module")
def tiny():
    """The built-in tiny SD1.5 model, loaded once per test module (trainings leave it as found)."""
    torch = pytest.importorskip("torch")
    from engine.models.loading import load_base_model

    torch.set_num_threads(1)
    return load_base_model("tiny")
