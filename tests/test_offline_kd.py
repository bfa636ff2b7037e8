"""Offline KD (kd.source=offline): per-token teacher targets read from a logits store by
(document, offset), at any layout.

The teacher is the init student trained 3 steps more; its targets are the teacher run on each whole
document, truncated with `truncate_teacher` (what the dump tool stores), written with `write_store`.
"""

import os

import numpy
import pytest
import torch

from dist_utils import REPO, read_metrics, run_job, tiny_args

from megakd.config import load_config
from megakd.errors import ConfigError, MegakdError

DUMP = os.path.join(REPO, "tools", "dump_teacher_logits.py")
T, TOP_P, TOP_K = 2.0, 0.95, 20
KD = {"kd.source": "offline", "kd.kind": "fkl", "kd.temperature": T, "kd.top_p": TOP_P,
      "kd.top_k": TOP_K, "kd.alpha": 0.9}
STEPS = range(1, 4)


def _cfg(corpus, work, **overrides):
    """The config a job of these overrides runs (examples/pretrain_pd.py's default file below)."""
    return load_config(os.path.join(REPO, "configs", "tiny_cpu.yaml"),
                       tiny_args(corpus, work, **overrides))


def _whole_document_targets(teacher, indexed):
    """{doc: (ids [L, K], logprobs [L, K])}: the teacher run on each whole document, truncated."""
    from megakd.losses.targets import truncate_teacher

    rows = {}
    with torch.no_grad():
        for d in range(len(indexed)):
            tokens = torch.from_numpy(indexed.get(d).astype(numpy.int64))[None]
            logits = teacher(tokens, torch.arange(tokens.shape[1])[None], None)
            t = truncate_teacher(logits, temperature=T, top_p=TOP_P, top_k=TOP_K)
            rows[d] = (t.ids[0].numpy(), t.logprobs[0].numpy())
    return rows


def _write(directory, prefix, rows, tokenizer_dir, **meta):
    from megakd.data.logits_store import write_store
    from megakd.data.tokenizer import load_tokenizer, vocab_fingerprint

    def docs():
        for d, (ids, logprobs) in rows.items():
            used = logprobs > -numpy.inf
            yield d, [i[u] for i, u in zip(ids, used)], [p[u] for p, u in zip(logprobs, used)]

    tok = load_tokenizer(tokenizer_dir)
    meta = {"vocab_size": len(tok), "vocab_fingerprint": vocab_fingerprint(tok),
            "tokenizer": tokenizer_dir, "top_p": TOP_P, "top_k": TOP_K, "temperature": T, **meta}
    write_store(str(directory), prefix, docs(), **meta)
    return str(directory)


@pytest.fixture(scope="module")
def setup(tiny_corpus, tmp_path_factory):
    """init + teacher checkpoints; the store tools/dump_teacher_logits.py makes of the teacher; the
    teacher's whole-document targets computed in-process, and the KD loss of step 1 computed
    in-process from them (student = init, the first global batch)."""
    from megakd.convert.convert import load_checkpoint_model, single_process
    from megakd.data.gpt import BatchStream, build_datasets
    from megakd.data.indexed import open_indexed
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.losses import SparseTarget, distill_loss

    work = tmp_path_factory.mktemp("offline")
    init, teacher = work / "init", work / "teacher"
    run_job(tiny_args(tiny_corpus, work, **{"train.iters": 0, "checkpoint.save": init}))
    run_job(tiny_args(tiny_corpus, work, **{"train.iters": 3, "checkpoint.save": teacher,
                                            "checkpoint.pretrained": init}))
    tok_dir, prefix = tiny_corpus
    store = str(work / "store")
    run_job(["--teacher", teacher, "--tokenizer", tok_dir, "--data-prefix", prefix, "--output", store,
             "--top-p", TOP_P, "--top-k", TOP_K, "--temperature", T, "--no-progress"], script=DUMP)
    with single_process():
        model, _ = load_checkpoint_model(str(teacher))
        rows = _whole_document_targets(model.eval(), open_indexed(prefix))
        cfg = _cfg(tiny_corpus, work)
        train, _ = build_datasets(cfg, MegatronTokenizer(load_tokenizer(tok_dir)), 64, 0)
        batch = next(iter(BatchStream(train, 8, 0, 1, keys=True)))  # step 1's global batch
        student, _ = load_checkpoint_model(str(init))
        with torch.no_grad():
            logits = student.eval()(batch["tokens"], batch["position_ids"], None)
        ids = torch.from_numpy(numpy.stack([rows[int(d)][0][int(o)] for d, o in
                                            zip(batch["doc"].flatten(), batch["offset"].flatten())]))
        lps = torch.from_numpy(numpy.stack([rows[int(d)][1][int(o)] for d, o in
                                            zip(batch["doc"].flatten(), batch["offset"].flatten())]))
        target = SparseTarget(ids.view(8, -1, TOP_K), lps.view(8, -1, TOP_K))
        mask = batch["loss_mask"]
        kd = (distill_loss(logits, target, kind="fkl", temperature=T, loss_mask=mask) * mask).sum()
        lm = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
        lm = (lm * mask.flatten()).sum()
    return {"init": init, "rows": rows, "store": store, "kd1": (kd / mask.sum()).item(),
            "lm1": (lm / mask.sum()).item()}


def _run(corpus, work, nproc=1, **overrides):
    run_job(tiny_args(corpus, work, **overrides), nproc=nproc)
    return read_metrics(work / "metrics.jsonl")


def test_sample_keys_reproduce_the_tokens(tiny_corpus, tmp_path):
    """Every input token's (source, doc, offset) reads that token from the indexed dataset (a blend;
    samples span documents)."""
    from conftest import synthetic_texts
    from megakd.convert.convert import single_process
    from megakd.data.gpt import BatchStream, build_datasets
    from megakd.data.indexed import open_indexed, write_indexed
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer

    tok_dir, prefix = tiny_corpus
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    other = str(tmp_path / "other")
    write_indexed(other, (tok.tokenize(t) + [tok.eod] for t in synthetic_texts(100, seed=1)),
                  tok.vocab_size)
    cfg = _cfg(tiny_corpus, tmp_path, **{"data.prefix": f"[0.5, {prefix}, 0.5, {other}]"})
    datasets = [open_indexed(p) for p in (prefix, other)]  # alive while their memmaps are read
    docs = [[x.get(d) for d in range(len(x))] for x in datasets]
    flat = [torch.as_tensor(numpy.concatenate(d).astype(numpy.int64)) for d in docs]
    starts = [torch.as_tensor(numpy.cumsum([0] + [len(x) for x in d])) for d in docs]
    with single_process():
        train, _ = build_datasets(cfg, tok, 96, 0)
        batch = next(iter(BatchStream(train, 96, 0, 1, keys=True)))
    src, doc, off = batch["source"], batch["doc"], batch["offset"]
    assert set(src.unique().tolist()) == {0, 1} and (doc >= 0).all()
    assert (doc[:, 1:] != doc[:, :-1]).any(), "some samples should span documents"
    for s in (0, 1):
        sel = src == s
        assert torch.equal(flat[s][starts[s][doc[sel]] + off[sel]], batch["tokens"][sel])


def test_layouts_read_the_same_per_token_targets(setup, tiny_corpus, tmp_path):
    """Other micro-batch size / sequence length / DP rank: every token gets its document's row."""
    from megakd.convert.convert import single_process
    from megakd.data.gpt import BatchStream, build_datasets
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.teacher.base import TeacherContext
    from megakd.teacher.offline import OfflineTeacher

    tok = MegatronTokenizer(load_tokenizer(tiny_corpus[0]))
    rows = setup["rows"]
    for mbs, seq, dp_rank, dp_size in [(2, 32, 0, 1), (3, 48, 1, 2)]:
        cfg = _cfg(tiny_corpus, tmp_path, **KD, **{"kd.store": setup["store"], "train.seq_length": seq})
        teacher = OfflineTeacher(TeacherContext.of(cfg, tok))
        with single_process():
            train, _ = build_datasets(cfg, tok, 64, 0)
        stream = teacher.batches(iter(BatchStream(train, mbs, dp_rank, dp_size, keys=True)))
        worst = 0.0
        for _ in range(3):
            batch = next(stream)
            target = teacher.targets(batch)
            assert target.ids.shape == (mbs, seq, TOP_K)
            for d, o, ids, lp in zip(batch["doc"].flatten(), batch["offset"].flatten(),
                                     target.ids.reshape(-1, TOP_K), target.logprobs.reshape(-1, TOP_K)):
                want_ids, want_lp = (torch.from_numpy(r[int(o)]) for r in rows[int(d)])
                got, want = lp > -numpy.inf, want_lp > -numpy.inf
                assert torch.equal(ids[got].sort().values, want_ids[want].sort().values)
                p = torch.zeros(1024).index_put_((ids[got],), lp[got].exp())
                q = torch.zeros(1024).index_put_((want_ids[want],), want_lp[want].exp())
                worst = max(worst, (p - q).abs().max().item())
        assert worst < 1e-2, worst  # the store quantises probabilities (KL <= 1e-3 per token)
        assert teacher.metrics()["lookup time"] > 0


def test_one_step_from_the_store_equals_in_process_targets_at_tp1_tp2(setup, tiny_corpus, tmp_path):
    args = {**KD, "kd.store": setup["store"], "checkpoint.pretrained": setup["init"],
            "train.iters": len(STEPS)}
    ref = _run(tiny_corpus, tmp_path / "ref", **args)
    assert ref[1]["kd loss"] == pytest.approx(setup["kd1"], rel=1e-3)  # stored probabilities are quantised
    assert ref[1]["kd loss"] > 1e-3 and "lookup time" in ref[1]
    assert ref[1]["lm loss"] == pytest.approx(setup["lm1"], rel=1e-5)  # from the fused LM + KD pass
    for name, layout in {"tp2": {"parallel.tp": 2}, "pp2": {"parallel.pp": 2},
                         "dp2_mbs1": {"train.micro_batch_size": 1}}.items():
        got = _run(tiny_corpus, tmp_path / name, nproc=2, **args, **layout)
        assert got[1]["lookup time"] > 0, name  # at PP2 too: the last stage looks up, rank 0 logs
        for key in ("kd loss", "lm loss", "loss", "grad norm"):
            assert [got[i][key] for i in STEPS] == pytest.approx(
                [ref[i][key] for i in STEPS], rel=5e-4), (name, key)


def test_store_mismatches_are_one_line_errors(setup, tiny_corpus, tmp_path):
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.teacher.base import TeacherContext
    from megakd.teacher.offline import OfflineTeacher

    tok_dir, prefix = tiny_corpus
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    rows = setup["rows"]
    from megakd.data.indexed import open_indexed, write_indexed

    other, ix = tmp_path / "other", open_indexed(prefix)  # the same documents and one more
    write_indexed(str(other), [ix.get(d).tolist() for d in range(len(ix))] + [ix.get(0).tolist()], 256)
    stores = {"dataset": _write(tmp_path / "s_data", str(other), {**rows, len(ix): rows[0]}, tok_dir),
              "tokenizer": _write(tmp_path / "s_tok", prefix, rows, tok_dir,
                                  vocab_fingerprint="0123456789abcdef")}
    cases = [("dataset", {}, MegakdError, "dataset"),
             ("tokenizer", {}, ConfigError, "0123456789abcdef"),
             (None, {"kd.temperature": 1.0}, ConfigError, "kd.temperature=1.0"),
             (None, {"kd.top_k": 50}, ConfigError, "kd.top_k=50 keep more"),
             (None, {"kd.top_p": 1.0}, ConfigError, "kd.top_p=1.0")]
    for store, overrides, error, message in cases:
        cfg = _cfg(tiny_corpus, tmp_path, **{**KD, "kd.store": stores.get(store, setup["store"]),
                                             **overrides})
        with pytest.raises(error, match=message) as e:
            OfflineTeacher(TeacherContext.of(cfg, tok))
        assert "\n" not in str(e.value)
    tighter = OfflineTeacher(TeacherContext.of(
        _cfg(tiny_corpus, tmp_path, **{**KD, "kd.store": setup["store"], "kd.top_k": 5}), tok))
    assert tighter.retruncate
    with pytest.raises(ConfigError, match="one store directory per data.prefix"):
        _cfg(tiny_corpus, tmp_path, **{**KD, "kd.store": f"[{setup['store']}, {setup['store']}]"})
