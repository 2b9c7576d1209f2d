"""``[train] caption``: the prompt a copy-machine pair trains under ("" = caption-free).

What the trainer conditions the pictures on, the checks against [reg] and [filewords], the
fingerprint (old caption-free checkpoints stay valid), the metadata's tags."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.errors import ValidationError
from engine.project.folder import load_project
from engine.project.plan import make_plan, twin_problem
from engine.project.provenance import training_fingerprint
from engine.train.lora_facts import training_datasets
from engine.train.training_data import training_data
from tests.helpers import copy_example, quiet

CAPTION = "a yellow circle on a blue background"


def set_keys(root, text: str, table: str = "[train]") -> None:
    """``text`` (one key) into ``table``: over the example's own line for a [train] key."""
    toml = root / "copylora.toml"
    content = toml.read_text()
    own = text.split(" = ")[0] + " = "
    if table == "[train]" and own in content:
        line = next(line for line in content.splitlines() if line.startswith(own))
        toml.write_text(content.replace(line + "\n", text + "\n", 1))
    else:
        toml.write_text(content.replace(f"{table}\n", f"{table}\n{text}\n", 1))


def test_both_sides_train_under_the_caption_and_still_train_as_twins(tmp_path, tiny):
    root = copy_example(tmp_path)
    set_keys(root, f'caption = "{CAPTION}"')
    plan = make_plan(load_project(root), max_steps=2)
    for side in ("a", "b"):
        data = training_data(tiny, plan, side, quiet)
        assert data.prompts == [CAPTION] and {i.cond_index for i in data.items} == {0}
    assert twin_problem(plan) is None  # the same caption on both sides: one batch of two
    default = make_plan(load_project(copy_example(tmp_path / "plain")), max_steps=2)
    assert training_data(tiny, default, "a", quiet).prompts == [""]


def test_a_side_may_set_its_own_caption_which_ends_twin_training(tmp_path):
    root = copy_example(tmp_path)
    set_keys(root, 'caption = "a gray picture"', "[b]")
    plan = make_plan(load_project(root), max_steps=2)
    assert plan.side("a").params.caption == "" and plan.side("b").params.caption == "a gray picture"
    assert "caption" in twin_problem(plan)


def test_an_empty_caption_keeps_old_checkpoints_valid_and_a_caption_makes_them_stale(tmp_path, monkeypatch):
    import engine.project.provenance as trainer

    root = copy_example(tmp_path)
    project = load_project(root)

    def fingerprint(**keys) -> str:
        return training_fingerprint(make_plan(replace(project, train=replace(project.train, **keys)), max_steps=4), "a")

    empty = fingerprint()
    assert fingerprint(caption=CAPTION) != empty != fingerprint(caption="a red square on a green background")
    # what the fingerprint was before the key existed: the same parameters without it
    real_asdict = trainer.asdict
    monkeypatch.setattr(trainer, "asdict", lambda params: {k: v for k, v in real_asdict(params).items() if k != "caption"})
    assert fingerprint() == empty


@pytest.mark.parametrize(("table", "text", "key"), [
    ("[train]", 'caption = "x"', "train.caption"),
    ("[a]", 'caption = "x"', "a.caption"),
])
def test_a_caption_with_reg_is_refused_at_check_time(tmp_path, table, text, key):
    root = copy_example(tmp_path)
    set_keys(root, text, table)
    toml = root / "copylora.toml"
    toml.write_text(toml.read_text() + '\n[reg]\ninstance_prompt = "sks house"\n')
    with pytest.raises(ValidationError) as info:
        load_project(root)
    (problem,) = [p for p in info.value.problems if p.where.endswith("caption")]
    assert problem.where == key and "instance_prompt" in problem.message


def test_filewords_in_a_caption_is_refused_without_reg(tmp_path):
    root = copy_example(tmp_path)
    set_keys(root, 'caption = "photo, [filewords]"')
    with pytest.raises(ValidationError) as info:
        load_project(root)
    assert [p.where for p in info.value.problems] == ["train.caption"]


def test_the_metadata_lists_the_caption_as_kohya_lists_class_tokens(tmp_path):
    root = copy_example(tmp_path)
    plain = training_datasets(make_plan(load_project(root), max_steps=2), "a")
    assert plain[0]["tags"] == {} and "prompt" not in plain[0]
    set_keys(root, 'caption = "a yellow circle, blue background"')
    (subset,) = training_datasets(make_plan(load_project(root), max_steps=2), "a")
    assert subset["prompt"] == "a yellow circle, blue background"
    assert subset["tags"] == {"a yellow circle": 1, "blue background": 1}
