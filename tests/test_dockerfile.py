"""The Dockerfile cannot be built here (no Docker, no GPU): check what it installs instead.

It must install exactly setup.py's requirements except torch (the NGC image's CUDA torch stays),
never PyPI's unrelated `apex` or a CPU torch, megakd itself without dependencies, and put the
checkout where tools/launch.py's Slurm recipes look for it.
"""

import ast
import os
import re
import shlex

from dist_utils import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from megakd.launch.plan import CONTAINER_CODE_DIR, RECIPES


def instructions(path=os.path.join(REPO, "Dockerfile")):
    """[(INSTRUCTION, arguments)] with comments dropped and line continuations joined."""
    text = "\n".join(line for line in open(path).read().splitlines()
                     if not line.lstrip().startswith("#"))
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def pip_installs():
    """The argument lists of every `pip install` in a RUN instruction."""
    for word, rest in instructions():
        if word != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv = []
        for token in list(lexer) + [";"]:
            if token not in ("&&", ";", "||", "|"):
                argv.append(token)
                continue
            if argv[:2] == ["pip", "install"] or argv[:4] == ["python", "-m", "pip", "install"]:
                yield argv[argv.index("install") + 1:]
            argv = []


def setup_requires():
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keyword = next(k for k in call.keywords if k.arg == "install_requires")
    return ast.literal_eval(keyword.value)


def as_set(requirements):
    return {(canonicalize_name(r.name), str(r.specifier), tuple(sorted(r.extras)))
            for r in map(Requirement, requirements)}


def test_base_is_an_ngc_pytorch_image():
    args = dict(rest.split("=", 1) for word, rest in instructions()
                if word == "ARG" and "=" in rest)
    base = next(rest for word, rest in instructions() if word == "FROM")
    image = args.get(base.strip("${}"), base)
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", image), image


def test_installs_setup_py_requirements_except_torch():
    installed = [arg for argv in pip_installs() for arg in argv
                 if not arg.startswith("-") and arg != "."]
    assert as_set(installed) == {r for r in as_set(setup_requires()) if r[0] != "torch"}


def test_never_installs_torch_or_pypi_apex():
    for argv in pip_installs():
        names = {canonicalize_name(Requirement(a).name) for a in argv
                 if not a.startswith("-") and a != "."}
        assert not names & {"torch", "apex", "transformer-engine"}, argv
        assert not any("index-url" in a or "download.pytorch.org" in a for a in argv), argv
    # NGC's PIP_CONSTRAINT pins the image's packages (torch among them): leave it in force
    assert not any("PIP_CONSTRAINT" in rest for _, rest in instructions())


def test_megakd_goes_in_without_dependencies_from_the_launchers_code_dir():
    assert any("." in argv and "--no-deps" in argv for argv in pip_installs())
    workdirs = [rest for word, rest in instructions() if word == "WORKDIR"]
    assert workdirs[-1] == CONTAINER_CODE_DIR
    copied = {shlex.split(rest)[-2].strip("./") for word, rest in instructions() if word == "COPY"}
    needed = {recipe.script.split("/")[0] for recipe in RECIPES.values()} | {"megakd", "setup.py"}
    assert needed <= copied, needed - copied
