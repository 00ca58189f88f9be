"""The config schema (type and range of every setting) and the checks across settings, run before any compute."""
from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from omegaconf import DictConfig, OmegaConf
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key, the value and what to do."""


# The schema holds types and ranges only: every value comes from conf/. Choices that a component owns (stem
# norms, attention activations, schedule shapes, ...) are checked there, also before any compute. Groups are
# open (an option may add keys, e.g. SGD's momentum); a stem layer is closed, as a typo in it would go unseen.
Count = Annotated[int, Field(ge=1)]
Index = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]  # a float accepts an int, never a bool or a string
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Pair = Annotated[list[Probability], Field(min_length=2, max_length=2)]
Open, Closed = ConfigDict(extra="allow"), ConfigDict(extra="forbid")


@with_config(Open)
class Optimizer(TypedDict):
    lr: Positive
    ref_batch_size: Count
    weight_decay: NonNegative
    weight_decay_scaled_by: Literal["lr", "schedule"]
    betas: NotRequired[Annotated[list[Fraction], Field(min_length=2, max_length=2)]]
    eps: NotRequired[Positive]
    momentum: NotRequired[Fraction]
    nesterov: NotRequired[bool]
    max_grad_norm: NotRequired[Positive | None]


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


@with_config(Open)
class Loader(TypedDict):
    batch_size: Count
    num_workers: Index | Literal["auto"]  # auto: from the job's CPUs on a GPU, 0 on a CPU (vitstem.data.transfer)
    pin_memory: bool | Literal["auto"]
    persistent_workers: bool
    prefetch_factor: Count | None
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
    every_n_steps: Count
    grad_spike_factor: Factor
    loss_spike_factor: Factor
    spike_window: Count
    spike_warmup: Index
    max_spikes: Index


@with_config(Open)
class Tokens(TypedDict):  # vitstem.instrument.callbacks.TokenStatistics
    num_images: Count
    every_n_epochs: Count


@with_config(Open)
class Throughput(TypedDict):  # vitstem.instrument.callbacks.Throughput
    peak_flops: Positive | None


@with_config(Open)
class Callbacks(TypedDict):  # the entries vitstem knows; any other (a _target_) is Hydra's and Lightning's to check
    stability: NotRequired[Stability | None]
    tokens: NotRequired[Tokens | None]
    throughput: NotRequired[Throughput | None]


@with_config(Open)
class Config(TypedDict):
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
    ema: NotRequired[EMA]  # ema=none and mixup=none leave their group empty
    mixup: NotRequired[Mixup]
    callbacks: NotRequired[Callbacks | None]


SCHEMA = TypeAdapter(Config)
# pydantic's messages, reworded to follow "<key>=<value> must ...".
_PHRASES = (("Input should be ", "be "), ("List should have ", "have "), (" after validation", ""),
            ("greater than or equal to ", "at least "), ("less than or equal to ", "at most "),
            ("greater than 0", "positive"), ("a valid number", "a number"), ("a valid integer", "an integer"),
            ("a valid boolean", "true or false"), ("a valid ", "a "))


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


def validate(cfg: DictConfig) -> None:
    """Every setting against the schema, then the checks that relate two settings.

    Checks that belong to a component live there (the stem's stride and image-size invariants, a data set's
    files, the choices among named options); they too run before any compute.
    """
    keys = [k for k in Config.__annotations__ if k in cfg]
    # each node in place (not a masked copy): a value may interpolate any key of the config (a study's)
    values = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    values = {k: v for k, v in values.items() if v != {} or k not in ("ema", "mixup")}
    try:
        SCHEMA.validate_python(values, strict=True)
    except ValidationError as e:
        raise ConfigError(_message(values, e.errors())) from None
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
