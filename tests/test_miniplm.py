"""MiniPLM Difference Sampling: instances, scoring (vs a direct computation), kill + resume,
selection into a refined corpus, cross-family re-tokenisation, and the user errors."""

import json
import os
import subprocess
import sys

import numpy
import pytest
from conftest import synthetic_texts
from dist_utils import REPO, run_job, tiny_args
from fixtures_data import TINY_TEXTS, make_tiny_tokenizer

from megakd.convert.convert import single_process
from megakd.data.indexed import open_indexed, write_indexed
from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
from megakd.errors import DataError
from megakd.miniplm.instances import Instances
from megakd.platform.faults import KILL_AFTER_SHARDS
from megakd.miniplm.score import read_scores
from megakd.miniplm.select import SelectArgs, choose, num_kept, select
from megakd.miniplm.text import ByteLevelText

SCORE = os.path.join(REPO, "tools", "miniplm_score.py")
SELECT = os.path.join(REPO, "tools", "miniplm_select.py")
LENGTH, SHARD = 48, 8


def _write_corpus(tok_dir, prefix, texts):
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    write_indexed(prefix, (tok.tokenize(t) + [tok.eod] for t in texts), tok.vocab_size)
    return prefix


@pytest.fixture(scope="module")
def corpus_texts():
    return synthetic_texts(8, seed=5) + TINY_TEXTS


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory, corpus_texts):
    """Teacher (iteration 6) and reference (iteration 2) of one tiny run; a small unicode corpus."""
    root = tmp_path_factory.mktemp("miniplm")
    tok_dir = tiny_corpus[0]
    run_job(tiny_args(tiny_corpus, root / "train", **{
        "train.iters": 6, "checkpoint.interval": 2, "checkpoint.save": root / "ckpt",
        "optim.lr": 1e-2}))
    prefix = _write_corpus(tok_dir, str(root / "small_text_document"), corpus_texts)
    return {"root": root, "tok": tok_dir, "prefix": prefix,
            "teacher": str(root / "ckpt"), "reference": str(root / "ckpt" / "iter_0000002")}


def _score_args(s, out, *extra):
    return ["--teacher", s["teacher"], "--reference", s["reference"], "--data-prefix", s["prefix"],
            "--instance-length", LENGTH, "--shard-size", SHARD, "--micro-batch-size", 4,
            "--output", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def scored(setup):
    out = setup["root"] / "scores"
    run_job(_score_args(setup, out), script=SCORE)
    return out


# ------------------------------------------------------------------ instances (no models)
def test_instances_cover_every_token_exactly_once(tiny_corpus, tmp_path):
    tok_dir, prefix = tiny_corpus
    other = _write_corpus(tok_dir, str(tmp_path / "other"), ["a b c", "x", "king and queen"])
    for length in (2, 7, 1024):
        inst = Instances([prefix, other], "chunks", length)
        for s, src in enumerate(inst.sources):
            ids = numpy.flatnonzero(inst.source == s)
            assert numpy.array_equal(numpy.concatenate([inst.tokens(i) for i in ids]), src.stream)
            assert (inst.size[ids[:-1]] == length).all() and 1 <= inst.size[ids[-1]] <= length
            ds = open_indexed(src.prefix)
            for i in ids[:: max(1, len(ids) // 50)]:  # spans name the document pieces exactly
                pieces = [ds.get(d, offset=o, length=n) for d, o, n in inst.spans(i)]
                assert numpy.array_equal(numpy.concatenate(pieces), inst.tokens(i))
    docs = Instances([prefix], "documents")
    ds = open_indexed(prefix)
    assert len(docs) == len(ds) and all(numpy.array_equal(docs.tokens(i), ds[i]) for i in (0, 7))


def test_byte_level_text_is_exact_at_every_cut(tmp_path, corpus_texts):
    tok_dir = make_tiny_tokenizer(tmp_path / "tok")
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    text = ByteLevelText(tok.hf_tokenizer, tok.eod)
    for doc in corpus_texts:  # the documented claim: token bytes == decode for byte-level BPE
        ids = tok.tokenize(doc)
        assert text.to_bytes(ids).decode("utf-8") == tok.detokenize(ids) == doc
    stream = numpy.array([t for d in corpus_texts for t in tok.tokenize(d) + [tok.eod]])
    want = "".join(d + "\0" for d in corpus_texts)
    for length in (1, 2, 3, 5):  # short chunks split multi-byte characters (emoji, CJK)
        got = "".join(piece + ("\0" if eod else "")
                      for a in range(0, len(stream), length)
                      for piece, eod in text.pieces(stream, a, min(a + length, len(stream))))
        assert got == want, length


def test_gumbel_top_k_is_seeded_and_cold_temperature_is_top_k():
    diff = numpy.random.default_rng(0).normal(size=200).astype(numpy.float32)
    diff[5] = numpy.nan
    top = choose(diff, 50)
    assert 5 not in top and set(top) == set(numpy.argsort(-numpy.nan_to_num(diff, nan=-9))[:50])
    a, b = choose(diff, 50, "sample", 1.0, seed=1), choose(diff, 50, "sample", 1.0, seed=1)
    assert numpy.array_equal(a, b) and not numpy.array_equal(a, top)
    assert numpy.array_equal(choose(diff, 50, "sample", 1e-6, seed=1), top)
    assert num_kept(7, 0.5) == 4 and num_kept(10, 1.0) == 10
    ties = numpy.zeros(6, dtype=numpy.float32)
    assert list(choose(ties, 3)) == [0, 1, 2]  # ties go to the lower index


# ------------------------------------------------------------------ with models
def _direct_mean_logprobs(setup, instances):
    """Mean log p of tokens 1..n-1 from full logits + log_softmax (not the tool's labels= path)."""
    import torch

    from megakd.inference import load_for_inference

    with single_process():
        out = []
        for path in (setup["teacher"], setup["reference"]):
            model = load_for_inference(path).model
            means = []
            with torch.no_grad():
                for i in range(len(instances)):
                    x = torch.from_numpy(instances.tokens(i).astype(numpy.int64))[None]
                    pos = torch.arange(x.shape[1] - 1)[None]
                    logits = model(x[:, :-1], pos, None)  # [1, s, V]
                    logp = torch.log_softmax(logits.double(), -1)
                    means.append(logp.gather(-1, x[:, 1:, None]).mean().item())
            out.append(numpy.array(means))
        return out


def test_selected_set_is_the_top_alpha_of_the_two_models(setup, scored, tmp_path):
    scores, meta = read_scores(scored)
    inst = Instances([setup["prefix"]], "chunks", LENGTH)
    assert meta["instances"]["count"] == len(inst) and meta["teacher"]["iteration"] == 6
    teacher, reference = _direct_mean_logprobs(setup, inst)
    numpy.testing.assert_allclose(scores[:, 1], teacher, atol=1e-4)
    numpy.testing.assert_allclose(scores[:, 2], reference, atol=1e-4)
    diff = teacher - reference
    assert diff.std() > 1e-3  # the two models really differ

    k = num_kept(len(inst), 0.5)
    want = sorted(sorted(range(len(inst)), key=lambda i: (-diff[i], i))[:k])
    out = str(tmp_path / "refined")
    stats = select(SelectArgs(str(scored), [setup["prefix"]], out, ratio=0.5))
    assert stats["kept"] == k and os.path.isfile(out + ".hist.png")
    assert stats["tokens_kept"] == int(inst.size[want].sum())
    refined = open_indexed(out)  # one entry per kept instance, in corpus order
    assert len(refined) == k
    for entry, i in zip(range(k), want):
        assert numpy.array_equal(refined[entry], inst.tokens(i))
    # split at EOD: the same tokens, documents cut after each EOD
    split = select(SelectArgs(str(scored), [setup["prefix"]], out + "_docs", ratio=0.5,
                              tokenizer=setup["tok"], plot=False))
    docs = open_indexed(out + "_docs")
    eod = MegatronTokenizer(load_tokenizer(setup["tok"])).eod
    interior = sum(int((inst.tokens(i)[:-1] == eod).sum()) for i in want)
    assert split["output"]["documents"] == len(docs) == k + interior
    assert numpy.array_equal(numpy.concatenate([docs[j] for j in range(len(docs))]),
                             numpy.concatenate([inst.tokens(i) for i in want]))


def test_padding_in_a_batch_of_documents_does_not_change_a_score(setup):
    """--instances documents batches sequences of different lengths, right-padded."""
    from megakd.inference import load_for_inference
    from megakd.inference import mean_logprobs

    docs = Instances([setup["prefix"]], "documents")
    batch = [docs.tokens(i) for i in range(4)]
    assert len({len(x) for x in batch}) > 1
    with single_process():
        model = load_for_inference(setup["teacher"]).model
        together = mean_logprobs(model, batch, "cpu").numpy()
        alone = [mean_logprobs(model, [x], "cpu").item() for x in batch]
        one_token = mean_logprobs(model, [batch[0][:1], batch[1]], "cpu").numpy()
    numpy.testing.assert_allclose(together, alone, atol=1e-5)
    assert numpy.isnan(one_token[0]) and abs(one_token[1] - alone[1]) < 1e-5


def test_kill_and_resume_gives_the_same_scores_file(setup, scored):
    out = setup["root"] / "scores_killed"
    proc = run_job(_score_args(setup, out), script=SCORE, env={KILL_AFTER_SHARDS: "2"}, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    shards = sorted(os.listdir(out / "shards"))
    assert shards == ["run.json", "shard_000000.npy", "shard_000001.npy"]
    run_job(_score_args(setup, out), script=SCORE)
    for name in ("scores.npy", "metadata.json"):
        assert (out / name).read_bytes() == (scored / name).read_bytes(), name
    assert not (out / "shards").exists()


def test_data_tensor_and_pipeline_parallel_scores_match(setup, scored):
    want, _ = read_scores(scored)
    for layout in (["--tp", 2], ["--pp", 2]):
        out = setup["root"] / f"scores{layout[0]}"
        run_job(_score_args(setup, out, *layout), script=SCORE, nproc=2)
        numpy.testing.assert_allclose(read_scores(out)[0], want, atol=1e-5, err_msg=str(layout))
    out = setup["root"] / "scores_dp2"  # shards alternate over 2 ranks: same batches, same bytes
    run_job(_score_args(setup, out), script=SCORE, nproc=2)
    assert (out / "scores.npy").read_bytes() == (scored / "scores.npy").read_bytes()


def test_cross_family_selection_round_trips_the_text(setup, scored, tmp_path, corpus_texts):
    student_dir = make_tiny_tokenizer(tmp_path / "student", vocab_size=300)
    student = MegatronTokenizer(load_tokenizer(student_dir))
    out = str(tmp_path / "student_refined")
    stats = select(SelectArgs(str(scored), [setup["prefix"]], out, ratio=1.0, plot=False,
                              tokenizer=setup["tok"], student_tokenizer=student_dir))
    refined = open_indexed(out)
    got = ""
    for j in range(len(refined)):
        ids = list(refined[j])
        ends = ids[-1:] == [student.eod]
        got += student.detokenize(ids[:-1] if ends else ids) + ("\0" if ends else "")
    assert got == "".join(t + "\0" for t in corpus_texts)
    assert stats["output"]["tokenizer"] == os.path.abspath(student_dir)


def test_scores_of_another_dataset_are_a_one_line_error(setup, scored, tiny_corpus, tmp_path):
    with pytest.raises(DataError, match="another dataset"):
        select(SelectArgs(str(scored), [tiny_corpus[1]], str(tmp_path / "x")))
    proc = subprocess.run([sys.executable, SELECT, "--scores", str(scored), "--data-prefix",
                           tiny_corpus[1], "--output-prefix", str(tmp_path / "x")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "another dataset" in proc.stderr
    assert not os.path.exists(tmp_path / "x.bin")


def test_rescoring_into_a_finished_output_is_a_no_op_and_other_settings_are_refused(setup, scored):
    before = (scored / "scores.npy").stat().st_mtime_ns
    proc = run_job(_score_args(setup, scored), script=SCORE)
    assert "already complete" in proc.stdout
    assert (scored / "scores.npy").stat().st_mtime_ns == before
    proc = run_job(_score_args(setup, scored, "--micro-batch-size", 2), script=SCORE,
                   check=False)
    assert proc.returncode == 2 and "another run" in proc.stderr


def test_split_dataset_is_deterministic_and_partitions_the_documents(tiny_corpus, tmp_path):
    from megakd.miniplm.split import split_dataset

    prefix = tiny_corpus[1]
    ds = open_indexed(prefix)
    r = split_dataset(prefix, str(tmp_path / "held"), str(tmp_path / "rest"), tokens=3000, seed=3)
    held, rest = open_indexed(str(tmp_path / "held")), open_indexed(str(tmp_path / "rest"))
    assert r.held_out_tokens >= 3000 and r.held_out_documents + r.rest_documents == len(ds)
    docs = sorted([tuple(held[i]) for i in range(len(held))]
                  + [tuple(rest[i]) for i in range(len(rest))])
    assert docs == sorted(tuple(ds[i]) for i in range(len(ds)))
    split_dataset(prefix, str(tmp_path / "held2"), str(tmp_path / "rest2"), tokens=3000, seed=3)
    assert (tmp_path / "held2.bin").read_bytes() == (tmp_path / "held.bin").read_bytes()
    with pytest.raises(DataError, match="at least one"):
        split_dataset(prefix, str(tmp_path / "h"), str(tmp_path / "r"), fraction=0.0001)


# ------------------------------------------------------------------ held-out loss (tools/eval_loss.py)
EVAL = os.path.join(REPO, "tools", "eval_loss.py")


def test_heldout_windows_predict_every_token_but_the_first_once():
    from megakd.training.heldout import windows

    doc = numpy.arange(23)
    for L in (1, 4, 22, 50):
        w = windows(doc, L)
        assert all(2 <= len(x) <= L + 1 for x in w)
        assert numpy.array_equal(numpy.concatenate([x[1:] for x in w]), doc[1:])


def test_heldout_loss_is_the_documents_mean_nll_on_one_rank_and_two(setup, tmp_path):
    """Windows longer than every document: the token-weighted mean of each document's own mean
    log-likelihood (the scoring path); DP2 (windows spread, sums all-reduced) == one process."""
    from megakd.inference import load_for_inference
    from megakd.inference import mean_logprobs
    from megakd.training.heldout import heldout_loss, windows

    docs = Instances([setup["prefix"]], "documents")
    batch = [docs.tokens(i) for i in range(len(docs))]
    n = numpy.array([len(x) - 1 for x in batch], dtype=numpy.float64)
    with single_process():
        model = load_for_inference(setup["teacher"]).model
        want = -(mean_logprobs(model, batch, "cpu").numpy() * n).sum() / n.sum()
        wins = [w for x in batch for w in windows(x, 8)]
        m = numpy.array([len(w) - 1 for w in wins], dtype=numpy.float64)
        want_short = -(mean_logprobs(model, wins, "cpu").numpy() * m).sum() / m.sum()
        one = heldout_loss(model, setup["prefix"], seq_length=1000, micro_batch_size=3, device="cpu")
        short = heldout_loss(model, setup["prefix"], seq_length=8, micro_batch_size=3, device="cpu")
    assert one["tokens"] == short["tokens"] == n.sum()
    assert abs(one["nll"] - want) < 1e-5
    assert abs(short["nll"] - want_short) < 1e-5 and abs(short["nll"] - one["nll"]) > 1e-4
    out = tmp_path / "eval.json"
    run_job(["--ckpt", setup["teacher"], "--data-prefix", setup["prefix"], "--seq-length", 1000,
             "--micro-batch-size", 3, "--output", out], nproc=2, script=EVAL)
    got = json.loads(out.read_text())[setup["prefix"]]
    assert got["tokens"] == n.sum() and abs(got["nll"] - one["nll"]) < 1e-5


def test_heldout_loss_on_data_of_another_tokenizer_is_a_one_line_error(setup, tiny_corpus, tmp_path):
    prefix = str(tmp_path / "big_ids")
    write_indexed(prefix, [[1, 2, 10 ** 6]], 2 * 10 ** 6)
    proc = run_job(["--ckpt", setup["teacher"], "--data-prefix", prefix, "--seq-length", 8],
                   script=EVAL, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("evaluate on data made with the model's")
