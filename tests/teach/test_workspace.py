"""moe_lib.teach.workspace: the learner's copy is created, refreshed where untouched, and never overwritten
without a yes."""

from __future__ import annotations

from moe_lib.teach import workspace as ws


def _setup(tmp_path):
    src, dst = tmp_path / "notebooks", tmp_path / "workspace"
    (src / "solutions").mkdir(parents=True)
    for name in ("00_a.ipynb", "01_b.ipynb", "solutions/01_b_solutions.ipynb"):
        (src / name).write_text(f"{name} v1")
    (src / "00_a.py").write_text("pairs are not copied")
    return src, dst


def test_first_use_copies_every_notebook(tmp_path):
    src, dst = _setup(tmp_path)
    done = ws.sync(src, dst)
    assert sorted(done["copied"]) == ["00_a.ipynb", "01_b.ipynb", "solutions/01_b_solutions.ipynb"]
    assert (dst / "solutions" / "01_b_solutions.ipynb").read_text() == "solutions/01_b_solutions.ipynb v1"
    assert not (dst / "00_a.py").exists()
    assert ws.status(src, dst)["same"] == ["00_a.ipynb", "01_b.ipynb", "solutions/01_b_solutions.ipynb"]


def test_untouched_notebooks_follow_upstream_and_edited_ones_stay(tmp_path):
    src, dst = _setup(tmp_path)
    ws.sync(src, dst)
    (dst / "00_a.ipynb").write_text("my answers")  # the learner's work
    (src / "01_b.ipynb").write_text("01_b v2")  # upstream changed an untouched notebook
    assert ws.status(src, dst)["edited"] == ["00_a.ipynb"] and ws.status(src, dst)["upstream"] == ["01_b.ipynb"]
    done = ws.sync(src, dst, ask=lambda name: (_ for _ in ()).throw(AssertionError("must not ask")))
    assert done["copied"] == ["01_b.ipynb"] and (dst / "01_b.ipynb").read_text() == "01_b v2"
    assert (dst / "00_a.ipynb").read_text() == "my answers"


def test_changed_on_both_sides_asks_and_keeps_the_learners_by_default(tmp_path):
    src, dst = _setup(tmp_path)
    ws.sync(src, dst)
    (dst / "00_a.ipynb").write_text("my answers")
    (src / "00_a.ipynb").write_text("00_a v2")
    asked, said = [], []
    done = ws.sync(src, dst, ask=lambda name: asked.append(name) or False, echo=said.append)
    assert asked == ["00_a.ipynb"] and done["kept"] == ["00_a.ipynb"]
    assert (dst / "00_a.ipynb").read_text() == "my answers"
    assert (dst / "00_a.upstream.ipynb").read_text() == "00_a v2" and "kept your 00_a.ipynb" in said[0]
    done = ws.sync(src, dst, ask=lambda name: True)  # now the learner says yes
    assert (dst / "00_a.ipynb").read_text() == "00_a v2" and done["copied"] == ["00_a.ipynb"]


def test_the_workspace_is_ignored_by_git():
    assert "/workspace/" in (ws.REPO / ".gitignore").read_text().splitlines()
    assert ws.WORKSPACE == ws.REPO / "workspace" and ws.SOURCE == ws.REPO / "notebooks"
