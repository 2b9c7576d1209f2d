"""LoRA Block Weight blocks and vectors against kohya-ss sd-scripts' own mapping.

tests/data/lbw_expected_*.tsv were produced by running sd-scripts' ``svd_merge_lora.py`` (see
the comment at the top of each file) over every module of kohya's reference key tables: the
block of each module and the weight its merge applied for every vector length of the family.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import CopyloraError
from engine.lora.block_weights import (
    BLOCK_LISTS,
    FULL_BLOCKS,
    BlockWeightError,
    block_sort_key,
    check_lbws,
    expand_lbw,
    lbw_block,
    module_weight,
    parse_lbw,
    per_model_lbws,
)

DATA = Path(__file__).parent / "data"
REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference"
FAMILIES = {"sd15": ("sd1", "sd"), "sdxl": ("sdxl", "sdxl")}


def expected(table: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in (DATA / table).read_text().splitlines() if line]
    header = next(line for line in lines if line.startswith("# module\t"))[2:].split("\t")
    # sd-scripts calls the middle block MID; we (and the LoRA Block Weight extension) M00
    return header, [["M00" if cell == "MID" else cell for cell in line.split("\t")] for line in lines if not line.startswith("#")]


@pytest.mark.parametrize("table", ["sd15", "sdxl"])
def test_every_reference_module_maps_as_sd_scripts_maps_it(table):
    family, group = FAMILIES[table]
    header, rows = expected(f"lbw_expected_{table}.tsv")
    lengths = [int(h.split("_")[1]) for h in header[3:]]
    assert sorted(lengths) == sorted(n for n in BLOCK_LISTS if (n in (12, 20)) == (group == "sdxl"))
    vectors = {n: list(range(2, n + 2)) for n in lengths}  # the distinct weights the oracle used
    wrong = []
    for name, index, block, *weights in rows:
        want = None if block == "-" else block
        assert (FULL_BLOCKS.index(want) if want else -1) == int(index)
        if lbw_block(name, group) != want or lbw_block(name) != want:
            wrong.append(f"{name}: {lbw_block(name, group)} / {lbw_block(name)}, sd-scripts {want}")
        for n, weight in zip(lengths, weights):
            got = module_weight(name, expand_lbw(parse_lbw(str(vectors[n]))), family)
            if got != float(weight):
                wrong.append(f"{name} with {n} weights: {got}, sd-scripts {weight}")
    assert not wrong, "\n".join(wrong[:20])
    assert len(rows) == {"sd15": 350, "sdxl": 1052}[table]


@pytest.mark.parametrize("table", ["sd15", "sdxl"])
def test_the_expected_tables_cover_kohya_key_tables(table):
    """The data files hold every module of both reference tables (when they are beside the checkout)."""
    if not REFERENCE.is_dir():
        pytest.skip("shared/reference not present")
    _, rows = expected(f"lbw_expected_{table}.tsv")
    modules = set()
    for name in (f"kohya_{table}_r8.tsv", f"kohya_{table}_r8_conv8.tsv"):
        for line in (REFERENCE / name).read_text().splitlines():
            key = line.split("\t")[0]
            if key.endswith(".lora_down.weight"):
                modules.add(key[: -len(".lora_down.weight")])
    assert modules == {row[0] for row in rows}


def test_edge_names_map_as_sd_scripts_maps_them():
    _, rows = expected("lbw_expected_extra.tsv")
    for name, _, block_sd, _, block_sdxl in rows:
        assert lbw_block(name, "sd") == (None if block_sd == "-" else block_sd), name
        assert lbw_block(name, "sdxl") == (None if block_sdxl == "-" else block_sdxl), name
        either = block_sd if block_sd != "-" else block_sdxl
        assert lbw_block(name) == (None if either == "-" else either), name


def test_block_lists_are_sd_scripts_lists():
    assert len(FULL_BLOCKS) == 26 and FULL_BLOCKS[:3] == ("BASE", "IN00", "IN01") and FULL_BLOCKS[13] == "M00"
    assert BLOCK_LISTS[17] == ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                               *(f"OUT{i:02d}" for i in range(3, 12)))
    assert BLOCK_LISTS[12] == ("BASE", "IN04", "IN05", "IN07", "IN08", "M00", *(f"OUT{i:02d}" for i in range(6)))
    assert BLOCK_LISTS[20] == ("BASE", *(f"IN{i:02d}" for i in range(9)), "M00", *(f"OUT{i:02d}" for i in range(9)))
    assert all(len(blocks) == n for n, blocks in BLOCK_LISTS.items())
    assert sorted(["OUT00", "other", "M00", "BASE", "IN11"], key=block_sort_key) == ["BASE", "IN11", "M00", "OUT00", "other"]


def test_short_vectors_expand_with_one_elsewhere():
    weights = expand_lbw([0] * 17)
    assert len(weights) == 26 and weights["IN01"] == 0 and weights["OUT11"] == 0
    assert weights["IN00"] == weights["IN03"] == weights["OUT00"] == 1.0  # not in the 17 list: left alone
    assert module_weight("lora_unet_conv_in", weights, "sd1") == 1.0  # a module of no block
    assert module_weight("lora_te_text_model_encoder_layers_0_mlp_fc1", expand_lbw([0.5] + [1] * 25), "sd2") == 0.5


def test_parse_accepts_json_strings_and_lists():
    assert parse_lbw("[1, 0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1]") == (1.0, 0.0, 0.5) + (1.0,) * 9
    assert parse_lbw([1] * 26) == (1.0,) * 26
    assert check_lbws([[1] * 17, None], "sd1") == [(1.0,) * 17, None]
    assert check_lbws(["[" + ",".join(["1"] * 20) + "]"], None) == [(1.0,) * 20]  # family not known yet: length only


@pytest.mark.parametrize("value, message", [
    ("[1, 0, 1", "not a JSON list of numbers like [1,0,1,...]"),
    ("{}", "must be a list of numbers"),
    ("1", "must be a list of numbers"),
    ([1] * 16, "16 weights; a block-weight vector has 12 or 20 (SDXL), or 17 or 26 (SD1/SD2)"),
    ([], "0 weights"),
    ([1] * 11 + ["a"], "weight 12 (OUT05) is 'a', not a number"),
    ([True] + [1] * 11, "weight 1 (BASE) is True, not a number"),
    ("[" + ",".join(["1"] * 16) + ", NaN]", "weight 17 (OUT11) is nan; weights must be finite"),
    ([1] * 19 + [float("inf")], "weight 20 (OUT08) is inf; weights must be finite"),
])
def test_bad_vectors_are_one_line_errors(value, message):
    with pytest.raises(BlockWeightError) as caught:
        parse_lbw(value, "--lbws[1]")
    text = str(caught.value)
    assert isinstance(caught.value, CopyloraError) and "\n" not in text
    assert text.startswith("--lbws[1]: ") and message in text, text


@pytest.mark.parametrize("vectors, family, message", [
    ([[1] * 26], "sdxl", "26 weights are SD1/SD2 blocks; an SDXL LoRA takes 12 or 20"),
    ([[1] * 12, [1] * 12], "sd1", "12 weights are SDXL blocks; an SD1/SD2 LoRA takes 17 or 26"),
    ([[1] * 20], "sd2-v", "takes 17 or 26"),
    ([[1] * 17, [1] * 26], "sd1", "vectors of 17 and 26 weights: give them all the same length"),
])
def test_wrong_length_for_the_family_names_the_allowed_lengths(vectors, family, message):
    with pytest.raises(BlockWeightError, match=message):
        check_lbws(vectors, family, "merge.lbws")


def test_project_vectors_per_model():
    assert per_model_lbws([], 2) is None
    assert per_model_lbws([[1] * 17], 2) == [[1] * 17, [1] * 17]
    assert per_model_lbws([[1] * 17, [0] * 17], 2) == [[1] * 17, [0] * 17]
