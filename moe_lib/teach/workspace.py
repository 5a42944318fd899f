"""The learner's own copy of the notebooks: ``workspace/`` (git-ignored), so that study never dirties a tracked
file and a ``git pull`` never conflicts with it.

    python -m moe_lib.teach.workspace            # create it, or bring in what changed upstream (asks first)
    python -m moe_lib.teach.workspace --status   # which notebooks you changed, which upstream changed

``make lab`` runs the first form and opens JupyterLab on ``workspace/``. The committed notebooks in
``notebooks/`` stay what nbval tests. A manifest (``workspace/.manifest.json``) remembers the hash of each file
as it was copied: a file still equal to its copy is refreshed silently when upstream changes; a file you edited
is never overwritten without your yes — the default is to keep yours and put upstream's next to it as
``NAME.upstream.ipynb``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "notebooks"
WORKSPACE = REPO / "workspace"
MANIFEST = ".manifest.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(source: Path) -> list[Path]:
    """The notebooks a learner works in (their .py pairs are for reviewers, not copied)."""
    return sorted(p.relative_to(source) for p in source.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def status(source: Path = SOURCE, workspace: Path = WORKSPACE) -> dict[str, list[str]]:
    """{"missing": not copied yet, "edited": changed by the learner, "upstream": changed in notebooks/ since the
    copy, "both": changed on both sides, "same": neither}."""
    manifest = _read_manifest(workspace)
    out = {"missing": [], "edited": [], "upstream": [], "both": [], "same": []}
    for rel in _sources(source):
        mine = workspace / rel
        if not mine.exists():
            out["missing"].append(str(rel))
            continue
        copied = manifest.get(str(rel))
        edited = copied is None or _digest(mine) != copied
        upstream = copied is None or _digest(source / rel) != copied
        if copied is not None and _digest(mine) == _digest(source / rel):
            edited = upstream = False
        out["both" if edited and upstream else "edited" if edited else "upstream" if upstream else "same"].append(
            str(rel))
    return out


def _read_manifest(workspace: Path) -> dict[str, str]:
    path = workspace / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def sync(source: Path = SOURCE, workspace: Path = WORKSPACE, ask: Callable[[str], bool] | None = None,
         echo: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Create or refresh the workspace. New and untouched notebooks are copied; a notebook changed on both sides
    is replaced only if ``ask(name)`` says yes (default: no, upstream's goes next to it as NAME.upstream.ipynb)."""
    ask = ask or (lambda name: False)
    workspace.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(workspace)
    state = status(source, workspace)
    done = {"copied": [], "kept": []}
    for rel in state["missing"] + state["upstream"]:
        _copy(source / rel, workspace / rel, manifest, rel)
        done["copied"].append(rel)
    for rel in state["both"]:
        if ask(rel):
            _copy(source / rel, workspace / rel, manifest, rel)
            done["copied"].append(rel)
        else:
            side = (workspace / rel).with_suffix(".upstream.ipynb")
            shutil.copyfile(source / rel, side)
            done["kept"].append(rel)
            echo(f"kept your {rel}; the new upstream version is in {side.relative_to(workspace)}")
    (workspace / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return done


def _copy(src: Path, dst: Path, manifest: dict[str, str], rel: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    manifest[rel] = _digest(src)


def _ask_terminal(name: str) -> bool:
    if not sys.stdin.isatty():
        return False  # never overwrite without a person's yes
    reply = input(f"{name}: you edited it and upstream changed it too. Replace yours with upstream's? [y/N] ")
    return reply.strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--status", action="store_true", help="only say what differs")
    a = p.parse_args(argv)
    if a.status:
        for key, names in status().items():
            if names and key != "same":
                print(f"{key}: {', '.join(names)}")
        return 0
    done = sync(ask=_ask_terminal)
    print(f"workspace/: {len(done['copied'])} notebooks copied, {len(done['kept'])} of yours kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
