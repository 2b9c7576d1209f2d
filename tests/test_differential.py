"""The differential route: B trained on the base with A applied equals B trained on a base with
A baked in, whichever way A is applied; a new A makes B stale; the base is left as found."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from engine.project.folder import load_project, save_project  # noqa: E402
from engine.project.outputs import SideLora  # noqa: E402
from engine.project.plan import make_plan, training_order, twin_problem  # noqa: E402
from engine.train.base_weights import BaseWeightsError  # noqa: E402
from engine.train.trainer import TrainingError, train  # noqa: E402
from tests.helpers import copy_example, quiet  # noqa: E402

# Plain SGD in fp32 (the CPU trains in fp32): the comparison sees how A is applied, not an
# adaptive optimizer's amplification of rounding (tests/test_twin.py measures that).
SGD = {"optimizer_type": "SGDNesterov", "learning_rate": 0.5, "save_precision": "float"}
STEPS = 8




def make(root, *, method: str = "differential", base_model: str | None = None, multiplier: float = 1.0, merge: bool = False, **train):
    root = copy_example(root) if not (root / "copylora.toml").exists() else root
    project = load_project(root)
    project.info.method = method
    if base_model is not None:
        project.info.base_model = base_model
    project.b.base_weights_multiplier = multiplier
    project.b.merge_base_weights = merge
    for key, value in {"max_train_steps": STEPS, "max_train_epochs": None, "resolution": [128, 192], **SGD, **train}.items():
        setattr(project.train, key, value)
    save_project(project)
    return make_plan(load_project(root))


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def worst_relative(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    rel = [float((got[k].double() - want[k].double()).norm() / want[k].double().norm())
           for k in want if "alpha" not in k and float(want[k].norm()) > 0]
    return max(rel)


@pytest.fixture(scope="module")
def trained_a(tmp_path_factory, tiny):
    """A project whose A is trained (the first half of the differential route)."""
    root = tmp_path_factory.mktemp("diff") / "example-monochrome"
    plan = make(root.parent, multiplier=1.0)
    result = train(plan, "a", model=tiny, log=quiet)
    return root, result.lora_path


def test_frozen_a_equals_a_baked_into_the_base(tmp_path, tiny, trained_a):
    """The issue's check: B on base + frozen A == B on `bake --save_precision float` of A (fp32, CPU)."""
    from engine.merge.bake import bake_lora
    from engine.models.loading import load_base_model

    root, a_path = trained_a
    plan = make(root)
    lines: list[str] = []
    differential = train(plan, "b", model=tiny, log=lines.append)
    assert any("applying A" in line and "as a frozen LoRA" in line for line in lines)
    assert any("A's rows carried in B's matmuls at 192 of A's 192 modules" in line for line in lines), lines
    meta = json.loads(load_meta(differential.lora_path)["copylora_base_weights"])
    assert meta["file"] == a_path.name and meta["multiplier"] == 1.0 and meta["merged"] is False and len(meta["sha256"]) == 64
    assert all(not m._forward_hooks and "forward" not in m.__dict__ for m in tiny.unet.modules())  # A unhooked afterwards

    baked = tmp_path / "tiny_plus_A"
    bake_lora("tiny", a_path, baked, save_precision="float")
    other = make(tmp_path / "baked", method="svd-merge", base_model=str(baked))
    on_baked = train(other, "b", model=load_base_model(str(baked)), log=quiet)
    assert worst_relative(tensors(differential.lora_path), tensors(on_baked.lora_path)) < 1e-5


def test_merged_base_weights_agree_with_the_frozen_lora_and_are_undone(tmp_path, tiny, trained_a):
    root, _ = trained_a
    frozen = tensors(train(make(root, multiplier=0.7), "b", model=tiny, log=quiet).lora_path)
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    merged = train(make(root, multiplier=0.7, merge=True), "b", model=tiny, log=quiet)
    assert worst_relative(tensors(merged.lora_path), frozen) < 1e-5
    after = tiny.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base weights are put back


def test_the_multiplier_matters(tmp_path, tiny, trained_a):
    root, _ = trained_a
    at_one = tensors(train(make(root, multiplier=1.0), "b", model=tiny, log=quiet).lora_path)
    at_zero = tensors(train(make(root, multiplier=0.0), "b", model=tiny, log=quiet).lora_path)
    assert worst_relative(at_zero, at_one) > 1e-3


def test_a_new_a_makes_b_stale_and_b_without_a_is_refused(tmp_path, tiny, trained_a):
    root, a_path = trained_a
    plan = make(root)
    train(plan, "b", model=tiny, log=quiet)
    assert SideLora(plan, "b").status().pair()[0]
    original = a_path.read_bytes()
    try:
        train(make(root, seed=7), "a", model=tiny, log=quiet)  # A retrained differently
        assert a_path.read_bytes() != original
        fresh, reason = SideLora(make(root, seed=7), "b").status().pair()
        assert not fresh and "changed" in reason
    finally:
        a_path.write_bytes(original)
    assert not SideLora(make(root, multiplier=0.5), "b").status().pair()[0]  # the strength is part of B too

    lonely = make(tmp_path / "lonely")
    with pytest.raises(BaseWeightsError, match="train A first"):
        train(lonely, "b", model=tiny, log=quiet)


def test_a_is_not_trained_again_while_b_learns_on_it(tmp_path, tiny, trained_a, monkeypatch):
    """`copylora train mono --side a --restart` while the queue's job trained B on A: B learned
    on one A and was left beside another. Each is refused while the other runs, saying why."""
    import sys

    from engine.train.side_lock import side_locks

    root, a_path = trained_a
    plan = make(root)
    before = a_path.read_bytes()
    monkeypatch.setattr(sys, "argv", ["engine.jobs.runner", "--home", "/h", "--job", "9"])
    with side_locks(plan, ["b"], learns_on="a"):  # as the job training B holds them
        with pytest.raises(TrainingError, match=r"side A of .* is in use right now: queue job #9 of the queue in /h \(pid \d+\) trains B on A's LoRA"):
            train(plan, "a", model=tiny, log=quiet)
    assert a_path.read_bytes() == before
    with side_locks(plan, ["a"]):  # A being trained: B would learn on an A about to change
        with pytest.raises(TrainingError, match=r"side A of .* is being trained right now by queue job #9 .*B trains on A's finished LoRA"):
            train(plan, "b", model=tiny, log=quiet)


def test_the_plan_says_the_route(tmp_path):
    plan = make(tmp_path)
    assert "differential" in twin_problem(plan) and "differential route" in training_order(plan)
    assert "A applied at 1" in training_order(plan)


def load_meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


@pytest.mark.parametrize("table, line, message", [
    ("a", "base_weights_multiplier = 1.0", "a.base_weights_multiplier: belongs in [b]"),
    ("b", "base_weights_multiplier = 50", "b.base_weights_multiplier"),
    ("b", "base_weights_multiplier = nan", "b.base_weights_multiplier: must be a finite number"),
    ("b", 'merge_base_weights = "yes"', "b.merge_base_weights: must be true or false"),
    ("b", "base_weight_multiplier = 1.0", "did you mean 'base_weights_multiplier'"),
    ("project", 'method = "diff"', "project.method"),
])
def test_bad_differential_keys_fail_at_check_with_one_line(tmp_path, table, line, message):
    from engine.errors import ValidationError

    root = copy_example(tmp_path)
    toml = root / "copylora.toml"
    text = toml.read_text()
    key = line.split(" =")[0]
    existing = {"project": 'method = "svd-merge"', "b": f"{key} = {'false' if key == 'merge_base_weights' else '1.0'}"}
    if table in existing and existing[table] in text:
        text = text.replace(existing[table], line)
    else:
        text = text.replace(f"[{table}]\n", f"[{table}]\n{line}\n", 1)
    toml.write_text(text)
    with pytest.raises(ValidationError) as caught:
        load_project(root)
    assert message in str(caught.value), str(caught.value)


def test_differential_keys_round_trip_and_the_form_edits_them(tmp_path):
    from copylora_tui.core import form

    plan = make(tmp_path, multiplier=0.5, merge=True)
    project = load_project(plan.project.root)
    assert (project.info.method, project.b.base_weights_multiplier, project.b.merge_base_weights) == ("differential", 0.5, True)
    paths = [spec.path for spec in form.section_fields("b")]
    assert "b.base_weights_multiplier" in paths and "b.merge_base_weights" in paths
    assert "a.base_weights_multiplier" not in [spec.path for spec in form.section_fields("a")]
    spec = next(s for s in form.section_fields("b") if s.key == "base_weights_multiplier")
    value, problem = form.parse_text("0.25", spec)
    assert problem is None
    edited = form.apply_values(project, {"b.base_weights_multiplier": value, "b.merge_base_weights": False})
    checked, problems = form.validate(edited)
    assert problems == [] and checked.b.base_weights_multiplier == 0.25 and checked.b.merge_base_weights is False
    assert form.current_value(checked, spec) == 0.25


def test_the_cli_says_the_route_and_refuses_b_before_a(tmp_path, capsys):
    from copylora_tui.cli.main import EXIT_USAGE, main

    root = make(tmp_path).project.root
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "route     differential" in out and "B trains with A at 1 applied as a frozen LoRA" in out
    assert main(["train", str(root), "--side", "b", "--max-steps", "2"]) == EXIT_USAGE
    assert "train --side a first" in capsys.readouterr().err
    assert main(["train", str(root), "--side", "ab", "--max-steps", "2"]) == EXIT_USAGE
    assert "differential route" in capsys.readouterr().err
