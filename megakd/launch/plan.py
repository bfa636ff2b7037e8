"""What to launch: the recipe table (entry point -> script) and the world size a job needs.

Pure Python, no NeMo-Run import, so it is cheap to test and any launcher can reuse it.

World size: the executor flags size the *student* (`--nproc` processes locally, or `--nodes` x
`--gpus-per-node` on Slurm). A placement with ranks of its own (`megakd.placements`; today
`kd.source: online` with `teacher.placement: dedicated`) adds `teacher.ranks` processes: world =
student ranks + teacher ranks (on Slurm rounded into whole nodes; the teacher ranks must fill them).
"""

import difflib
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional

from megakd import placements
from megakd.config import KDConfig, ParallelConfig, TeacherConfig, from_dict, load_raw
from megakd.errors import MegakdError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINER_CODE_DIR = "/workspace/megakd"
"""Where the Dockerfile puts this checkout inside the image (its WORKDIR)."""


class LaunchError(MegakdError):
    """A recipe, executor or world size that cannot be launched as asked."""


@dataclass(frozen=True)
class Recipe:
    script: str
    """Entry-point script, relative to the repository root."""
    torchrun: bool
    """A multi-process torchrun job (one process per GPU), or a single Python process."""
    summary: str


RECIPES = {
    "pretrain_pd": Recipe("examples/pretrain_pd.py", True,
                          "pre-train a student, with KD from an online or offline teacher"),
    "dump_teacher_logits": Recipe("tools/dump_teacher_logits.py", True,
                                  "write sparse top-k teacher targets for offline distillation"),
    "miniplm_score": Recipe("tools/miniplm_score.py", True,
                            "MiniPLM difference-sampling scores (teacher vs reference LM)"),
    "train_minillm": Recipe("examples/train_minillm.py", True,
                            "MiniLLM reverse-KL policy-gradient training"),
    "preprocess_data": Recipe("tools/preprocess_data.py", False,
                              "tokenise raw text into an indexed dataset"),
    "miniplm_select": Recipe("tools/miniplm_select.py", False,
                             "keep the top-scoring MiniPLM instances"),
    "convert_checkpoint": Recipe("tools/convert_checkpoint.py", False,
                                 "convert between megatron-core and Hugging Face checkpoints"),
}


def available_recipes() -> List[str]:
    """Recipes whose script exists in this checkout."""
    return [n for n, r in RECIPES.items() if os.path.isfile(os.path.join(REPO, r.script))]


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; its script must exist in this checkout."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LaunchError(f"unknown recipe {name!r}{hint}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if name not in available_recipes():
        raise LaunchError(f"recipe {name!r} needs {recipe.script}, which does not exist in this "
                          f"checkout yet; recipes available now: {', '.join(available_recipes())}")
    return recipe


def read_raw_config(path: Optional[str], overrides: List[str]) -> dict:
    """The YAML file plus `key.sub=value` overrides as a plain dict: no dataclass, no validation.

    The launcher types only the sections it reads (`_typed`: parallel, kd, teacher) and leaves the
    rest, which may belong to another recipe's arguments, to the entry point.
    Arguments that are not overrides (flags for the entry point) are left to the entry point.
    """
    return load_raw(path, [o for o in overrides if "=" in o and not o.startswith("-")])


def _section(raw: dict, name: str) -> dict:
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        raise LaunchError(f"config section {name!r} must be a mapping, got {section!r}")
    return section


def _positive_int(value, key: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LaunchError(f"{key} must be a positive integer, got {value!r}")
    return value


def _typed(raw: dict) -> SimpleNamespace:
    """The sections the launcher reads, as the typed config's dataclasses (unknown keys and
    ill-typed values are the entry point's one-line errors, raised here before launching)."""
    return SimpleNamespace(**{name: from_dict(cls, _section(raw, name), f"{name}.") for name, cls in
                              [("parallel", ParallelConfig), ("kd", KDConfig), ("teacher", TeacherConfig)]})


def teacher_ranks(raw: dict) -> int:
    """Processes the job runs besides the students: the run's placement's rule (`megakd.placements`,
    the one `Config.validate` and the trainer use); 0 unless the teacher has ranks of its own."""
    cfg = _typed(raw)
    placement = placements.placement(cfg)
    ranks = placement.teacher_ranks(cfg)
    if placement.own_ranks and ranks <= 0:
        raise LaunchError(f"teacher.placement: {placement.name} needs teacher.ranks: N > 0 (the number "
                          f"of processes that run the teacher), got {ranks}")
    return ranks


@dataclass(frozen=True)
class World:
    nodes: int
    procs_per_node: int
    student_ranks: int
    teacher_ranks: int

    @property
    def size(self) -> int:
        return self.nodes * self.procs_per_node

    def describe(self) -> str:
        split = (f"{self.student_ranks} student + {self.teacher_ranks} teacher ranks"
                 if self.teacher_ranks else f"{self.student_ranks} student ranks")
        return f"world {self.size} = {split} on {self.nodes} node(s) x {self.procs_per_node}"


def plan_world(raw: dict, nodes: int, procs_per_node: int, whole_nodes: bool) -> World:
    """Student ranks from the executor flags, plus the dedicated teacher's ranks.

    whole_nodes: True on a cluster (every node runs procs_per_node processes, so teacher ranks
    add whole nodes); False on one machine (teacher ranks add processes to it).
    """
    students = nodes * procs_per_node
    parallel = _typed(raw).parallel
    model_parallel = (_positive_int(parallel.tp, "parallel.tp", 1)
                      * _positive_int(parallel.pp, "parallel.pp", 1))
    if students % model_parallel:
        raise LaunchError(f"{students} student ranks are not a multiple of parallel.tp*parallel.pp"
                          f"={model_parallel}; change the process count or the parallel sizes")
    teachers = teacher_ranks(raw)
    total = students + teachers
    if not whole_nodes:
        return World(1, total, students, teachers)
    if teachers % procs_per_node:
        raise LaunchError(f"teacher.ranks={teachers} does not fill whole nodes of {procs_per_node} "
                          f"processes; make it a multiple of --gpus-per-node")
    return World(total // procs_per_node, procs_per_node, students, teachers)
