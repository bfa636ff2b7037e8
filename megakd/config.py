"""Typed run configuration: dataclasses loaded from YAML plus dotted CLI overrides, validated once.

    cfg = load_config("configs/tiny_cpu.yaml", ["train.iters=20", "parallel.tp=2"])

Every key a user can set is a dataclass field below (the single source of truth for names, types,
defaults and docs). An unknown key or a value of the wrong type is a one-line `ConfigError` naming the
key; cross-field rules (TP divides the heads, batch sizes divide) are checked in `Config.validate`.
"""

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Literal, NamedTuple, Optional, Union

import yaml

from megakd import placements
from megakd.data.blend import parse_blend
from megakd.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
TransformerImpl = Literal["auto", "local", "transformer_engine"]

if TYPE_CHECKING:
    from megakd.losses.spec import TargetSpec


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size (megatron-core tensor_model_parallel_size)."""
    pp: int = 1
    """Pipeline-parallel size; 1F1B schedule when > 1."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tp > 1)."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (megatron-core DistributedOptimizer)."""
    timeout_minutes: float = 10.0
    """Collective timeout: a dead or hung rank stops the job after this long instead of hanging."""


@dataclass
class ModelConfig:
    arch: Literal["llama", "gpt2"] = "llama"
    """llama: RMSNorm, SwiGLU, RoPE, no biases. gpt2: LayerNorm, GELU, learned positions, biases."""
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: Optional[int] = None
    """Default: 4*hidden (gpt2) or the Llama rule 8/3*hidden rounded up to a multiple of 64."""
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None
    """Grouped-query attention: number of KV heads (None = multi-head attention)."""
    vocab_size: Optional[int] = None
    """Default: the tokenizer's vocabulary size (padded up to make_vocab_size_divisible_by * tp)."""
    make_vocab_size_divisible_by: int = 128
    max_position_embeddings: Optional[int] = None
    """Default: train.seq_length."""
    rotary_base: float = 10000.0
    tie_embeddings: bool = True
    qkv_bias: Optional[bool] = None
    """Bias on the fused QKV projection (Qwen2: true with no other linear bias). Default: the arch's
    (llama: no biases, gpt2: every linear has one)."""
    norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    precision: Precision = "fp32"
    """Parameters and activations of the student (and, by default, of its teacher)."""
    fp8: bool = False
    """FP8 for the transformer layers' linear GEMMs (QKV, attention projection, MLP) through
    Transformer Engine, as megatron-core does it (fp8="hybrid": E4M3 forward, E5M2 gradients; delayed
    scaling). Embeddings, norms, attention, the output layer and the losses keep model.precision /
    fp32, and teachers never run in FP8. Needs model.precision bf16 or fp16, a TE layer spec
    (transformer_impl auto or transformer_engine) and Transformer Engine on a GPU of compute
    capability >= 8.9."""
    transformer_impl: TransformerImpl = "auto"
    """auto: Transformer Engine spec when TE and CUDA are present, megatron-core local spec otherwise."""
    init_from_hf: Optional[str] = None
    """Start from a Hugging Face model (local directory or .gguf file): its architecture replaces the
    model.* shape keys and its weights are converted once (cached under $MEGAKD_CACHE) and loaded."""

    def check_fp8(self) -> None:
        """model.fp8's rules that need no GPU (the platform is checked when the model is built):
        without them the model would train without FP8, or not at all."""
        if not self.fp8:
            return
        if self.precision == "fp32":
            raise ConfigError("model.fp8 needs model.precision=bf16 or fp16 (FP8 GEMMs run inside a "
                              "half-precision model); set model.precision=bf16 or model.fp8=false")
        if self.transformer_impl == "local":
            raise ConfigError("model.fp8 runs Transformer Engine's FP8 linears, which "
                              "model.transformer_impl=local does not have; set it to auto or "
                              "transformer_engine, or set model.fp8=false")


class Runtime(NamedTuple):
    """How a saved model runs, whatever it was saved as: a teacher as Config.teacher_runtime says,
    conversion at the local spec (it runs on CPU). Frozen models only run forward: no dropout, and
    never FP8 (it speeds up the student's training; a teacher in FP8 would round every target)."""

    precision: Precision = "fp32"
    transformer_impl: TransformerImpl = "auto"

    def apply(self, m: ModelConfig) -> ModelConfig:
        return dataclasses.replace(m, precision=self.precision, transformer_impl=self.transformer_impl,
                                   fp8=False, hidden_dropout=0.0, attention_dropout=0.0)


@dataclass
class DataConfig:
    prefix: Union[str, List[Union[str, float]], None] = None
    """Indexed dataset prefix, or a blend: [w1, prefix1, w2, prefix2, ...] or [prefix1, prefix2]."""
    tokenizer: Optional[str] = None
    """Local Hugging Face tokenizer directory (gives vocab size and the end-of-document id)."""
    split: str = "98,1,1"
    """train,valid,test weights over documents, as in Megatron."""
    cache_dir: Optional[str] = None
    """Where megatron-core caches sample indices (default: beside the data)."""
    num_workers: int = 0


@dataclass
class TrainConfig:
    iters: int = 20
    micro_batch_size: int = 2
    global_batch_size: int = 4
    seq_length: int = 64
    seed: int = 1234
    eval_interval: int = 0
    """Run validation every N iterations (0 = never)."""
    eval_iters: int = 2
    exit_interval: int = 0
    """Stop (after saving) once the iteration is a multiple of this; 0 = run to train.iters."""


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    """adam is AdamW (decoupled weight decay), as in megatron-core."""
    lr: float = 1e-3
    min_lr: float = 1e-4
    lr_schedule: Literal["constant", "linear", "cosine", "wsd"] = "cosine"
    warmup_iters: int = 0
    decay_iters: Optional[int] = None
    """Iterations over which the LR decays (default: train.iters)."""
    wsd_decay_iters: Optional[int] = None
    """WSD only: length of the final decay phase (default: 20 % of decay_iters)."""
    wsd_decay_style: Literal["linear", "cosine", "exponential", "minus_sqrt"] = "linear"
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0
    initial_loss_scale: float = 2.0 ** 32
    """fp16 only: the dynamic loss scaler's first scale (Megatron-LM's --initial-loss-scale); it
    halves on every step whose gradients overflow, and such a step is skipped."""
    loss_scale: Optional[float] = None
    """fp16 only: a static loss scale instead of the dynamic one."""


@dataclass
class CheckpointConfig:
    save: Optional[str] = None
    """Directory for distributed checkpoints (iter_XXXXXXX/ + latest_checkpointed_iteration.txt)."""
    load: Optional[str] = None
    """Resume from this directory's latest complete checkpoint (model, optimizer, schedule, data, RNG)."""
    interval: int = 0
    """Save every N iterations (0 = only at the end)."""
    pretrained: Optional[str] = None
    """Initialise model weights only from this checkpoint (any TP/PP) and start at iteration 0."""
    async_save: bool = False


@dataclass
class TeacherConfig:
    checkpoint: Optional[str] = None
    """Teacher weights: a megakd dist checkpoint (trained or converted; any saved TP/PP)."""
    hf_path: Optional[str] = None
    """Or a local Hugging Face model directory / .gguf file (converted once, cached in $MEGAKD_CACHE)."""
    placement: Literal[placements.ONLINE] = "colocated"
    """colocated: every student rank runs its slice of the teacher at the student's TP and PP (the
    teacher's layers split over the pipeline stages, its hidden states sent with the student's).
    dedicated: the last teacher.ranks processes of the job run the teacher at its own TP/PP, ahead of
    the students, and send them sparse top-k targets (needs kd.top_k; docs/PLACEMENT.md)."""
    ranks: int = 0
    """dedicated: how many of the job's processes are teacher ranks (a multiple of tp*pp); the
    students are the rest (world size = student ranks + teacher.ranks)."""
    tp: int = 1
    """dedicated: the teacher's tensor-parallel size (independent of parallel.tp)."""
    pp: int = 1
    """dedicated: the teacher's pipeline-parallel size (independent of parallel.pp)."""
    sharing: Literal["round_robin", "per_replica"] = "round_robin"
    """dedicated: teacher groups (teacher.ranks / (tp*pp)) serve student data-parallel replicas
    round-robin (replica r -> group r mod groups); per_replica requires one group per replica."""
    prefetch: int = 2
    """dedicated: how many student steps of targets the teacher may compute ahead of the students."""
    timeout_s: float = 120.0
    """dedicated: students waiting this long for a target stop the job, naming the teacher rank
    (the teacher's wait on students is bounded by parallel.timeout_minutes)."""
    precision: Optional[Precision] = None
    """What the teacher runs in (null: model.precision), whatever its checkpoint was saved in; for
    every placement and MiniLLM (the offline dump: its --precision). The losses compute in fp32."""
    transformer_impl: Optional[TransformerImpl] = None
    """The teacher's layer spec (null: model.transformer_impl), converted HF teachers included.
    Teachers never run in FP8 (model.fp8 is the student's)."""


@dataclass
class KDConfig:
    source: Literal["none", "online", "offline"] = "none"
    """none: LM loss only. online: teacher logits computed during training (see teacher.*).
    offline: sparse teacher targets read from kd.store (tools/dump_teacher_logits.py)."""
    store: Union[str, List[str], None] = None
    """kd.source=offline: the teacher-logits store directory, or a list of them, one per data.prefix
    blend member (in blend order). temperature/top_p/top_k must not be looser than the store's."""
    kind: str = "fkl"
    """Divergence: a name in megakd.losses.KINDS (losses/terms.py), e.g. fkl, rkl, jsd, tvd, nll."""
    kind_args: Dict[str, float] = field(default_factory=dict)
    """The kind's own settings, e.g. {skew: 0.1} (sfkl, srkl) or {beta: 0.5} (jsd); empty = its
    defaults (megakd/losses/terms.py)."""
    temperature: float = 1.0
    """Both distributions at temperature T; no T^2 factor (megakd/losses/distill.py)."""
    top_p: float = 1.0
    """Teacher truncation (PD paper: 0.95), applied after temperature, before top_k."""
    top_k: int = 0
    """Keep at most this many teacher tokens per position (0 = all; PD paper: 50-100)."""
    alpha: float = 0.9
    """KD weight: loss = (1-alpha)*LM + alpha*KD; the peak value for linear/wsd schedules."""
    alpha_schedule: Literal["constant", "linear", "wsd"] = "constant"
    alpha_warmup: float = 0.1
    """wsd: fraction of train.iters over which alpha rises from 0 to kd.alpha."""
    alpha_decay: float = 0.1
    """wsd: final fraction of train.iters over which alpha decays to 0."""

    def spec(self) -> "TargetSpec":
        """The KD target these settings describe (kind, kind_args, temperature, top_p, top_k), as one
        frozen TargetSpec; building it validates them (one-line ConfigError naming the key)."""
        # imported here so that megakd.config loads without torch (the launcher, the docs generator)
        from megakd.losses.spec import TargetSpec

        return TargetSpec(self.kind, self.kind_args, self.temperature, self.top_p, self.top_k)


@dataclass
class MiniLLMConfig:
    """Instruction tuning / distillation on prompt-response data (examples/train_minillm.py)."""

    method: Literal["none", "sft", "kd", "seqkd", "minillm"] = "none"
    """none: not an instruction run. sft: fine-tune on the responses. kd: (1-kd.alpha)*LM +
    kd.alpha*KD(kd.kind) on the responses. seqkd: sft on the teacher's greedy answers to the training
    prompts. minillm: reverse KL by policy gradient on the student's own samples."""
    train_data: Optional[str] = None
    """jsonl (prompt, response[, system]) or a prefix from tools/preprocess_sft.py."""
    valid_data: Optional[str] = None
    """Held-out prompt/response pairs for evaluation (reverse KL, Rouge-L); optional."""
    max_new_tokens: int = 64
    """Longest sampled response (rollouts, SeqKD answers, evaluation)."""
    temperature: float = 1.0
    """Rollout sampling temperature (the importance weights account for it)."""
    top_p: float = 1.0
    """Rollout nucleus sampling (applied to the teacher-mixed distribution)."""
    teacher_mix: float = 0.2
    """Sample rollouts from a*p_teacher + (1-a)*q_student with per-token importance weights (0 = off)."""
    single_step: bool = True
    """Current-step reward as the exact per-step reverse KL over the vocab (else in the sampled return)."""
    length_norm: bool = True
    """Divide the future reward by the number of remaining response tokens."""
    gamma: float = 0.95
    """Discount of the future reward."""
    clip_eps: float = 0.2
    """PPO clipping of the ratio q_theta / q_old (0 = no clipping)."""
    ppo_epochs: int = 2
    """Optimizer steps per rollout batch (the first is on-policy, ratios start at 1)."""
    lm_coef: float = 0.0
    """Weight of the LM loss on pre-training data (data.prefix) added to the MiniLLM loss (0 = off)."""
    eval_interval: int = 0
    """Evaluate (reverse KL to the teacher on valid_data) every N iterations (0 = only at the end)."""
    eval_seed: int = 0
    """Sampling seed of the on-policy evaluation (same prompts, same seed at every evaluation)."""


@dataclass
class LogConfig:
    interval: int = 1
    """Print/record training metrics every N iterations."""
    tensorboard_dir: Optional[str] = None
    metrics_file: Optional[str] = None
    """Also append every logged step as a JSON line here (what tests and benchmarks read)."""


@dataclass
class Config:
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    minillm: MiniLLMConfig = field(default_factory=MiniLLMConfig)

    def validate(self, world_size: Optional[int] = None) -> "Config":
        """Cross-field checks; raises ConfigError naming the keys to change."""
        p, m, t = self.parallel, self.model, self.train
        _positive(self, ["parallel.tp", "parallel.pp", "model.num_layers", "model.hidden_size",
                         "model.num_attention_heads", "train.micro_batch_size",
                         "train.global_batch_size", "train.seq_length"])
        _non_negative(self, ["train.iters", "train.eval_interval", "checkpoint.interval",
                             "optim.warmup_iters", "train.exit_interval"])
        if m.num_attention_heads % p.tp:
            raise ConfigError(f"parallel.tp={p.tp} does not divide model.num_attention_heads="
                              f"{m.num_attention_heads}; choose a tp that divides the head count")
        groups = m.num_query_groups or m.num_attention_heads
        if m.num_attention_heads % groups:
            raise ConfigError(f"model.num_query_groups={groups} must divide "
                              f"model.num_attention_heads={m.num_attention_heads}")
        if groups % p.tp:
            raise ConfigError(f"parallel.tp={p.tp} does not divide model.num_query_groups={groups}")
        if m.hidden_size % m.num_attention_heads:
            raise ConfigError(f"model.hidden_size={m.hidden_size} is not a multiple of "
                              f"model.num_attention_heads={m.num_attention_heads}")
        if m.num_layers % p.pp:
            raise ConfigError(f"parallel.pp={p.pp} does not divide model.num_layers={m.num_layers}")
        if p.sequence_parallel and p.tp == 1:
            raise ConfigError("parallel.sequence_parallel needs parallel.tp > 1")
        m.check_fp8()
        if t.global_batch_size % t.micro_batch_size:
            raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                              f"train.micro_batch_size={t.micro_batch_size}")
        if world_size is not None:
            world_size = placements.placement(self).student_world(self, world_size)
            if world_size % (p.tp * p.pp):
                raise ConfigError(f"world size {world_size} is not a multiple of parallel.tp*parallel.pp"
                                  f"={p.tp * p.pp}; launch a multiple of tp*pp processes")
            dp = world_size // (p.tp * p.pp)
            if t.global_batch_size % (t.micro_batch_size * dp):
                raise ConfigError(f"train.global_batch_size={t.global_batch_size} is not a multiple of "
                                  f"micro_batch_size*data_parallel={t.micro_batch_size * dp}")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError("optim.min_lr must not exceed optim.lr")
        if m.init_from_hf and self.checkpoint.pretrained:
            raise ConfigError("set only one of model.init_from_hf and checkpoint.pretrained")
        self._validate_kd()
        if self.minillm.method != "none":
            self._validate_minillm()
            return self
        if self.data.prefix is None:
            raise ConfigError("data.prefix is not set; point it at a <prefix> with .bin/.idx "
                              "(make one with tools/preprocess_data.py)")
        if self.data.tokenizer is None:
            raise ConfigError("data.tokenizer is not set; point it at a local Hugging Face tokenizer dir")
        return self

    def _validate_kd(self):
        k, tch = self.kd, self.teacher
        k.spec()  # kind, kind_args, temperature, top_p, top_k
        if not 0.0 <= k.alpha <= 1.0:
            raise ConfigError(f"kd.alpha={k.alpha} must be in [0, 1]")
        if k.source == "online":
            if (tch.checkpoint is None) == (tch.hf_path is None):
                raise ConfigError("kd.source=online needs exactly one of teacher.checkpoint and "
                                  "teacher.hf_path")
            p = self.parallel
            if tch.placement == "colocated" and p.pp > 1 and p.sequence_parallel:
                raise ConfigError("a co-located teacher with parallel.pp > 1 does not support "
                                  "parallel.sequence_parallel yet; set it to false")
        if k.source == "offline":
            prefixes = parse_blend(self.data.prefix)[0] if self.data.prefix is not None else [None]
            stores = [k.store] if isinstance(k.store, str) else k.store or []
            if len(stores) != len(prefixes):
                raise ConfigError(f"kd.source=offline needs kd.store: one store directory per "
                                  f"data.prefix dataset ({len(prefixes)}), got {len(stores)}; dump "
                                  f"them with tools/dump_teacher_logits.py")
        if tch.placement == "dedicated":
            self._validate_dedicated()

    def _validate_dedicated(self):
        k, tch = self.kd, self.teacher
        if k.source != "online":
            raise ConfigError("teacher.placement=dedicated needs kd.source=online")
        if k.top_k <= 0 or k.kind == "mse":
            raise ConfigError("teacher.placement=dedicated sends sparse top-k targets: set kd.top_k > 0 "
                              "(PD paper: 50-100) and a kd.kind other than mse")
        _positive(self, ["teacher.tp", "teacher.pp", "teacher.ranks", "teacher.prefetch",
                         "teacher.timeout_s"])
        if tch.ranks % (tch.tp * tch.pp):
            raise ConfigError(f"teacher.ranks={tch.ranks} is not a multiple of teacher.tp*teacher.pp="
                              f"{tch.tp * tch.pp}")

    def teacher_runtime(self) -> "Runtime":
        """How every teacher load runs the teacher: teacher.precision / teacher.transformer_impl,
        the student's model.* where they are null (resolved here and nowhere else)."""
        t, m = self.teacher, self.model
        return Runtime(precision=t.precision or m.precision,
                       transformer_impl=t.transformer_impl or m.transformer_impl)

    def _validate_minillm(self):
        mm = self.minillm
        if mm.train_data is None:
            raise ConfigError(f"minillm.method={mm.method} needs minillm.train_data (a jsonl of "
                              f"prompt/response records or a tools/preprocess_sft.py prefix)")
        if self.data.tokenizer is None:
            raise ConfigError("data.tokenizer is not set; point it at a local Hugging Face tokenizer dir")
        if mm.method != "sft" and (self.teacher.checkpoint is None) == (self.teacher.hf_path is None):
            raise ConfigError(f"minillm.method={mm.method} needs exactly one of teacher.checkpoint "
                              f"and teacher.hf_path")
        if mm.method == "minillm" and mm.lm_coef > 0 and self.data.prefix is None:
            raise ConfigError("minillm.lm_coef > 0 needs pre-training data in data.prefix "
                              "(or set minillm.lm_coef=0)")
        if self.parallel.pp > 1:
            raise ConfigError("instruction training (minillm.method) runs at parallel.pp=1 only; "
                              "use tensor and data parallelism")
        if self.checkpoint.load:
            raise ConfigError("instruction training cannot resume (checkpoint.load); start from "
                              "weights with checkpoint.pretrained")
        if not 0.0 <= mm.teacher_mix < 1.0:
            raise ConfigError(f"minillm.teacher_mix={mm.teacher_mix} must be in [0, 1)")
        if not 0.0 < mm.top_p <= 1.0 or mm.temperature <= 0:
            raise ConfigError("minillm.top_p must be in (0, 1] and minillm.temperature > 0")
        if not 0.0 <= mm.gamma <= 1.0 or mm.clip_eps < 0:
            raise ConfigError("minillm.gamma must be in [0, 1] and minillm.clip_eps >= 0")
        if mm.ppo_epochs < 1 or mm.max_new_tokens < 1:
            raise ConfigError("minillm.ppo_epochs and minillm.max_new_tokens must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _get(cfg, dotted):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _positive(cfg, keys):
    for k in keys:
        if _get(cfg, k) <= 0:
            raise ConfigError(f"{k}={_get(cfg, k)} must be positive")


def _non_negative(cfg, keys):
    for k in keys:
        if _get(cfg, k) < 0:
            raise ConfigError(f"{k}={_get(cfg, k)} must not be negative")


# ---------------------------------------------------------------------------------------------------
# Loading: YAML -> nested dict -> dataclasses, type-checked field by field.


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                validate: bool = True, world_size: Optional[int] = None) -> Config:
    """Build a Config from a YAML file (optional) and `key.sub=value` overrides (YAML-typed values)."""
    cfg = from_dict(Config, load_raw(path, overrides))
    return cfg.validate(world_size) if validate else cfg


def load_raw(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> dict:
    """The YAML file plus overrides as a plain nested dict (no types, no unknown-key check)."""
    raw = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist; pass --config with a YAML file "
                              f"(e.g. configs/tiny_cpu.yaml)")
        with open(path) as f:
            try:
                raw = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path!r} is not valid YAML: "
                                  f"{str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value.strip() else None)
    return raw


def _set_dotted(raw: dict, key: str, value):
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(cls, raw: dict, where: str = ""):
    """Instantiate dataclass `cls` from `raw`, rejecting unknown keys and ill-typed values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {where.rstrip('.') or '<root>'} must be a mapping, "
                          f"got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


def _coerce(tp, value, key):
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, key + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else _type_error(key, value, tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise _type_error(key, value, tp)
        return [_coerce(args[0], v, key) for v in value] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping (e.g. {{name: value}}), got {value!r}")
        kt, vt = args or (str, typing.Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, tp)
    return value


def _type_error(key, value, tp):
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return ConfigError(f"config key '{key}' expects {name}, got {value!r}")
