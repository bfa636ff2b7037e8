"""Dedicated teacher ranks: the teacher runs on its own processes at its own TP/PP, forward-only and
ahead of the students, and sends each student micro-batch's sparse top-k target over the bridge.

No tokens travel: both sides walk the same schedule (`megakd.schedule`) over the same GPTDataset, the teacher
reading each served student DP replica's BatchStream itself. Each message carries a sequence number
and a token checksum, so a desync is an error, not silent garbage. Every wait on the other role is
bounded by teacher.timeout_s and names the silent rank (docs/PLACEMENT.md).
"""

import datetime
import json
import statistics
import time
from collections import deque
from typing import Dict, Iterator, List

import torch
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megakd import platform, schedule
from megakd.config import Config, ParallelConfig
from megakd.data.gpt import BatchStream, build_datasets
from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
from megakd.errors import MegakdError
from megakd.losses.targets import UNUSED_ID, SparseTarget, truncate_teacher
from megakd.placements import teacher_groups
from megakd.platform import comm, faults
from megakd.teacher.base import TeacherContext, TeacherSource
from megakd.teacher.loading import load_teacher, teacher_path

_HEADER, _LOGPROBS = 1, 2  # message tags on the bridge
_PLAN_KEY = "megakd/dedicated/plan"


class TeacherError(MegakdError):
    """The other role of a dedicated-teacher job died, hung or sent the wrong targets."""


def token_checksum(tokens: torch.Tensor) -> int:
    """Position-weighted sum of a micro-batch's token ids (order matters, exact in int64)."""
    flat = tokens.reshape(-1).to(torch.int64).cpu()
    return int((flat * (torch.arange(flat.numel()) % 1021 + 1)).sum())


def _wait(work, timeout: datetime.timedelta, peer: int, what: str):
    try:
        work.wait(timeout)
    except RuntimeError as e:
        setting = "teacher.timeout_s" if what == "teacher" else "parallel.timeout_minutes"
        raise TeacherError(f"{what} global rank {peer} failed or sent nothing for "
                           f"{timeout.total_seconds():.0f} s ({setting}): it died or hung "
                           f"({str(e).splitlines()[0].split('] ')[-1][:120]})") from None


def _get(store, key: str, who: str) -> str:
    """A start-up record of the other role; waits up to parallel.timeout_minutes (the store's), as
    start-up (loading, dataset indexing) can take far longer than one step."""
    try:
        return store.get(key).decode()
    except Exception:
        raise TeacherError(f"no start-up record {key!r} from the {who} within "
                           f"parallel.timeout_minutes; a {who} rank failed during start-up") from None


class DedicatedTeacher(TeacherSource):
    """Student side: receives each micro-batch's SparseTarget from its teacher group's sender rank,
    with receives posted teacher.prefetch steps ahead."""

    def __init__(self, ctx: TeacherContext):
        self.ctx, self.split = ctx, platform.roles.current()
        self.timeout = datetime.timedelta(seconds=ctx.teacher.timeout_s)
        self.receives = ctx.last_stage
        self.shape = (ctx.train.micro_batch_size, ctx.train.seq_length, ctx.kd.top_k)
        self.ahead = ctx.teacher.prefetch * ctx.num_microbatches
        self.pending = deque()  # posted receives: (header, logprobs, works)
        self.posted = self.received = 0
        self.total = 0
        self.wait_s = 0.0
        self.device = ctx.device
        self.source = -1
        self.dp_rank = ctx.dp_rank
        if self.receives:
            self.split.store.set(f"megakd/dedicated/dest/{ctx.dp_rank}/"
                                 f"{ps.get_tensor_model_parallel_rank()}", str(self.split.global_rank))

    def start(self, iteration: int, consumed_samples: int):
        """After the student's datasets exist: tell the teacher where the run starts, then post the
        first receives."""
        ctx = self.ctx
        if ctx.rank == 0:
            self.split.store.set(_PLAN_KEY, json.dumps(
                {"iteration": iteration, "consumed_samples": consumed_samples,
                 "dp": ctx.dp_size, "num_microbatches": ctx.num_microbatches}))
        per_phase = {"train": ctx.num_microbatches,
                     "valid": ctx.num_microbatches * ctx.train.eval_iters}
        self.total = sum(per_phase[p] for p, _ in schedule.phases(ctx.train, iteration))
        if self.receives:
            group = ctx.dp_rank % teacher_groups(ctx.teacher)
            self.source = int(_get(self.split.store, f"megakd/dedicated/sender/{group}", "teacher"))
            self._post()

    def _post(self):
        while self.posted < min(self.received + self.ahead, self.total):
            header = torch.empty(2 + self.shape[0] * self.shape[1] * self.shape[2], dtype=torch.int64)
            logprobs = torch.empty(self.shape, dtype=torch.float32)
            works = [comm.irecv(header, self.source, _HEADER, self.split.bridge),
                     comm.irecv(logprobs, self.source, _LOGPROBS, self.split.bridge)]
            self.pending.append((header, logprobs, works))
            self.posted += 1

    def targets(self, batch: dict) -> SparseTarget:
        if not self.pending:
            raise TeacherError(f"the student asked for more targets than its schedule has "
                               f"({self.total}); the teacher and student schedules disagree")
        header, logprobs, works = self.pending.popleft()
        start = time.perf_counter()
        for w in works:
            _wait(w, self.timeout, self.source, "teacher")
        self.wait_s += time.perf_counter() - start
        seq, checksum = int(header[0]), int(header[1])
        if seq != self.received or checksum != token_checksum(batch["tokens"]):
            raise TeacherError(f"target {seq} (token checksum {checksum}) from teacher rank "
                               f"{self.source} does not match the student's micro-batch "
                               f"{self.received}; teacher and student read different data "
                               f"(same data.*, train.* and resume point on both?)")
        self.received += 1
        self._post()
        ids = header[2:].view(self.shape)
        return SparseTarget(ids.to(self.device), logprobs.to(self.device))

    def metrics(self) -> Dict[str, float]:
        """teacher wait: seconds the slowest receiving rank waited this step; teacher queue: targets
        the teacher has computed and sent beyond what the student consumed (fewest over replicas;
        0 = the teacher is not ahead, the student waits for it)."""
        queue = float("inf")
        if self.receives:  # a counter the teacher adds to (gloo cannot tell an arrived receive)
            queue = self.split.store.add(_sent_key(self.dp_rank), 0) - self.received
        both = torch.tensor([self.wait_s, -queue], dtype=torch.float64)
        comm.all_reduce(both, comm.MAX)
        self.wait_s = 0.0
        return {"teacher wait": float(both[0]), "teacher queue": 0.0 - float(both[1])}


class TeacherServer:
    """Teacher side: one teacher replica per group of teacher.tp*teacher.pp ranks serves the student
    DP replicas r with r mod groups == its group, one student step of micro-batches at a time."""

    def __init__(self, cfg: Config, split):
        t = cfg.teacher
        self.cfg, self.split = cfg, split
        self.spec = cfg.kd.spec()
        self.env = platform.init_model_parallel(t.tp, t.pp, cfg.train.seed, cfg.parallel.timeout_minutes)
        self.tokenizer = MegatronTokenizer(load_tokenizer(cfg.data.tokenizer))
        # load_teacher refuses a layout that does not split the teacher and another tokenizer
        self.model = load_teacher(teacher_path(t), ParallelConfig(tp=t.tp, pp=t.pp), self.tokenizer,
                                  cfg.data.tokenizer, runtime=cfg.teacher_runtime())
        self.group = ps.get_data_parallel_rank()
        self.sender = ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
        if self.sender:
            split.store.set(f"megakd/dedicated/sender/{self.group}", str(split.global_rank))
        self.plan = json.loads(_get(split.store, _PLAN_KEY, "student"))
        groups = teacher_groups(cfg.teacher)
        self.replicas = [r for r in range(self.plan["dp"]) if r % groups == self.group]
        self.dests = {}
        if self.sender:
            self.dests = {r: [int(_get(split.store, f"megakd/dedicated/dest/{r}/{tp}", "student"))
                              for tp in range(cfg.parallel.tp)] for r in self.replicas}
        self.train_ds, self.valid_ds = build_datasets(cfg, self.tokenizer,
                                                      *schedule.sample_counts(cfg.train))
        self.pending = deque()  # (student rank, works, tensors kept alive until sent)
        # Students may pause far longer than a step (checkpoint save, evaluation): waiting on them is
        # bounded by the collective timeout, which a hung student also hits among the students.
        self.student_timeout = datetime.timedelta(minutes=cfg.parallel.timeout_minutes)
        self.seq = {r: 0 for r in self.replicas}

    def _stream(self, dataset, replica: int, consumed: int) -> Iterator[dict]:
        return iter(BatchStream(dataset, self.cfg.train.micro_batch_size, replica, self.plan["dp"],
                                consumed, self.cfg.data.num_workers))

    def serve(self) -> None:
        """Compute and send every target of the students' schedule, then wait for the last sends."""
        tr, nmb = self.cfg.train, self.plan["num_microbatches"]
        train = {r: self._stream(self.train_ds, r, self.plan["consumed_samples"])
                 for r in self.replicas}
        forward_s, drain_s = [], 0.0  # forward time of each training step; time waiting on students
        for n, (phase, index) in enumerate(schedule.phases(tr, self.plan["iteration"])):
            if phase == "train":
                streams, count = train, nmb
            else:
                start = schedule.valid_start(tr, index)
                streams = {r: self._stream(self.valid_ds, r, start) for r in self.replicas}
                count = nmb * tr.eval_iters
            batches = [(r, next(streams[r])) for _ in range(count) for r in self.replicas]
            start = time.perf_counter()
            targets = self._forward([b for _, b in batches])
            if phase == "train":
                forward_s.append(time.perf_counter() - start)
            if n == 1:
                faults.teacher_step(self.split.global_rank)
            if self.sender:
                for (r, batch), target in zip(batches, targets):
                    self._send(r, batch, target)
                for r in self.replicas:
                    self.split.store.add(_sent_key(r), count)
                start = time.perf_counter()
                self._drain()
                drain_s += time.perf_counter() - start
        if self.sender and forward_s:  # is the teacher the bottleneck (forward) or the students (wait)?
            print(f"[teacher] group {self.group}: {len(forward_s)} steps, forward "
                  f"{statistics.median(forward_s):.4f} s/step (median), waited for students "
                  f"{drain_s / len(forward_s):.4f} s/step (mean)", flush=True)

    @torch.no_grad()
    def _forward(self, batches: List[dict]) -> List[SparseTarget]:
        """Forward-only over the teacher's pipeline (megatron-core's schedule); the last stage
        truncates each micro-batch's logits to top-k as it comes out."""
        tr = self.cfg.train
        return get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=iter(batches), model=[self.model],
            num_microbatches=len(batches), seq_length=tr.seq_length,
            micro_batch_size=tr.micro_batch_size, forward_only=True, collect_non_loss_data=True)

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"].to(self.env.device), batch["position_ids"].to(self.env.device),
                       None)
        return output, self._truncate

    def _truncate(self, logits: torch.Tensor, non_loss_data: bool = True) -> SparseTarget:
        target = truncate_teacher(logits, self.spec, tp_group=ps.get_tensor_model_parallel_group())
        pad = self.spec.top_k - target.k  # a vocabulary smaller than top_k: fill with unused slots
        ids = torch.nn.functional.pad(target.ids, (0, pad), value=UNUSED_ID)
        logprobs = torch.nn.functional.pad(target.logprobs.float(), (0, pad), value=float("-inf"))
        return SparseTarget(ids.cpu(), logprobs.cpu())

    def _send(self, replica: int, batch: dict, target: SparseTarget):
        header = torch.cat([torch.tensor([self.seq[replica], token_checksum(batch["tokens"])]),
                            target.ids.reshape(-1).to(torch.int64)])
        logprobs = target.logprobs.contiguous()
        for dest in self.dests[replica]:
            works = [comm.isend(header, dest, _HEADER, self.split.bridge),
                     comm.isend(logprobs, dest, _LOGPROBS, self.split.bridge)]
            self.pending.append((dest, works, (header, logprobs)))
        self.seq[replica] += 1

    def _drain(self):
        """Wait until the students took this step's targets. A send completes once its receive is
        posted, and students post theirs teacher.prefetch steps ahead: that bounds the teacher's
        lead (and the memory the targets hold) to prefetch steps plus the one being computed."""
        while self.pending:
            dest, works, _ = self.pending.popleft()
            for w in works:
                _wait(w, self.student_timeout, dest, "student")


def _sent_key(replica: int) -> str:
    return f"megakd/dedicated/sent/{replica}"
