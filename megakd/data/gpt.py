"""Training data: megatron-core GPTDataset (through BlendedMegatronDatasetBuilder) -> micro-batches.

Sample order is a pure function of (data, seed, seq_length): every rank can read the stream itself
(TP/PP ranks read the same micro-batches; DP rank r takes slice r of each step's global batch, like
Megatron-LM's MegatronPretrainingSampler), so DP=1 and DP=2 see the same global batches, and resuming
at `consumed_samples` continues the exact stream.
"""

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

from megakd.data.blend import parse_blend
from megakd.data.indexed import open_indexed
from megakd.errors import DataError


def dataset_config(cfg, tokenizer) -> GPTDatasetConfig:
    prefixes, weights = parse_blend(cfg.data.prefix)
    return GPTDatasetConfig(
        random_seed=cfg.train.seed,
        sequence_length=cfg.train.seq_length,
        blend=(prefixes, weights),
        split=cfg.data.split,
        path_to_cache=cfg.data.cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )


def build_datasets(cfg, tokenizer, num_train_samples: int, num_valid_samples: int):
    """(train, valid) GPTDatasets of a run's config `cfg` (its data.* and train.seed/seq_length: read,
    not imported, so the data floor stays below the config); rank 0 builds the index caches first, the others then load them.

    A split that is not wanted (0 samples) is not built at all (valid is None then): megatron-core
    would otherwise still index it, and loop forever if its share of documents rounds to none.
    """
    config = dataset_config(cfg, tokenizer)
    sizes = [num_train_samples, num_valid_samples, 0]
    config.split_matrix = [rng if n > 0 else None for rng, n in zip(config.split_matrix, sizes)]
    _check_splits(config, {"train": num_train_samples, "valid": num_valid_samples})
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return train, valid


def _check_splits(config: GPTDatasetConfig, wanted: dict) -> None:
    """Each needed split must own documents of every dataset: megatron-core loops forever on an
    empty one. Document ranges are computed exactly as BlendedMegatronDatasetBuilder does."""
    for prefix in config.blend[0]:
        n = len(open_indexed(prefix))  # also: one-line DataError for a missing/corrupt dataset
        for i, (name, samples) in enumerate(wanted.items()):
            beg, end = config.split_matrix[i] or (0.0, 0.0)
            if samples > 0 and int(round(end * n)) <= int(round(beg * n)):
                raise DataError(f"data.split={config.split!r} leaves the {name} split of {prefix} "
                                f"({n} documents) empty; give it a larger share (e.g. "
                                f"data.split=90,10,0) or set train.eval_interval=0")


def _memmapped_indices(ds) -> None:
    """megatron-core maps its index files lazily on first __getitem__ (when loaded from cache)."""
    if isinstance(ds, GPTDataset) and ds.shuffle_index is None:
        ds.shuffle_index = numpy.load(ds.path_to_shuffle_index, allow_pickle=True, mmap_mode="r")
        ds.sample_index = numpy.load(ds.path_to_sample_index, allow_pickle=True, mmap_mode="r")
        ds.document_index = numpy.load(ds.path_to_document_index, allow_pickle=True, mmap_mode="r")
    elif not isinstance(ds, GPTDataset) and ds.dataset_index is None:  # BlendedDataset
        ds.dataset_index = numpy.load(ds.path_to_dataset_index, allow_pickle=True, mmap_mode="r")
        ds.dataset_sample_index = numpy.load(ds.path_to_dataset_sample_index, allow_pickle=True,
                                             mmap_mode="r")


def sample_keys(dataset, index: int) -> Tuple[int, numpy.ndarray, numpy.ndarray]:
    """(source, doc ids [s], offsets [s]): where each input token of sample `index` sits in the
    indexed dataset. `source` is the blend member (0 without a blend); padding gets doc -1.

    Walks megatron-core's shuffle_index -> sample_index -> document_index exactly as
    `GPTDataset._query_document_sample_shuffle_indices` does (samples span documents), so the key of
    token i is the (document, offset) whose token it reads; the offline store is keyed the same way."""
    _memmapped_indices(dataset)
    source = 0
    if not isinstance(dataset, GPTDataset):
        source = int(dataset.dataset_index[index])
        index = int(dataset.dataset_sample_index[index])
        dataset = dataset.datasets[source]
        _memmapped_indices(dataset)
    seq, extra = dataset.config.sequence_length, int(dataset.config.add_extra_token_to_sequence)
    i = dataset.shuffle_index[index]
    (beg, beg_off), (end, end_off) = dataset.sample_index[i], dataset.sample_index[i + 1]
    docs, offsets = [], []
    for j in range(int(beg), int(end) + 1):
        doc = int(dataset.document_index[j])
        start = int(beg_off) if j == beg else 0
        stop = int(end_off) + extra if j == end else int(dataset.dataset.sequence_lengths[doc])
        docs.append(numpy.full(stop - start, doc, dtype=numpy.int64))
        offsets.append(numpy.arange(start, stop, dtype=numpy.int64))
    doc, offset = numpy.concatenate(docs)[:seq], numpy.concatenate(offsets)[:seq]
    pad = seq - len(doc)
    return (source, numpy.concatenate([doc, numpy.full(pad, -1, dtype=numpy.int64)]),
            numpy.concatenate([offset, numpy.zeros(pad, dtype=numpy.int64)]))


class _Keyed(torch.utils.data.Dataset):
    """A GPT/blended dataset whose samples also carry their tokens' keys (doc, offset, source)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        source, doc, offset = sample_keys(self.dataset, index)
        return {**self.dataset[index], "doc": doc, "offset": offset,
                "source": numpy.full(len(doc), source, dtype=numpy.int64)}


@dataclass
class BatchStream:
    """Micro-batches of one data-parallel rank, starting after `consumed_samples` global samples.

    keys=True adds `doc`, `offset`, `source` [b, s] (see `sample_keys`): what the offline teacher
    store is looked up with."""

    dataset: object
    micro_batch_size: int
    dp_rank: int
    dp_size: int
    consumed_samples: int = 0
    num_workers: int = 0
    keys: bool = False

    def __iter__(self) -> Iterator[dict]:
        step = self.micro_batch_size * self.dp_size
        start = self.consumed_samples + self.dp_rank * self.micro_batch_size

        def indices():
            i = start
            while True:
                yield [(i + j) % len(self.dataset) for j in range(self.micro_batch_size)]
                i += step

        loader = torch.utils.data.DataLoader(
            _Keyed(self.dataset) if self.keys else self.dataset, batch_sampler=indices(), num_workers=self.num_workers,
            persistent_workers=False, collate_fn=_collate)
        return iter(loader)


def _collate(samples: List[dict]) -> dict:
    keys = ("tokens", "labels", "loss_mask", "position_ids", "doc", "offset", "source")
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys if k in samples[0]}
