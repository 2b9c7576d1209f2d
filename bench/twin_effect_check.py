"""The toy CI test's measurement (tests/test_toy_model.py) with the twin pair's three ways: the
example trained 480 steps a side as a twin, merged; its effect on two held-out prompts and the
copy check. bench/effect_bench.py trains each side apart, so it cannot see the twin's path.

    OMP_NUM_THREADS=1 python bench/twin_effect_check.py batched    # as shipped: the pair inside each Linear's function
    OMP_NUM_THREADS=1 python bench/twin_effect_check.py hooked     # the batched pair in forward hooks (before engine/lora/fused.py)
    OMP_NUM_THREADS=1 python bench/twin_effect_check.py per-half   # each side's module on its half, in hooks (before the pair was batched)
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str]) -> int:
    if argv not in (["batched"], ["hooked"], ["per-half"]):
        print("usage: twin_effect_check.py batched|hooked|per-half", file=sys.stderr)
        return 2
    import torch

    import engine.train.twin as twin
    from bench.effect_bench import copy_check, first_prompt
    from engine.merge.project_result import make_result
    from engine.models.loading import load_base_model
    from engine.project.folder import load_project, save_project
    from engine.project.plan import make_plan
    from engine.train.effect import lora_effect
    from tests.helpers import copy_example, quiet
    from tests.test_toy_model import PROMPTS, TEST_EPOCHS

    torch.set_num_threads(1)
    if argv != ["batched"]:
        import engine.lora.fused as fused

        fused.fusable = lambda base: False  # every LoRA target as a forward hook
    if argv == ["per-half"]:
        twin.batchable = lambda lora: False  # each side's module on its half, as before 2026-12-06
    root = copy_example(Path(tempfile.mkdtemp()), "example-toy", source="example-toy")
    project = load_project(root)
    project.train = replace(project.train, max_train_epochs=TEST_EPOCHS, save_every_n_steps=0)
    save_project(project)
    plan = make_plan(load_project(root))
    model = load_base_model("toy")
    twin.train_twin(plan, model=model, log=quiet)
    result, _, _ = make_result(plan, device="cpu")
    report = lora_effect(model, result, PROMPTS, [1], [0.0, 1.0], steps=12, size=(64, 64), guidance=7.0)
    a, b = plan.side("a"), plan.side("b")
    check = copy_check(model, a.lora_path, result, a.images[0].path, b.images[0].path, seed=1, steps=12, size=(64, 64), prompt=first_prompt(plan))
    figures = {k: round(v, 2) for k, v in check.items() if isinstance(v, float)}
    print(json.dumps({"mode": argv[0], "effect": round(report.effect, 4), "ssim": round(report.collateral_ssim, 4), **figures}))
    return 0


if __name__ == "__main__":
    from engine.lean_imports import skip_unused_diffusers_integrations

    skip_unused_diffusers_integrations()  # our own process: diffusers without the integrations nothing here uses
    raise SystemExit(main(sys.argv[1:]))
