"""docs/CONFIG.md is generated from the config dataclasses and must not drift from them."""

import dataclasses
import importlib.util
import os
import subprocess
import sys
import typing

from dist_utils import REPO

from megakd import config as megakd_config

GEN = os.path.join(REPO, "tools", "gen_config_reference.py")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", GEN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gen(*args):
    return subprocess.run([sys.executable, GEN, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO}, cwd=REPO, timeout=120)


def dotted_keys(cls, prefix=""):
    """Every settable key of a config dataclass, walked independently of the generator."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_committed_reference_is_up_to_date():
    proc = gen("--check")
    assert proc.returncode == 0, proc.stderr


def test_reference_lists_every_key_with_its_doc():
    text = open(os.path.join(REPO, "docs", "CONFIG.md")).read()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines()
            if line.startswith("| `")}
    assert set(rows) == set(dotted_keys(megakd_config.Config))
    assert "Tensor-parallel size" in rows["parallel.tp"]
    assert '"llama" \\| "gpt2"' in rows["model.arch"] and '`"llama"`' in rows["model.arch"]
    assert "int or null" in rows["model.num_query_groups"]


def test_generator_picks_up_new_sections_and_fields(tmp_path, monkeypatch):
    (tmp_path / "new_cfg.py").write_text('''
from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class TeacherConfig:
    """How the teacher runs."""
    placement: Literal["colocated", "dedicated", "offline"] = "colocated"
    """Where the teacher's forward runs."""
    ranks: Optional[int] = None
    """Processes for placement=dedicated (a | in a doc is escaped)."""


@dataclass
class Root:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    seed: int = 1
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    text = load_generator().render("new_cfg")
    assert "## `teacher`\n\nHow the teacher runs." in text
    assert ('| `teacher.placement` | "colocated" \\| "dedicated" \\| "offline" | `"colocated"` | '
            "Where the teacher's forward runs. |") in text
    assert ("| `teacher.ranks` | int or null | `null` | "
            "Processes for placement=dedicated (a \\| in") in text
    assert "| `seed` | int | `1` |  |" in text


def test_check_fails_on_a_stale_file(tmp_path):
    out = tmp_path / "CONFIG.md"
    assert gen("--output", str(out)).returncode == 0
    out.write_text(out.read_text().replace("Tensor-parallel size", "Tensor parallel size"))
    proc = gen("--check", "--output", str(out))
    assert proc.returncode == 1
    assert "is stale: run python tools/gen_config_reference.py" in proc.stderr
