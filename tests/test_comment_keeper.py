"""A user's own comments in copylora.toml survive copylora's saves (engine.project.comment_keeper):
the app's ctrl+s and `import-kohya --into` rewrote the file in the canonical layout and dropped
every hand-written comment without a word."""

from __future__ import annotations

import tomllib

from engine.project.comment_keeper import keep_comments
from engine.project.folder import load_project, save_project
from tests.test_app_support import make_projects

OLD = '''# copylora concept project
# my notes at the top
[project]
# Project name
name = "x"  # 白黒 version 2
# tried 1e-4 first: too weak
lr = 1
arr = [1,
  # inside an array
  2]
s = """a
# inside a string: part of the value
b"""
# end of project notes

# about train
[train]
gone = 3
# last words
'''
NEW = '''# copylora concept project
[project]
# Project name
name = "x"
lr = 2
arr = [1, 2]
s = "a\\n# inside a string: part of the value\\nb"

[train]
kept = 1
'''


def test_each_comment_goes_back_where_it_was_and_a_second_save_keeps_the_file():
    kept = keep_comments(OLD, NEW)
    assert kept == '''# copylora concept project
# my notes at the top
[project]
# Project name
# 白黒 version 2
name = "x"
# tried 1e-4 first: too weak
lr = 2
# inside an array
arr = [1, 2]
s = "a\\n# inside a string: part of the value\\nb"

# end of project notes
# about train
[train]
kept = 1
# last words
''', kept
    assert tomllib.loads(kept) == tomllib.loads(NEW)
    assert keep_comments(kept, NEW) == kept  # saved again: the same file
    assert keep_comments(NEW, NEW) == NEW and keep_comments("", NEW) == NEW


def test_a_comment_whose_key_or_table_is_gone_is_kept_at_the_end_saying_where_it_was():
    old = '[project]\nname = "x"\n# my rate\nrate = 1\n\n[extra]\n# note on extra\nk = 1\n'
    new = '[project]\nname = "x"\n'
    kept = keep_comments(old, new)
    assert kept == '[project]\nname = "x"\n# (was at rate =, a key no more)\n# my rate\n\n# (was in [extra], a table no more)\n# note on extra\n', kept
    assert tomllib.loads(kept) == tomllib.loads(new)


def test_save_project_keeps_the_users_comments_the_apps_ctrl_s_and_import_kohya_save_through_it(tmp_path, monkeypatch):
    from dataclasses import replace

    from tests.test_app_support import use_home

    use_home(monkeypatch, tmp_path)
    root = make_projects(tmp_path) / "example-monochrome"
    toml = root / "copylora.toml"
    text = toml.read_text()
    text = text.replace("\n[train]\n", "\n# 1e-4 was too weak on this pair: 1e-3\n[train]\n", 1)
    text = text.replace("learning_rate = ", "# my rate, after three tries\nlearning_rate = ", 1)
    toml.write_text(text)
    project = load_project(root)
    project.train = replace(project.train, learning_rate=5e-4)
    save_project(project)
    saved = toml.read_text()
    assert "# 1e-4 was too weak on this pair: 1e-3\n[train]\n" in saved
    assert "# my rate, after three tries\nlearning_rate = 0.0005\n" in saved
    assert load_project(root).train.learning_rate == 5e-4


def test_a_comment_at_the_end_of_a_table_stays_put_over_saves_when_a_table_follows():
    old = "[a]\nk = 1\n# tail of a\n"
    new = "[a]\nk = 1\n\n[b]\nj = 2\n"
    kept = keep_comments(old, new)
    assert kept == "[a]\nk = 1\n\n# tail of a\n[b]\nj = 2\n", kept
    assert keep_comments(kept, new) == kept


def test_an_earlier_copyloras_documentation_is_replaced_not_kept_as_the_users():
    """A file an earlier copylora wrote has that version's doc lines: kept as the user's, each
    reworded doc would pile up above its key at every upgrade (the shipped examples' did)."""
    old = ('[sample]\n# Prompts of the preview grid (empty string = no caption, as trained).\n# mine: keep the empty one\nprompts = [""]\n'
           "# unet_lr =\n")
    new = ('[sample]\n# Prompts of the preview grid (empty string = no caption, as trained); add one the pair never trains under.\n'
           'prompts = [""]\n# U-Net learning rate.\nunet_lr = 0.1\n')
    kept = keep_comments(old, new)
    assert kept == ('[sample]\n# Prompts of the preview grid (empty string = no caption, as trained); add one the pair never trains under.\n'
                    '# mine: keep the empty one\nprompts = [""]\n# U-Net learning rate.\nunet_lr = 0.1\n'), kept  # "# unet_lr =": copylora's
    old = "[train]\n# U-Net learning rate.\n# unet_lr =\n# Text encoder rate.\ntext_lr = 1\n"  # unset when it was written
    new = "[train]\n# U-Net learning rate.\nunet_lr = 0.1\n# Text encoder rate.\ntext_lr = 1\n"
    assert keep_comments(old, new) == new
