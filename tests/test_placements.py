"""The placement registry (`megakd.placements`) is the one place a run's teacher placement is decided:
every config choice resolves to one row, and the trainer, `Config.validate` and the launcher agree."""

import contextlib
import itertools
import os
import subprocess
import sys
import typing

import pytest

from dist_utils import REPO
from megakd import placements
from megakd.config import Config, load_config
from megakd.errors import ConfigError
from megakd.launch.plan import plan_world
from megakd.placements import ONLINE, PLACEMENTS, SOURCES, placement_name

BASE = ["data.prefix=p", "data.tokenizer=t", "teacher.checkpoint=c", "train.global_batch_size=12",
        "train.micro_batch_size=1"]


def test_every_config_choice_names_one_registered_placement():
    hint = typing.get_type_hints(Config.__dataclass_fields__["teacher"].type)["placement"]
    assert typing.get_args(hint) == ONLINE  # teacher.placement's values come from the registry
    assert typing.get_args(typing.get_type_hints(Config.__dataclass_fields__["kd"].type)["source"]) == SOURCES
    reached = set()
    for source, where in itertools.product(SOURCES, ONLINE):
        if source != "online" and PLACEMENTS[where].own_ranks:
            with pytest.raises(ConfigError, match=f"placement={where} needs kd.source=online"):
                placement_name(source, where)
            continue
        reached.add(placement_name(source, where))
    assert reached == set(PLACEMENTS)


def test_each_placement_names_its_classes_and_world_rule():
    from megakd.teacher.base import TeacherSource

    cfg = load_config(None, BASE + ["teacher.ranks=2"], validate=False)
    for name, p in PLACEMENTS.items():
        source = p.source_class()
        assert source is None if name == "none" else issubclass(source, TeacherSource), name
        assert (p.server_class() is not None) == p.own_ranks, name
        assert p.teacher_ranks(cfg) == (2 if p.own_ranks else 0), name
        assert p.student_world(cfg, 6) == 6 - p.teacher_ranks(cfg), name
    assert [n for n, p in PLACEMENTS.items() if p.own_ranks] == ["dedicated"]
    with pytest.raises(ConfigError, match="world size 2 must equal student ranks"):
        PLACEMENTS["dedicated"].student_world(cfg, 2)


@pytest.mark.parametrize("overrides", [
    [],
    ["kd.source=offline", "kd.store=s"],
    ["kd.source=online"],
    ["kd.source=online", "teacher.placement=dedicated", "teacher.ranks=2", "kd.top_k=8"],
    ["kd.source=online", "teacher.placement=dedicated", "teacher.ranks=4", "teacher.tp=2",
     "kd.top_k=8", "parallel.tp=2"],
])
def test_the_launcher_sizes_the_world_the_config_accepts(overrides):
    cfg = load_config(None, BASE + overrides, validate=False)
    raw = {}
    for item in BASE + overrides:
        section, key = item.split("=")[0].split(".")
        raw.setdefault(section, {})[key] = getattr(getattr(cfg, section), key)
    world = plan_world(raw, 1, 2 * cfg.parallel.tp, whole_nodes=False)
    assert world.teacher_ranks == placements.placement(cfg).teacher_ranks(cfg)
    cfg.validate(world.size)  # the launched world passes the entry point's check
    with pytest.raises(ConfigError) if world.teacher_ranks else contextlib.nullcontext():
        cfg.validate(world.student_ranks)  # without the teacher's ranks it would not


def test_config_does_not_import_the_teachers():
    """config sits on a low floor: the registry names classes by module path, imported on use."""
    code = ("import sys, megakd.config\n"
            "assert not [m for m in sys.modules if m.startswith(('torch', 'megakd.teacher'))]")
    env = {**os.environ, "PYTHONPATH": REPO}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_no_module_but_the_registry_dispatches_on_the_placement():
    for path in ["megakd/training/trainer.py", "megakd/training/student.py", "megakd/launch/plan.py",
                 "megakd/teacher/__init__.py", "megakd/teacher/base.py"]:
        with open(os.path.join(REPO, path)) as f:
            text = f.read()
        assert '"dedicated"' not in text and '"colocated"' not in text and "kd.source ==" not in text, path
