"""Corpus -> .bin/.idx: exact round trips for every input format, one-line CLI errors, and
validation of damaged indexed datasets."""

import os
import subprocess
import sys

import pytest
from fixtures_data import (
    TINY_TEXTS,
    make_jsonl,
    make_parquet,
    make_saved_dataset,
    make_tiny_tokenizer,
    make_txt_dir,
)

from megakd.data.indexed import dataset_fingerprint, open_indexed, write_indexed
from megakd.data.preprocess import preprocess
from megakd.data.tokenizer import load_tokenizer
from megakd.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "preprocess_data.py")
sys.path.insert(0, os.path.dirname(TOOL))  # tools/ is not a package: import main() from it
MAKERS = {"jsonl": lambda p: make_jsonl(p / "c.jsonl"), "parquet": lambda p: make_parquet(
    p / "c.parquet"), "txt": lambda p: make_txt_dir(p / "txt"), "saved": lambda p:
    make_saved_dataset(p / "saved")}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def decoded_documents(prefix, tok, eod=True):
    ds = open_indexed(prefix)
    docs = [[int(t) for t in ds[i]] for i in range(len(ds))]
    if eod:
        assert all(d[-1] == tok.eos_token_id for d in docs)
        docs = [d[:-1] for d in docs]
    return [tok.decode(d, clean_up_tokenization_spaces=False) for d in docs]


@pytest.mark.parametrize("fmt", sorted(MAKERS))
def test_round_trip_gives_back_the_texts(fmt, tok_dir, tok, tmp_path):
    result = preprocess(MAKERS[fmt](tmp_path), tok_dir, str(tmp_path / "out" / "c"))
    assert decoded_documents(str(tmp_path / "out" / "c"), tok) == TINY_TEXTS
    assert result.documents == len(TINY_TEXTS)
    assert sorted(os.listdir(tmp_path / "out")) == ["c.bin", "c.idx"]


def test_directory_of_mixed_files_in_sorted_order(tok_dir, tok, tmp_path):
    (tmp_path / "in").mkdir()
    make_jsonl(tmp_path / "in" / "b.jsonl", TINY_TEXTS[:2])
    make_parquet(tmp_path / "in" / "a.parquet", TINY_TEXTS[2:4])
    make_txt_dir(tmp_path / "in" / "c", TINY_TEXTS[4:])
    preprocess(str(tmp_path / "in"), tok_dir, str(tmp_path / "o"), append_eod=False)
    want = TINY_TEXTS[2:4] + TINY_TEXTS[:2] + TINY_TEXTS[4:]
    assert decoded_documents(str(tmp_path / "o"), tok, eod=False) == want


def test_two_workers_write_the_same_bytes(tok_dir, tmp_path):
    texts = [f"document {i}: " + TINY_TEXTS[i % len(TINY_TEXTS)] * (i % 3 + 1) for i in range(300)]
    corpus = make_jsonl(tmp_path / "c.jsonl", texts)
    outs = []
    for workers in (1, 2):
        prefix = str(tmp_path / f"w{workers}")
        preprocess(corpus, tok_dir, prefix, workers=workers, batch_size=16)
        outs.append([open(prefix + ext, "rb").read() for ext in (".bin", ".idx")])
    assert outs[0] == outs[1]


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_cli_success_prints_a_summary(tok_dir, tmp_path):
    r = run_tool("--input", make_jsonl(tmp_path / "c.jsonl"), "--tokenizer", tok_dir,
                 "--output-prefix", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert f"{len(TINY_TEXTS)} documents" in r.stdout and "tokens/s" in r.stdout
    assert r.stderr == ""  # no megatron-core import warnings, no progress bar off a terminal


BAD_CASES = ["missing input", "missing tokenizer", "not a tokenizer", "empty input",
             "missing key", "unwritable output"]


def bad_case_args(case, tmp_path, tok_dir):
    """CLI arguments for one kind of bad input, and a phrase its error must contain."""
    good = make_jsonl(tmp_path / "good.jsonl")
    out = str(tmp_path / "out" / "c")
    if case == "missing input":
        return [str(tmp_path / "nope.jsonl"), tok_dir, out], "does not exist"
    if case == "missing tokenizer":
        return [good, str(tmp_path / "no-tok"), out], "does not exist"
    if case == "not a tokenizer":
        return [good, str(tmp_path), out], "cannot load a tokenizer"
    if case == "empty input":
        (tmp_path / "empty.jsonl").write_text("\n")
        return [str(tmp_path / "empty.jsonl"), tok_dir, out], "no documents"
    if case == "missing key":
        return [make_jsonl(tmp_path / "k.jsonl", key="body"), tok_dir, out], "'text'"
    (tmp_path / "a_file").write_text("a file where the output folder should be")
    return [good, tok_dir, str(tmp_path / "a_file" / "out")], "cannot write"


def assert_one_line_error(code, stderr, message, tmp_path):
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_bad_input_in_process(case, tok_dir, tmp_path, capsys):
    """Every bad-input case through the CLI's main() (fast: no interpreter start-up)."""
    from preprocess_data import main

    (input_path, tokenizer, out), message = bad_case_args(case, tmp_path, tok_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", input_path, "--tokenizer", tokenizer, "--output-prefix", out])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, message, tmp_path)


@pytest.mark.parametrize("case", ["missing input", "missing key", "not a tokenizer"])
def test_cli_bad_input_subprocess(case, tok_dir, tmp_path):
    """The real tool in a fresh interpreter: nothing but the one error line on stderr."""
    (input_path, tokenizer, out), message = bad_case_args(case, tmp_path, tok_dir)
    r = run_tool("--input", input_path, "--tokenizer", tokenizer, "--output-prefix", out)
    assert_one_line_error(r.returncode, r.stderr, message, tmp_path)


def test_failure_midway_leaves_no_output(tok_dir, tmp_path):
    corpus = make_jsonl(tmp_path / "c.jsonl")
    with open(corpus, "a") as f:
        f.write('{"body": "no text field on the last line"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:7 has no 'text'"):
        preprocess(corpus, tok_dir, str(tmp_path / "out" / "c"), batch_size=2)
    assert os.listdir(tmp_path / "out") == []


@pytest.fixture
def small_dataset(tmp_path):
    prefix = str(tmp_path / "d")
    write_indexed(prefix, [[1, 2, 3], [], [4, 5]], vocab_size=10)
    return prefix


def _damage(path, how):
    data = open(path, "rb").read()
    if how == "truncate":
        data = data[:-3]
    elif how == "bad_magic":
        data = b"X" + data[1:]
    elif how == "short":
        data = data[:20]
    elif how == "bad_pointer":  # first sequence pointer (after 34-byte head + 3 int32 lengths)
        data = data[:46] + b"\x07" + data[47:]
    open(path, "wb").write(data)


@pytest.mark.parametrize("ext,how,message", [
    (".idx", "truncate", "truncated or corrupt"), (".idx", "bad_magic", "bad magic"),
    (".idx", "short", "truncated"), (".idx", "bad_pointer", "corrupt"),
    (".bin", "truncate", "truncated")])
def test_open_indexed_rejects_damaged_files(small_dataset, ext, how, message):
    _damage(small_dataset + ext, how)
    with pytest.raises(DataError, match=message):
        open_indexed(small_dataset)


def test_open_indexed_missing_files_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="preprocess_data.py"):
        open_indexed(str(tmp_path / "nothing"))


def test_dataset_fingerprint_tracks_content(small_dataset, tmp_path):
    fp = dataset_fingerprint(small_dataset)
    assert fp == dataset_fingerprint(small_dataset)
    write_indexed(str(tmp_path / "e"), [[1, 2, 3], [4, 5]], vocab_size=10)
    assert dataset_fingerprint(str(tmp_path / "e")) != fp


def test_write_indexed_rejects_out_of_vocab_ids(tmp_path):
    with pytest.raises(DataError, match="outside"):
        write_indexed(str(tmp_path / "d"), [[1, 2], [70000]], vocab_size=10)
    assert os.listdir(tmp_path) == []
