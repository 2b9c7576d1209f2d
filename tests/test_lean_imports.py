"""Job processes load diffusers' models without bitsandbytes and PEFT (engine.lean_imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""
    import json, sys
    turned = None
    if sys.argv[1] == "lean":
        from engine.lean_imports import skip_unused_diffusers_integrations
        turned = skip_unused_diffusers_integrations()
        assert "diffusers" not in sys.modules  # nothing imported until a job's code imports diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    from engine.lean_imports import skip_unused_diffusers_integrations
    late = skip_unused_diffusers_integrations()  # the models are loaded: too late, so nothing
    seen = {"turned": turned, "late": late, "bitsandbytes": "bitsandbytes" in sys.modules, "peft": "peft" in sys.modules}
    flags = sys.modules["diffusers.utils.import_utils"]
    assert type(flags.__loader__).__name__ == type(flags.__spec__.loader).__name__ == "SourceFileLoader"  # the real loader kept
    if sys.argv[1] == "lean":  # checkpoints load as anywhere: a single file (diffusers' from_single_file) and a folder
        import torch
        from safetensors.torch import save_file
        from engine.models.ldm_keys import sd1_single_file_state_dict
        from engine.models import tiny as tiny_model
        from engine.models.loading import load_base_model
        save_file(sd1_single_file_state_dict(tiny_model.tiny_pipeline()), sys.argv[2])
        single = load_base_model(sys.argv[2], config_dir=tiny_model.tiny_model_dir())
        folder = load_base_model("tiny")
        pairs = [(single.unet, folder.unet), (single.vae, folder.vae), (single.text_encoders[0], folder.text_encoders[0])]
        seen["same_weights"] = all(torch.equal(a, b) for x, y in pairs for a, b in zip(x.state_dict().values(), y.state_dict().values()))
        seen["still_lean"] = "bitsandbytes" not in sys.modules and "peft" not in sys.modules
    print(json.dumps(seen))
""")


def _probe(mode: str, checkpoint: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode, str(checkpoint)], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_diffusers_models_load_without_bitsandbytes_and_peft(tmp_path):
    """Lean: diffusers' models and a single-file checkpoint load (to the same weights as the folder,
    bit for bit) without either import; as diffusers configures itself, both are imported."""
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    plain, lean = _probe("plain", tmp_path / "unused"), _probe("lean", tmp_path / "tiny_sd1.safetensors")
    assert plain["bitsandbytes"] and plain["peft"], plain  # what diffusers does by itself: the check can fail
    assert lean == {"turned": "when diffusers loads", "late": "too late", "bitsandbytes": False, "peft": False,
                    "same_weights": True, "still_lean": True}, lean


def test_a_job_process_loads_the_models_lean(tmp_path):
    """The runner turns them off before any job's code imports diffusers: a merge job of the example
    (it fails at once: no LoRAs yet) in a process of its own, then what it had loaded."""
    pytest.importorskip("bitsandbytes")
    script = textwrap.dedent("""
        import sys, json
        import engine.jobs.runner as runner
        code = None
        try:
            code = runner.main(sys.argv[1:])
        finally:
            print(json.dumps({"code": code, "bitsandbytes": "bitsandbytes" in sys.modules,
                              "diffusers": "diffusers.models.modeling_utils" in sys.modules}))
    """)
    from engine.jobs.queue import Queue
    from tests.helpers import copy_example

    home = tmp_path / "state"
    queue = Queue(home)
    job = queue.enqueue("sample", str(copy_example(tmp_path / "p")))
    done = subprocess.run([sys.executable, "-c", script, "--home", str(home), "--job", str(job.id)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "COPYLORA_HOME": str(home)})
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["diffusers"] and not seen["bitsandbytes"], (seen, done.stderr[-2000:], queue.log_path(job.id).read_text()[-2000:])


def test_the_copylora_command_is_lean_and_main_is_not():
    """`copylora` (console) turns the integrations off for its own process; ``main()``, which tests
    and users' scripts call in their own process, leaves diffusers as it is."""
    script = textwrap.dedent("""
        import sys
        import copylora_tui.cli.main as cli
        from copylora_tui.cli import entry
        from engine.lean_imports import _WhenLoaded
        cli.main = lambda: 0
        before = any(isinstance(f, _WhenLoaded) for f in sys.meta_path)
        entry.console()
        print(before, any(isinstance(f, _WhenLoaded) for f in sys.meta_path))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr[-2000:]
    assert 'copylora = "copylora_tui.cli.entry:console"' in (REPO / "pyproject.toml").read_text()


def test_ctrl_c_while_the_command_line_imports_is_said_in_one_line():
    """A Ctrl-C in a command's first tenth of a second printed Python's KeyboardInterrupt
    traceback: the imports ran before anything handled it."""
    script = textwrap.dedent("""
        import sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "copylora_tui.cli.main":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        from copylora_tui.cli import entry
        sys.exit(entry.console())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 130 and done.stderr == "copylora: interrupted\n", done.stderr[-2000:]



# Bench scripts that never load diffusers' models (a plain torch measure, sd-scripts in its own
# process), or are modules other scripts import.
NO_MODELS = {"split_precision.py", "threads_bench.py", "kohya_side_by_side.py", "acceptance_speed.py", "merge_reference.py", "op_count.py", "app_bytes_feed.py",
             "projects_scan.py"}  # reads headers and TOMLs: no model


def test_every_bench_script_that_loads_models_is_lean():
    """The benches are processes of our own too (the suite starts ~40 of them: ~1.2 s each)."""
    import ast

    for script in sorted((REPO / "bench").glob("*.py")):
        if script.name in NO_MODELS:
            continue
        tree = ast.parse(script.read_text())
        mains = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        assert mains, f"{script.name}: no __main__ block (a script, or add it to NO_MODELS)"
        called = [node.func.id for node in ast.walk(mains[0]) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
        assert called[:1] == ["skip_unused_diffusers_integrations"], f"{script.name}: its __main__ block does not go lean first"
