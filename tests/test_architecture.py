"""The import graph of `megakd` reads top-down: every import points to a lower floor or stays in its room.

Walks every module of the package with `ast` (imports at the top and inside functions, `import x` and
`from x import y`, relative ones too) and checks each import of a megakd module against `FLOORS`.
"""

import ast
import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLOORS: Tuple[Tuple[str, ...], ...] = (
    ("megakd", "megakd.errors"),
    ("megakd.toolargs",),
    ("megakd.platform",),
    ("megakd.checkpoint",),
    ("megakd.losses",),
    ("megakd.data",),
    ("megakd.placements", "megakd.schedule"),
    ("megakd.config",),
    ("megakd.models",),
    ("megakd.convert",),
    ("megakd.inference",),
    ("megakd.teacher",),
    ("megakd.training",),
    ("megakd.miniplm", "megakd.minillm", "megakd.launch"),
)
"""The floors from the ground up; each entry of a floor is a room (a module or package: the longest
entry naming a module holds it). A module may import any room on a floor below its own, and any module
of its own room; rooms on one floor are independent (MiniPLM, MiniLLM and the launcher borrow nothing
from each other). Why this order, from the ground up:
  errors        the error types every layer raises (the root package imports nothing of megakd);
  toolargs      the tools' typed command-line settings (dataclass fields -> flags), on errors alone;
  platform      devices, process groups, collectives on the right device, fp8, fault-injection hooks;
  checkpoint    dist checkpoints: a service on torch + megatron-core + platform alone, so the converter,
                inference and every trainer share it without depending on each other;
  losses        KD maths on tensors (vocab-parallel terms, truncation of teacher targets);
  data          formats and readers: tokenizers, indexed datasets, blends, shards, the logits store;
  placements    where the teacher runs (registry of placements; classes named, imported on use) and
                the train / eval / exit schedule: plain rules on config values, so config may ask them;
  config        the typed config: it checks kinds against the losses' registry and blends with data.blend;
  models        the GPT model built from the config;
  convert       HF <-> megatron-core: builds models, reads and writes checkpoints;
  inference     forward-only helpers (load a checkpoint for inference, per-token NLL) on convert;
  teacher       the teacher sources and the producer of offline targets (the dump): load via convert,
                read data, compute targets with losses;
  training      the student trainer (asks a teacher source), held-out evaluation (on inference);
  top           the features and entry points built on all of that: MiniPLM, MiniLLM, the launcher.
"""

KNOWN_CIRCLES: Tuple[frozenset, ...] = ()
"""Circles allowed for now (none). An entry that is no longer a circle fails the test, as a new circle
does."""


class Import(NamedTuple):
    path: str  # relative to the repository
    line: int
    text: str  # the import statement as written
    target: str  # the megakd module it loads


def package_modules(root: str = REPO) -> Dict[str, Tuple[str, bool]]:
    """Dotted name -> (file, is a package __init__) for every module of megakd under `root`."""
    out = {}
    for folder, _, files in os.walk(os.path.join(root, "megakd")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                is_pkg = parts[-1] == "__init__"
                out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _resolve(name: str, modules) -> str:
    """The longest prefix of `name` that is a module (`megakd.losses.KINDS` -> `megakd.losses`)."""
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_pkg: bool, modules, path: str = "?") -> Iterator[Import]:
    """Every import of a megakd module in `source` (module-level, in functions, relative)."""
    package = module if is_pkg else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        text = ast.get_source_segment(source, node) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import sub` loads the submodule; `from mod import name` loads mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            if name == "megakd" or name.startswith("megakd."):
                yield Import(path, node.lineno, " ".join(text.split()), _resolve(name, modules))


def room_of(module: str) -> Optional[Tuple[int, str]]:
    """(floor, room) holding `module`; the root package only by its own name."""
    best = None
    for floor, rooms in enumerate(FLOORS):
        for room in rooms:
            if module == room or (room != "megakd" and module.startswith(room + ".")):
                if best is None or len(room) > len(best[1]):
                    best = (floor, room)
    return best


def upward(module: str, imp: Import) -> Optional[str]:
    """Why `imp` in `module` breaks the floors, or None."""
    src, dst = room_of(module), room_of(imp.target)
    if src is None or dst is None:
        return f"{module if src is None else imp.target} is on no floor: add it to FLOORS"
    if dst[0] < src[0] or dst[1] == src[1]:
        return None
    where = "above" if dst[0] > src[0] else "beside (another room of the same floor)"
    return (f"{imp.path}:{imp.line}: `{imp.text}` -> {imp.target} is on floor {dst[0]} ({dst[1]}), {where} "
            f"{module} on floor {src[0]} ({src[1]})")


def all_imports(root: str = REPO) -> Dict[str, List[Import]]:
    modules = package_modules(root)
    out = {}
    for module, (path, is_pkg) in sorted(modules.items()):
        with open(path) as f:
            out[module] = list(imports_of(module, f.read(), is_pkg, modules, os.path.relpath(path, root)))
    return out


def circles(edges: Dict[str, Set[str]]) -> List[Set[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-imports."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


# ----------------------------------------------------------------------------------------- the checks

def test_every_module_is_on_a_floor():
    missing = [m for m in package_modules() if room_of(m) is None]
    assert not missing, f"modules on no floor (add them to FLOORS): {missing}"


def test_no_import_runs_back_up():
    bad = [why for module, imps in all_imports().items() for imp in imps
           if (why := upward(module, imp)) is not None]
    assert not bad, "imports that break the floors:\n" + "\n".join(bad)


def test_no_import_circle():
    edges = {m: {i.target for i in imps if i.target != m} for m, imps in all_imports().items()}
    found = [frozenset(c) for c in circles(edges)]
    new = [sorted(c) for c in found if c not in KNOWN_CIRCLES]
    stale = [sorted(c) for c in KNOWN_CIRCLES if c not in found]
    assert not new, f"import circles among megakd modules: {new}"
    assert not stale, f"these circles are gone: delete them from KNOWN_CIRCLES: {stale}"


# ---------------------------------------------------------------------- the checks can fail

def test_an_upward_import_inside_a_function_is_caught():
    modules = package_modules()
    source = "import os\n\n\ndef f():\n    from megakd.training import trainer\n    return trainer\n"
    imps = list(imports_of("megakd.errors", source, False, modules, "megakd/errors.py"))
    assert [(i.line, i.target) for i in imps] == [(5, "megakd.training.trainer")]
    why = upward("megakd.errors", imps[0])
    assert why.startswith("megakd/errors.py:5: `from megakd.training import trainer` -> megakd.training.trainer")
    assert "above" in why


def test_relative_and_sideways_imports_are_resolved():
    modules = package_modules()
    rel = list(imports_of("megakd.miniplm.score", "from ..minillm import data\nfrom . import instances\n",
                          False, modules, "megakd/miniplm/score.py"))
    assert [i.target for i in rel] == ["megakd.minillm.data", "megakd.miniplm.instances"]
    assert "beside" in upward("megakd.miniplm.score", rel[0])  # another room of the same floor
    assert upward("megakd.miniplm.score", rel[1]) is None  # its own room
    down = list(imports_of("megakd.training.heldout", "import megakd.inference\nfrom megakd.losses import KINDS\n",
                           False, modules))
    assert [i.target for i in down] == ["megakd.inference", "megakd.losses"]
    assert all(upward("megakd.training.heldout", i) is None for i in down)


@pytest.mark.parametrize("edges, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),
    ({"a": {"b"}, "b": set(), "c": {"c"}}, [{"c"}]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_circles_are_found(edges, want):
    assert circles(edges) == want
