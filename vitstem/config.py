"""The config schema (type and range of every setting) and the checks across settings, run before any compute."""
from __future__ import annotations

import difflib
import inspect
import re
import typing
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict, is_typeddict


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what to do."""


class DataError(RuntimeError):
    """Data that cannot be read as the settings say (a damaged shard, an unreadable image), met while training; the
    message names the file and what to do, in one line. Raised in a DataLoader worker, torch raises it again in the
    main process with the worker's traceback as its message: that is cut back to the original line here."""

    def __init__(self, message: str = ""):
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = re.sub(r"^[\w.]+: ", "", message.strip().splitlines()[-1])
        super().__init__(message)


# The schema holds types and ranges only: every value comes from conf/. Choices that a component owns (stem
# norms, attention activations, schedule shapes, ...) are checked there, also before any compute. Every key of a
# composed config is listed here (tests/test_config.py fails on one that is not) or sits under UNCHECKED. A key
# given on the command line that is not listed (+optimizer.amsgrad=true) must be a parameter of the constructor
# its group goes to (the node's _target_, the model's class); anything else is refused naming the known keys.
Count = Annotated[int, Field(ge=1)]
Index = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]  # a float accepts an int, never a bool or a string
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Pair = Annotated[list[Probability], Field(min_length=2, max_length=2)]
# extra keys pass pydantic: check_keys() decides about them first. inf and nan are no setting's value.
Open = Closed = ConfigDict(extra="allow", allow_inf_nan=False)
Target = str  # a _target_: an import path, resolved by Hydra


@with_config(Open)
class Optimizer(TypedDict):
    _target_: Target
    lr: Positive
    ref_batch_size: Count
    weight_decay: NonNegative
    weight_decay_scaled_by: Literal["lr", "schedule"]
    betas: NotRequired[Annotated[list[Fraction], Field(min_length=2, max_length=2)]]
    eps: NotRequired[Positive]
    momentum: NotRequired[Fraction]
    nesterov: NotRequired[bool]
    max_grad_norm: NotRequired[Positive | None]
    fused: NotRequired[bool | None]


@with_config(Closed)
class Multiplier(TypedDict):
    pattern: str
    lr: NotRequired[NonNegative]
    wd: NotRequired[NonNegative]


@with_config(Open)
class WeightDecay(TypedDict):
    decay: str
    skip_1d: bool
    skip: list[str]
    multipliers: list[Multiplier]


@with_config(Open)
class Scheduler(TypedDict):
    decay: str
    warmup: NonNegative
    warmup_unit: str
    warmup_start_factor: Probability
    min_factor: Probability
    warmup_start_lr: NonNegative | None
    min_lr: NonNegative | None
    cooldown_epochs: Index
    warmup_overlap: bool
    interval: str
    milestones: NotRequired[list[Probability]]
    gamma: NotRequired[Positive]


@with_config(Open)
class Trainer(TypedDict):
    _target_: Target
    accelerator: str
    strategy: str | dict[str, Any]  # a name, or a _target_ node (a Lightning strategy with arguments)
    max_epochs: Count
    devices: Literal[-1] | Count | str | list[Index]  # all, a count, "auto" or "0,1", device indices
    num_nodes: Count
    accumulate_grad_batches: Count
    precision: int | str  # the value is checked against Lightning's own list in validate()
    gradient_clip_val: NonNegative | None
    log_every_n_steps: Count
    limit_train_batches: NotRequired[Positive | None]  # 0 would train nothing
    limit_val_batches: NotRequired[NonNegative | None]
    fast_dev_run: NotRequired[bool | Index]
    num_sanity_val_steps: Annotated[int, Field(ge=-1)]  # -1: all
    deterministic: bool | Literal["warn"] | None
    enable_model_summary: bool
    enable_progress_bar: bool
    enable_checkpointing: bool
    use_distributed_sampler: bool
    sync_batchnorm: NotRequired[bool]


@with_config(Open)
class Loader(TypedDict):
    batch_size: Count
    num_workers: Index | Literal["auto"]  # auto: from the job's CPUs on a GPU, 0 on a CPU (vitstem.data.transfer)
    pin_memory: bool | Literal["auto"]
    persistent_workers: bool
    prefetch_factor: Count | None
    seed: Index
    normalize_on_device: NotRequired[bool | Literal["auto"]]


@with_config(Open)
class Augment(TypedDict):
    scale: Annotated[list[Probability], Field(min_length=2, max_length=2)]
    hflip: Probability
    auto_augment: str | None
    color_jitter: NonNegative | None
    lighting: NonNegative
    re_prob: Probability
    re_mode: Literal["const", "rand", "pixel"]
    num_repeats: Count


Triple = Annotated[list[float], Field(min_length=3, max_length=3)]


@with_config(Open)
class Data(TypedDict):
    _target_: Target
    num_classes: Annotated[int, Field(ge=2)]
    img_size: Count
    loader: Loader
    augment: Augment
    mean: Triple
    std: Annotated[list[Positive], Field(min_length=3, max_length=3)]
    holdout: Fraction
    train_size: NotRequired[Count]
    val_size: NotRequired[Count]
    noise: NotRequired[NonNegative]
    max_per_class: NotRequired[Count | None]
    shuffle_buffer: NotRequired[Index]
    seed: NotRequired[Index]  # synthetic: the images drawn
    root: NotRequired[str]  # a folder: its files are checked by the data module, before compute
    name: NotRequired[str]  # cifar10 | cifar100
    download: NotRequired[bool]
    verify_checksums: NotRequired[bool]
    padding: NotRequired[Index]
    interpolation: NotRequired[str]
    crop_pct: NotRequired[Annotated[float, Field(gt=0, le=1)]]
    classes: NotRequired[list[str] | None]
    skip_corrupt: NotRequired[bool]


@with_config(Closed)
class StemLayer(TypedDict):
    kernel: Count
    stride: Count
    channels: Count
    padding: NotRequired[Index]
    norm: NotRequired[str]
    act: NotRequired[str]


@with_config(Open)
class Stem(TypedDict):
    layers: list[StemLayer]
    norm: str
    act: str
    proj_kernel: Count | None
    proj_stride: Count | None
    proj_norm: str
    proj_act: str
    init: str


@with_config(Open)
class Attention(TypedDict):
    activation: str
    alpha: NonNegative
    qk_norm: bool
    gate: bool


@with_config(Open)
class Model(TypedDict):
    name: str
    img_size: Count
    patch_size: Count
    embed_dim: Count
    depth: Count  # a ViT without blocks would train its stem and head only
    num_heads: Count
    mlp_ratio: Positive
    drop_path_rate: NotRequired[Fraction]
    rep_size: NotRequired[Count | None]  # tanh pre-logits width (big_vision); null: none
    class_token: NotRequired[bool]
    global_pool: NotRequired[Literal["token", "avg", "avgmax", "max", "map", ""]]
    fc_norm: NotRequired[bool | None]
    weight_init: NotRequired[str]  # timm's: '' | jax | jax_nlhb | moco
    stem: Stem
    attention: Attention


@with_config(Closed)
class Loss(TypedDict):
    _target_: str
    label_smoothing: Fraction
    head_bias_init: float | None


@with_config(Open)
class EMA(TypedDict):
    decay: Fraction | None
    horizon: Positive | None
    copy_during_warmup: bool
    exclude_buffers: bool


@with_config(Open)
class Mixup(TypedDict):
    _target_: Target
    mixup_alpha: NonNegative
    cutmix_alpha: NonNegative
    cutmix_minmax: Pair | None
    prob: Probability
    switch_prob: Probability
    mode: Literal["batch", "pair", "elem"]
    correct_lam: bool
    label_smoothing: Fraction


Factor = Annotated[float, Field(gt=1)]


@with_config(Open)
class Stability(TypedDict):  # vitstem.instrument.callbacks.StabilityMonitor
    _target_: Target
    every_n_steps: Count
    grad_spike_factor: Factor
    loss_spike_factor: Factor
    spike_window: Count
    spike_warmup: Index
    max_spikes: Index


@with_config(Open)
class Tokens(TypedDict):  # vitstem.instrument.callbacks.TokenStatistics
    _target_: Target
    num_images: Count
    every_n_epochs: Count


@with_config(Open)
class Throughput(TypedDict):  # vitstem.instrument.callbacks.Throughput
    _target_: Target
    peak_flops: Positive | None


@with_config(Open)
class Checkpoint(TypedDict):  # vitstem.runs.checkpoint.RunCheckpoint
    _target_: Target
    dirpath: str
    every_n_minutes: Positive | None
    every_n_steps: Count | None
    signals: list[str]
    sync_every: Count


@with_config(Open)
class ProgressBar(TypedDict):  # vitstem.runs.progress.ProgressBar
    _target_: Target
    metrics_every_n_steps: Count


@with_config(Open)
class PreciseBN(TypedDict):  # vitstem.models.precise_bn.PreciseBN
    _target_: Target
    num_images: Index


@with_config(Open)
class Callbacks(TypedDict):  # the entries vitstem knows; another one (a _target_) is checked against its constructor
    stability: NotRequired[Stability | None]
    tokens: NotRequired[Tokens | None]
    throughput: NotRequired[Throughput | None]
    checkpoint: NotRequired[Checkpoint | None]
    progress_bar: NotRequired[ProgressBar | None]
    precise_bn: NotRequired[PreciseBN | None]


@with_config(Open)
class CSV(TypedDict):  # vitstem.runs.loggers.CSVLogger
    _target_: Target
    save_dir: str | None  # ${run_dir}
    name: str
    version: str | int


@with_config(Open)
class Wandb(TypedDict):  # vitstem.runs.loggers.wandb_logger
    _target_: Target
    project: str
    group: str | int
    name: str
    job_type: str
    tags: list[str | int | float]
    choices: dict[str, str | None]
    save_dir: str | None  # ${run_dir}
    offline: bool | None
    probe_timeout: NotRequired[Positive]
    init_timeout: NotRequired[Positive]


@with_config(Open)
class Loggers(TypedDict):  # as Callbacks: another entry (a _target_) is checked against its constructor
    csv: NotRequired[CSV | None]
    wandb: NotRequired[Wandb | None]


@with_config(Open)
class Study(TypedDict):  # set by a sweep (conf/sweep/); its own tables sit beside these: UNCHECKED
    name: str | None
    sample: Index | None
    sampled: list[str]


@with_config(Open)
class Config(TypedDict):
    name: str | int  # name=2024 is read as a number
    tags: list[str | int | float]
    run_dir: str | None  # None in a config composed outside the app (vitstem-recipes, vitstem-bench)
    retrain: bool
    study: Study
    paper: NotRequired[dict]  # a paper's tables as data (conf/paper/): UNCHECKED
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)]
    ckpt_path: str | None
    init_from: str | None
    matmul_precision: Literal["highest", "high", "medium"]
    compile: bool
    model: Model
    data: Data
    optimizer: Optimizer
    weight_decay: WeightDecay
    scheduler: Scheduler
    loss: Loss
    trainer: Trainer
    ema: NotRequired[EMA]  # ema=none and mixup=none leave their group empty (or null)
    mixup: NotRequired[Mixup]
    callbacks: NotRequired[Callbacks | None]
    logger: NotRequired[Loggers | None]


SCHEMA = TypeAdapter(Config)
# Nodes whose keys beyond the schema's are deliberately not checked, and why.
UNCHECKED = {
    "study": "a sweep's own tables (study.intervals, study.stems, study.draw, ...): read only through "
             "interpolations into the settings they set, which are checked",
    "paper": "a paper's tables as data (conf/paper/*.yaml): read only through interpolations into the "
             "settings they set, which are checked",
}
# Nodes whose entries are components by _target_ (a user may add their own): an entry the schema does not know is
# checked against its constructor only.
ENTRIES = ("callbacks", "logger")
# The class that receives a node without _target_ as keyword arguments.
RECEIVERS = {"model": "vitstem.models.vit.ViT"}
# The keys of a constructed node that vitstem takes out before calling the constructor.
CONSUMED = {"model": {"name"}, "optimizer": {"lr", "ref_batch_size", "weight_decay", "weight_decay_scaled_by"},
            "loss": {"head_bias_init"}}
# pydantic's messages, reworded to follow "<key>=<value> must ...".
_PHRASES = (("Input should be ", "be "), ("List should have ", "have "), (" after validation", ""),
            ("greater than or equal to ", "at least "), ("less than or equal to ", "at most "),
            ("greater than 0", "positive"), ("a valid number", "a number"), ("a valid integer", "an integer"),
            ("a valid boolean", "true or false"), ("a valid ", "a "), ("finite number", "finite number (not inf or nan)"))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _key(values: Any, loc: tuple) -> tuple[str, Any]:
    """The dotted key of an error location (``model.stem.layers[0].stride``) and its value; a union's member
    names in ``loc`` are skipped (they are not keys of the config)."""
    key, node = "", values
    for part in loc:
        if isinstance(node, dict) and part in node:
            key, node = f"{key}.{part}".lstrip("."), node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            key, node = f"{key}[{part}]", node[part]
    return key, node


def _message(values: dict, errors: list[dict]) -> str:
    """One line for the first setting the schema refuses: its key, its value and what it must be."""
    key, value = _key(values, errors[0]["loc"])
    if errors[0]["type"] == "missing":
        name = f"{key}.{errors[0]['loc'][-1]}".lstrip(".")
        return f"{name} is missing: add it to its config group or on the command line (+{name}=...)"
    if errors[0]["type"] == "extra_forbidden":
        return f"{key}={value!r} is not a known setting here: check its spelling"
    musts = []  # a union (trainer.devices) fails once per member: join them
    for error in errors:
        if _key(values, error["loc"])[0] == key and error["type"] not in ("missing", "extra_forbidden"):
            must = error["msg"]
            for old, new in _PHRASES:
                must = must.replace(old, new)
            musts += [must] if must not in musts else []
    return f"{key}={value!r} must {' or '.join(musts).replace(' or be ', ' or ')}"


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` / ``NotRequired``."""
    while get_origin(tp) is Annotated or get_origin(tp) is NotRequired or \
            str(get_origin(tp)).endswith("NotRequired"):
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _strip(tp)
    return [_strip(a) for a in get_args(tp)] if get_origin(tp) in (Union, UnionType) else [tp]


def _fields(tp: Any) -> dict[str, Any] | None:
    """The fields of the TypedDict among ``tp``'s union members, or None."""
    for member in _members(tp):
        if is_typeddict(member):
            return typing.get_type_hints(member, include_extras=True)
    return None


def _item(tp: Any) -> Any | None:
    """The item type of the list among ``tp``'s union members, or None."""
    return next((get_args(m)[0] for m in _members(tp) if get_origin(m) is list), None)


def unlisted_keys(values: dict) -> list[tuple[str, str, dict, dict]]:
    """The keys of ``values`` (a config as plain containers) that the schema does not list and that are not under
    an :data:`UNCHECKED` node: ``(dotted key, dotted node, node, the node's schema fields)`` each. The keys of an
    entry of :data:`ENTRIES` that the schema does not know (a user's own callback) all count as unlisted."""
    found = []

    def walk(node: Any, tp: Any, path: str) -> None:
        if isinstance(node, list) and (item := _item(tp)) is not None:
            for i, x in enumerate(node):
                walk(x, item, f"{path}[{i}]")
            return
        fields = _fields(tp) if tp is not None else {"_target_": Target}
        if not isinstance(node, dict) or fields is None:
            return
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else str(key)
            if key in fields:
                walk(value, fields[key], dotted)
            elif path in ENTRIES and isinstance(value, dict):
                walk(value, None, dotted)  # a component of the user's: its keys go to its constructor
            elif path not in UNCHECKED:
                found.append((dotted, path, node, fields))

    walk(values, Config, "")
    return found


def parameters(target: str, follow_bases: bool = False) -> set[str] | None:
    """The keyword parameters of the callable ``target`` (an import path); None when it takes ``**kwargs`` or cannot
    be imported. ``follow_bases``: a class whose ``__init__`` passes ``**kwargs`` to its base's (as ViT to timm's
    VisionTransformer) takes the base's parameters too (not assumed otherwise: Lightning's DDPStrategy passes its
    ``**kwargs`` to torch's DistributedDataParallel)."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:  # noqa: BLE001  (Hydra reports an import path that does not import, when it instantiates)
        return None
    names: set[str] = set()
    for fn in ([c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__] if inspect.isclass(obj)
               else [obj]):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
        if not follow_bases:
            return None
    return None


def _targets(node: Any, path: str = "") -> list[tuple[str, dict, str]]:
    """``(dotted node, node, import path)`` of every node built by a constructor: a ``_target_`` or a
    :data:`RECEIVERS` entry (none under an :data:`UNCHECKED` node)."""
    if not isinstance(node, dict) or path in UNCHECKED:
        return []
    target = node.get("_target_") if isinstance(node.get("_target_"), str) else RECEIVERS.get(path)
    found = [(path, node, target)] if target else []
    for key, value in node.items():
        found += _targets(value, f"{path}.{key}" if path else str(key))
    return found


def _refuse(key: str, value: Any, path: str, known: list[str], where: str) -> None:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {path + '.' if path else ''}{close[0]}?)" if close else ""
    raise ConfigError(f"{key}={value!r} is not a known setting{hint}: {where} takes {', '.join(known)}; "
                      "fix its spelling or remove it")


def check_keys(values: dict) -> None:
    """Refuse (one line, naming the key, the keys known there and the nearest one) a key that the schema does not
    list, and a key of a node built by a constructor that the constructor does not take (vitstem's own keys of the
    node, :data:`CONSUMED`, aside). Keys under :data:`UNCHECKED` nodes pass."""
    built = {path for path, _, _ in _targets(values)}
    for key, path, node, fields in unlisted_keys(values):
        if path not in built:
            _refuse(key, node[key.rsplit(".", 1)[-1]], path, sorted(fields), path or "the top level")
    for path, node, target in _targets(values):
        takes = parameters(target, follow_bases=path in RECEIVERS)
        if takes is None:
            continue
        own = CONSUMED.get(path, set())
        for name, value in node.items():
            if name != "_target_" and name not in takes | own:
                _refuse(f"{path}.{name}" if path else name, value, path, sorted(takes | own - {"self"}),
                        f"{path} ({target})")


def compose(overrides: list[str], job_name: str = "vitstem") -> DictConfig:
    """The config ``vitstem-train <overrides>`` would run, outside the app (vitstem-recipes, vitstem-bench): Hydra's
    runtime fields set, so ``${hydra:...}`` resolves. A bad override raises :class:`ConfigError` with Hydra's first
    line (which names it), not Hydra's search path."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from vitstem.paths import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
            cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(str(e).strip().splitlines()[0]) from None
    HydraConfig.instance().set_config(cfg)
    return cfg


def values_of(cfg: DictConfig) -> dict:
    """``cfg`` as plain containers, resolved, less Hydra's own node (``hydra``) and the empty or null ``ema`` /
    ``mixup`` (``ema=none``, ``mixup=none``)."""
    # each node in place (not a masked copy): a value may interpolate any key of the config (a study's)
    values = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
              for k in cfg if k != "hydra"}
    return {k: v for k, v in values.items() if v not in ({}, None) or k not in ("ema", "mixup")}


def validate(cfg: DictConfig) -> None:
    """Every setting against the schema, every key the schema does not list against the constructor it goes to,
    then the checks that relate two settings.

    Checks that belong to a component live there (the stem's stride and image-size invariants, a data set's
    files, the choices among named options); they too run before any compute.
    """
    values = values_of(cfg)
    if unknown := [k for k in values if k not in Config.__annotations__]:  # no import needed for these
        check_keys({k: values[k] for k in unknown})
    try:
        SCHEMA.validate_python(values, strict=True)
    except ValidationError as e:
        raise ConfigError(_message(values, e.errors())) from None
    check_keys(values)  # imports the constructors' modules (torch, timm: seconds)
    # Lightning's list of precisions; imported only for a config that passed the schema (seconds: it imports torch)
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
    precisions = [a for t in get_args(_PRECISION_INPUT) for a in get_args(t)]
    _require(cfg.trainer.precision in precisions, f"trainer.precision={cfg.trainer.precision!r} must be "
             f"{', '.join(map(str, precisions))}")
    model = cfg.model
    _require(model.embed_dim % model.num_heads == 0,
             f"model.embed_dim={model.embed_dim} must be a multiple of model.num_heads={model.num_heads}")
    _require(not (cfg.ckpt_path and cfg.init_from), f"ckpt_path={cfg.ckpt_path} and init_from={cfg.init_from} are both "
             "set: ckpt_path resumes a run (weights, optimizer, step), init_from starts a new one from weights only")
    stability = (cfg.get("callbacks") or {}).get("stability")
    _require(not stability or stability.spike_warmup <= stability.spike_window,
             f"callbacks.stability.spike_warmup={stability and stability.spike_warmup} is larger than "
             f"callbacks.stability.spike_window={stability and stability.spike_window}: no spike could ever be found; "
             "lower the warm-up or widen the window")
    _require(not (cfg.trainer.gradient_clip_val and str(cfg.trainer.precision) in ("16-mixed", "16") and
                  cfg.optimizer.get("fused")), f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val} with "
             f"trainer.precision={cfg.trainer.precision} cannot clip a fused optimizer's scaled gradients: set "
             "optimizer.fused=false, or use trainer.precision=bf16-mixed")
    _require(not cfg.ema or cfg.ema.decay is not None or cfg.ema.horizon is not None,
             "ema.decay and ema.horizon are both null: set one (a fixed per-step decay, or the EMA's share of the run)")
