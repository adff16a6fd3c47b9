"""The walkthroughs and the learning guide stay true to the code.

Every walkthroughs/*.py runs as a script in a fresh interpreter (cwd = repo root, outputs and the tokenizer
cache in temporary folders) and must exit 0: each one asserts what it shows, so a change to the model that
contradicts a walkthrough fails here. Every link from the guide to the code must point at a file that exists
and, where the link names a function, class or constant, at a file that defines it.
"""
from __future__ import annotations

import ast
import re
import time

import pytest

from support import ROOT, assert_picture, finish, start

WALKTHROUGHS = sorted((ROOT / "walkthroughs").glob("*.py"))
GUIDE = sorted((ROOT / "docs" / "guide").glob("*.md")) + [ROOT / "walkthroughs" / "README.md"]

# name: (files it must leave in $MINIBERT_WALKTHROUGH_OUT, a line it must print)
EXPECTED = {
    "01_attention_and_masking.py": (["attention.png"], "padded tokens changed, real outputs unchanged"),
    "02_layernorm_backward.py": ([], "worst relative error: float64"),
    "03_embedding_scatter_add.py": ([], "numpy   ok: rows 2 and 4 stay 0"),
    "04_one_training_step.py": ([], "make_train_step gives the same parameters"),
    "05_fill_mask.py": (["fill-mask-run/latest", "fill-mask-run/vocab.txt", "fill-mask-run/loss.png"],
                        "fill_mask == softmax of mlm_logits at the [MASK]"),
    "06_attention_maps.py": (["attention-maps.png", "attention-run/latest"], "layer 0 by hand == attention_maps"),
    "07_data_parallel.py": ([], "four devices == one device"),
    "08_classification_head.py": ([], "head backward == finite differences"),
    "09_small_budget_sweep.py": (["sweep/sweep.png", "sweep/lr-0.002/latest"], "best peak rate: "),
    "10_gelu_and_cross_entropy.py": ([], "cross-entropy backward == finite differences"),
}


def run_walkthrough(path, env, out, *args):
    started = time.perf_counter()
    code, stdout, stderr = finish(start(dict(env, MINIBERT_WALKTHROUGH_OUT=str(out)), path, *args))
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    assert code == 0, f"{path.name} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout


def test_every_walkthrough_is_listed_and_in_percent_format():
    assert [p.name for p in WALKTHROUGHS] == sorted(EXPECTED), "add the new walkthrough to EXPECTED"
    for path in WALKTHROUGHS:
        text = path.read_text()
        ast.parse(text, filename=str(path))
        assert text.startswith("# %% [markdown]\n# # Walkthrough"), f"{path.name}: must open with a title cell"
        cells = re.findall(r"^# %%( \[markdown\])?$", text, flags=re.M)
        assert "" in cells and " [markdown]" in cells, f"{path.name}: needs code and markdown cells"
        assert len(text.splitlines()) <= 160, f"{path.name}: keep a walkthrough short"
        assert "sys.path" not in text, f"{path.name}: import the installed package; do not edit sys.path"


@pytest.mark.slow
@pytest.mark.parametrize("path", WALKTHROUGHS, ids=lambda p: p.stem)
def test_walkthrough_runs_and_leaves_its_outputs(path, script_env, tmp_path):
    stdout = run_walkthrough(path, script_env, tmp_path)
    files, line = EXPECTED[path.name]
    assert line in stdout, f"{path.name} did not print {line!r}:\n{stdout[-2000:]}"
    for name in files:
        assert (tmp_path / name).is_file(), f"{path.name} did not write {name}"
        if name.endswith(".png"):
            assert_picture(tmp_path / name, 300, 250)
    assert not any(p.name in ("attention.png", "fill-mask-run", "attention-maps.png", "attention-run", "sweep")
                   for p in ROOT.iterdir()), "wrote into the repo"
    if path.name == "07_data_parallel.py":
        assert "all-reduce ops on four devices: " in stdout
    if path.name == "08_classification_head.py" and "transformers comparison skipped" not in stdout:
        assert "gradients == transformers'" in stdout
    if path.name == "05_fill_mask.py":   # the other branch: an existing run given as an argument
        again = run_walkthrough(path, script_env, tmp_path / "second", tmp_path / "fill-mask-run")
        assert "using the run in" in again and line in again
        assert not (tmp_path / "second" / "fill-mask-run").exists()


# --- the guide's links into the code -----------------------------------------------------------------------------

LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
NAMED = re.compile(r"^`([A-Za-z_][\w.]*)(?:\(\))?`$")


def defines(source: str, name: str) -> bool:
    last = name.split(".")[-1]
    return re.search(rf"^\s*(?:def|class)\s+{re.escape(last)}\b|^\s*{re.escape(last)}\s*[:=]", source,
                     flags=re.M) is not None


def test_guide_exists_and_links_into_the_code():
    assert (ROOT / "docs" / "guide" / "README.md").is_file()
    checked = 0
    for doc in GUIDE:
        for text, target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)}: broken link {target}"
            named = NAMED.match(text.strip())
            if named and path.suffix == ".py":
                assert defines(path.read_text(), named.group(1)), (
                    f"{doc.relative_to(ROOT)}: [{text}]({target}) but {path.relative_to(ROOT)} defines no "
                    f"{named.group(1).split('.')[-1]}")
                checked += 1
    assert checked >= 50, f"only {checked} links name code; the guide should point at the code it explains"
