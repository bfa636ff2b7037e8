"""The placement registry: where a run's KD targets come from, resolved once from the config.

`kd.source` and `teacher.placement` name one placement (`placement_name`); everything that depends on
it asks its `Placement` row: the trainer (which `TeacherSource` to build, whether this job splits into
student and teacher ranks), the world-size check in `Config.validate` and the launcher
(`megakd.launch.plan`). A new in-process placement is a new module in `megakd/teacher/` and one row
in `PLACEMENTS`. Light on purpose (config imports it): classes are named by module path and imported
only when a run builds them.
"""

import importlib
from dataclasses import dataclass
from typing import Optional

from megakd.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    name: str
    source: Optional[str]
    """"module:Class" of its `TeacherSource` (built with a `TeacherContext`); None: no teacher."""
    server: Optional[str] = None
    """"module:Class" the placement's own ranks run (`Class(cfg, split).serve()`); None: the teacher
    runs inside the student ranks (or not at all) and the job needs no extra processes."""

    @property
    def own_ranks(self) -> bool:
        """Whether the teacher runs on teacher.ranks processes of its own, beside the students."""
        return self.server is not None

    def teacher_ranks(self, cfg) -> int:
        """Processes the job runs besides the students."""
        return cfg.teacher.ranks if self.own_ranks else 0

    def student_world(self, cfg, world_size: int) -> int:
        """The student processes of a job of `world_size`; with ranks of its own, checks that the
        teacher ranks leave whole student replicas to serve."""
        if not self.own_ranks:
            return world_size
        tch, p = cfg.teacher, cfg.parallel
        students = world_size - tch.ranks
        if students <= 0 or students % (p.tp * p.pp):
            raise ConfigError(f"world size {world_size} must equal student ranks (a multiple of "
                              f"parallel.tp*parallel.pp={p.tp * p.pp}) + teacher.ranks={tch.ranks}; "
                              f"launch that many processes or change teacher.ranks")
        dp = students // (p.tp * p.pp)
        groups = teacher_groups(tch)
        if groups > dp or (tch.sharing == "per_replica" and groups != dp):
            raise ConfigError(f"teacher.ranks={tch.ranks} form {groups} teacher groups for {dp} "
                              f"student data-parallel replicas; teacher.sharing={tch.sharing} needs "
                              f"{'exactly' if tch.sharing == 'per_replica' else 'at most'} {dp}")
        return students

    def source_class(self):
        """Its TeacherSource class (imported now), or None."""
        return _resolve(self.source) if self.source else None

    def server_class(self):
        """The class its own ranks run (imported now), or None."""
        return _resolve(self.server) if self.server else None


PLACEMENTS = {p.name: p for p in [
    Placement("none", None),
    Placement("colocated", "megakd.teacher.colocated:ColocatedTeacher"),
    Placement("dedicated", "megakd.teacher.dedicated:DedicatedTeacher",
              server="megakd.teacher.dedicated:TeacherServer"),
    Placement("offline", "megakd.teacher.offline:OfflineTeacher"),
]}

SOURCES = ("none", "online", "offline")
"""kd.source values: none and offline name their placement; online takes teacher.placement's."""
ONLINE = tuple(name for name in PLACEMENTS if name not in SOURCES)
"""teacher.placement values: the placements of a teacher run during training (kd.source=online)."""


def placement_name(source: str, teacher_placement: str) -> str:
    """The one placement a (kd.source, teacher.placement) pair names."""
    if source == "online":
        return teacher_placement
    if PLACEMENTS[teacher_placement].own_ranks:
        raise ConfigError(f"teacher.placement={teacher_placement} needs kd.source=online")
    return source


def placement(cfg) -> Placement:
    """The placement of a run's config."""
    return PLACEMENTS[placement_name(cfg.kd.source, cfg.teacher.placement)]


def teacher_groups(teacher) -> int:
    """dedicated: how many independent teacher model replicas the teacher ranks form."""
    return teacher.ranks // (teacher.tp * teacher.pp)


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
