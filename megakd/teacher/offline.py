"""Offline teacher: sparse targets read from teacher-logits stores (tools/dump_teacher_logits.py).

The stores are keyed by (document id, token offset) in the indexed dataset, so every batch carries
its tokens' keys (`BatchStream(keys=True)`) and any TP/PP/DP layout, batch size, sequence length or
blend reads the same per-token targets. There is no teacher model, so PP > 1 works. Only the last
pipeline stage looks targets up; it does so one micro-batch ahead on a thread, overlapping compute.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List

import numpy
import torch
from megatron.core import parallel_state as ps

from megakd.data.blend import parse_blend
from megakd.data.tokenizer import vocab_fingerprint
from megakd.errors import ConfigError
from megakd.losses.targets import SparseTarget, keep_top
from megakd.platform import comm
from megakd.teacher.base import TeacherContext, TeacherSource


def store_dirs(kd) -> List[str]:
    return [kd.store] if isinstance(kd.store, str) else list(kd.store)


def check_store(store, directory: str, spec, tokenizer, tokenizer_path: str) -> bool:
    """Refuse a store the run cannot use; True when the spec (kd.*) asks for a tighter truncation
    than stored.

    The store was truncated (temperature, top-p, top-k) at dump time: another temperature or a looser
    truncation cannot be recovered from it; a tighter one can (re-truncating the stored rows)."""
    meta = store.meta
    mine = vocab_fingerprint(tokenizer.hf_tokenizer)
    if meta.vocab_fingerprint != mine:
        raise ConfigError(f"store {directory} was dumped with tokenizer {meta.tokenizer or '?'} (vocab "
                          f"fingerprint {meta.vocab_fingerprint}), the student uses {tokenizer_path} "
                          f"({mine}); dump it again with a teacher that shares the student's tokenizer")
    if spec.temperature != meta.temperature:
        raise ConfigError(f"kd.temperature={spec.temperature} but store {directory} holds targets at "
                          f"temperature {meta.temperature}; set kd.temperature={meta.temperature} or "
                          f"dump the store again with --temperature {spec.temperature}")
    stored_k = meta.top_k or 0
    if spec.top_p > meta.top_p or (stored_k and not 0 < spec.top_k <= stored_k):
        raise ConfigError(f"kd.top_p={spec.top_p}, kd.top_k={spec.top_k} keep more than store {directory} "
                          f"holds (top_p {meta.top_p}, top_k {stored_k}); set kd.top_p<={meta.top_p} "
                          f"and 0<kd.top_k<={stored_k}, or dump again with a looser truncation")
    return spec.top_p < meta.top_p or (spec.top_k > 0 and (not stored_k or spec.top_k < stored_k))


class OfflineTeacher(TeacherSource):
    """kd.source=offline: per micro-batch, the stored sparse targets of exactly its tokens."""

    needs_keys = True

    def __init__(self, ctx: TeacherContext):
        from megakd.data.logits_store import open_store

        self.spec = ctx.spec
        prefixes = parse_blend(ctx.data.prefix)[0]
        self.stores, retruncate = [], False
        for directory, prefix in zip(store_dirs(ctx.kd), prefixes):
            store = open_store(directory, prefix)  # StoreError when it is not this dataset's
            retruncate |= check_store(store, directory, self.spec, ctx.tokenizer, ctx.data.tokenizer)
            self.stores.append(store)
        self.retruncate = retruncate
        self.k = max(s.meta.top_k for s in self.stores)
        self.last_stage = ctx.last_stage
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-lookup")
        self.lookup_time = self.wait_time = 0.0

    def batches(self, stream: Iterator[dict]) -> Iterator[dict]:
        """The stream, each batch with its `target` lookup already submitted, one batch ahead."""
        if not self.last_stage:
            yield from stream
            return
        batch = next(stream)
        batch["target"] = self.pool.submit(self._lookup, batch)
        for following in stream:
            following["target"] = self.pool.submit(self._lookup, following)
            yield batch
            batch = following

    def _lookup(self, batch: dict) -> SparseTarget:
        start = time.perf_counter()
        doc, offset, source = (batch[k].numpy().reshape(-1) for k in ("doc", "offset", "source"))
        ids = numpy.zeros((doc.size, self.k), dtype=numpy.int64)
        logprobs = numpy.full((doc.size, self.k), -numpy.inf, dtype=numpy.float32)
        for i, store in enumerate(self.stores):
            rows = numpy.flatnonzero((source == i) & (doc >= 0))  # doc -1: padding, loss-masked
            if rows.size:
                got_ids, got_lp = store.lookup(doc[rows], offset[rows])
                ids[rows, :got_ids.shape[1]], logprobs[rows, :got_lp.shape[1]] = got_ids, got_lp
        shape = (*batch["doc"].shape, self.k)
        target = SparseTarget(torch.from_numpy(ids).view(shape), torch.from_numpy(logprobs).view(shape))
        if self.retruncate:
            target = keep_top(target, self.spec)
        self.lookup_time += time.perf_counter() - start
        return target

    def targets(self, batch: dict) -> SparseTarget:
        start = time.perf_counter()
        target = batch["target"].result()
        self.wait_time += time.perf_counter() - start
        device = batch["tokens"].device
        return SparseTarget(target.ids.to(device), target.logprobs.to(device))

    def metrics(self) -> Dict[str, float]:
        """Seconds per step spent looking targets up (on the thread) and waiting for them; at PP > 1
        the last stage's figures (it alone looks up), so that the logging rank shows them."""
        times = torch.tensor([self.lookup_time, self.wait_time], dtype=torch.float64)
        self.lookup_time = self.wait_time = 0.0
        if ps.model_parallel_is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
            comm.all_reduce(times, comm.MAX, group=ps.get_pipeline_model_parallel_group())
        return {"lookup time": times[0].item(), "lookup wait": times[1].item()}
