"""``vitstem-recipes``: every experiment's training recipe, as composed, beside the paper's.

    vitstem-recipes                                  # every conf/experiment/*.yaml, one row each
    vitstem-recipes xiao_c_4gf deit                  # some experiments
    vitstem-recipes xiao_c_4gf optimizer.lr=2e-3     # an experiment with your overrides, against the paper
    vitstem-recipes --bases                          # the five recipe bases (the README's table)

Each cell is vitstem's value, read from the composed config (with ``data=imagenet``, so the augmentation of
real data shows); where the paper's value differs it follows as ``[paper: ...]``, and a cell the paper does
not state ends with ``†`` (our reading; ../shared/papers.md says which). The papers' values are the tables
below (facts with their sources), not read back from the configs, except Xiao's Table 4, read from its one data
file (conf/paper/xiao_table4.yaml; tests/test_recipes.py checks it); the exit status is 1 when a cell differs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from vitstem.config import ConfigError, compose, validate
from vitstem.paths import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
BASES = ["xiao_peak", "xiao_stability", "deit", "wortsman_i1k", "wortsman_i21k"]
COLUMNS = ["model", "optimizer", "lr @ batch", "weight decay", "schedule", "epochs", "augmentation", "mixup / CutMix",
           "smoothing", "loss", "EMA", "precise BN", "clip", "drop path", "head", "input"]
WD_SCOPE = {"pycls": "all but norm gains, biases", "timm": "all but 1-D, pos_embed, cls_token",
            "kernels": "kernels only", "all": "all"}
OURS = "†"  # the paper does not state it: our reading

# --- the papers' recipes (../shared/papers.md; DeiT's main.py; big_vision configs/vit_i1k.py, vit_i21k.py) ---
_XIAO = {"optimizer": "AdamW (0.9, 0.999)", "lr @ batch": "0.001 @ 2048", "weight decay": "0.24 on " + WD_SCOPE["pycls"],
         "schedule": "5 epochs warm-up from 0.1x, cosine to 0, per epoch", "epochs": "400",
         "augmentation": "crop 0.08-1 + flip 0.5, AutoAugment v0, lighting 0.1", "mixup / CutMix": "0.8 / 1",
         "smoothing": "0.1", "loss": "softmax", "EMA": "horizon 0.078" + OURS, "precise BN": "8192 images",
         "clip": "-", "drop path": "0", "head": "class token", "input": "mean/std ImageNet"}
_DEIT = {"optimizer": "AdamW (0.9, 0.999)", "lr @ batch": "0.0005 @ 512", "weight decay": "0.05 on " + WD_SCOPE["timm"],
         "schedule": "5 epochs warm-up from lr 1e-06, cosine to lr 1e-05, per epoch", "epochs": "300",
         "augmentation": "crop 0.08-1 + flip 0.5, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.3, erasing 0.25, "
                         "repeats 3", "mixup / CutMix": "0.8 / 1", "smoothing": "0.1", "loss": "softmax",
         "EMA": "decay 0.99996", "precise BN": "-", "clip": "-", "drop path": "0.1", "head": "class token",
         "input": "mean/std ImageNet"}
_I1K = {"optimizer": "AdamW (0.9, 0.999)", "lr @ batch": "0.001 @ 4096",
        "weight decay": "0.0001 on kernels only, not x lr",
        "schedule": "10000 steps warm-up from 0, cosine to 0, per step", "epochs": "300",
        "augmentation": "crop 0.05-1 + flip 0.5",  # + the model's RandAugment and mixup: WORTSMAN_AUGMENT
        "smoothing": "0", "loss": "sigmoid, head bias -6.9", "EMA": "-", "precise BN": "-", "clip": "1",
        "drop path": "0", "head": "class token, tanh pre-logits", "input": "[-1, 1], 99% of train"}
_I21K = {**_I1K, "epochs": "30", "loss": "sigmoid, head bias -10", "head": "GAP, no class token",
         "input": "[-1, 1], 99.61% of train"}
# big_vision's per-model augmentation of Wortsman et al.'s recipes: {i1k|i21k: {model: {randaugment, mixup}}}
WORTSMAN_AUGMENT = CONF_DIR / "paper" / "wortsman_augment.yaml"
# Xiao et al. Table 4 (batch 2048): {model: {optimizer: {lr, weight_decay}}}, the data file the configs read too
TABLE4 = CONF_DIR / "paper" / "xiao_table4.yaml"


def _wortsman(base: dict, table: str, model: str | None) -> dict[str, str]:
    """The i1k or i21k recipe with the augmentation row of ``model`` (the recipe's own if the table lacks it)."""
    rows = OmegaConf.load(WORTSMAN_AUGMENT)[table]
    row = rows.get(model) or rows.default
    randaugment = f", RandAugment {row.randaugment}{OURS}" if row.randaugment else ""
    facts = {**base, "augmentation": base["augmentation"] + randaugment,
             "mixup / CutMix": f"{row.mixup:g} / 0" if row.mixup else "-"}
    if model == "vit_s8":  # in neither big_vision config: our choice
        facts["mixup / CutMix"] += OURS
    return facts


def paper(name: str, choices: Mapping[str, str] = {}) -> dict[str, str]:
    """The paper's recipe for experiment ``name`` (its family's, with the per-model values); ``choices`` (Hydra's
    runtime choices of the composed config) pick Table 4's cell of the xiao_stability runs."""
    if name.startswith("xiao_stability"):
        facts = {**_XIAO, "epochs": "50"}
        cell = OmegaConf.load(TABLE4).get(choices.get("model"), {}).get(choices.get("optimizer"))
        if cell is not None:
            facts.update({"lr @ batch": f"{cell.lr:g} @ 2048", "weight decay": f"{cell.weight_decay:g} on "
                          f"{WD_SCOPE['pycls']}"})
            if choices["optimizer"] == "sgd":
                facts["optimizer"] = "SGD momentum 0.9, Nesterov" + OURS
        return facts
    if name.startswith("xiao_"):
        big = name.endswith("36gf")
        return {**_XIAO, **({"lr @ batch": "0.0006 @ 2048", "weight decay": "0.28 on " + WD_SCOPE["pycls"]} if big else {})}
    if name == "deit":
        return dict(_DEIT)
    if name.startswith("wang_"):  # Wang et al. train with DeiT's recipe: our reading (papers.md section 2)
        return {k: v if v.endswith(OURS) else v + OURS for k, v in _DEIT.items()}
    if name.startswith("wortsman_"):
        return _wortsman(_I21K if name.startswith("wortsman_i21k") else _I1K, "i21k" if "i21k" in name else "i1k",
                         choices.get("model"))
    return {}


# --- vitstem's recipe, read from a composed config ---
def _g(x: float) -> str:
    return f"{x:g}"


def ours(cfg: DictConfig) -> dict[str, str]:
    """The recipe cells of a composed ``vitstem-train`` config (``return_hydra_config=True``)."""
    choices = cfg.hydra.runtime.choices
    o, s, a, m, loss = cfg.optimizer, cfg.scheduler, cfg.data.augment, cfg.mixup, cfg.loss
    target = o._target_.rsplit(".", 1)[-1]
    optimizer = f"{target} ({_g(o.betas[0])}, {_g(o.betas[1])})" if "betas" in o else \
        f"{target} momentum {_g(o.momentum)}" + (", Nesterov" if o.get("nesterov") else "")
    scope = WD_SCOPE.get(choices["weight_decay"], choices["weight_decay"])
    start = f"lr {_g(s.warmup_start_lr)}" if s.warmup_start_lr is not None else \
        (f"{_g(s.warmup_start_factor)}x" if s.warmup_start_factor else "0")
    end = f"lr {_g(s.min_lr)}" if s.min_lr is not None else (_g(s.min_factor) + "x" if s.min_factor else "0")
    schedule = (f"{_g(s.warmup)} {s.warmup_unit} warm-up from {start}, " if s.warmup else "") + \
        f"{s.decay} to {end}, per {s.interval}" + (f", {s.cooldown_epochs} cool-down epochs" if s.cooldown_epochs else "")
    aug = [f"crop {_g(a.scale[0])}-{_g(a.scale[1])} + flip {_g(a.hflip)}"]
    if a.auto_augment:
        aug.append(("AutoAugment " if not a.auto_augment.startswith("rand") else "RandAugment ") + a.auto_augment)
    aug += [f"colour jitter {_g(a.color_jitter)}"] if a.color_jitter else []
    aug += [f"lighting {_g(a.lighting)}"] if a.lighting else []
    aug += [f"erasing {_g(a.re_prob)}"] if a.re_prob else []
    aug += [f"repeats {a.num_repeats}"] if a.num_repeats > 1 else []
    mix = f"{_g(m.mixup_alpha)} / {_g(m.cutmix_alpha)}" if m else "-"
    kind = {"SoftmaxCrossEntropy": "softmax", "SigmoidCrossEntropy": "sigmoid"}[loss._target_.rsplit(".", 1)[-1]]
    ema = "-" if not cfg.ema else (f"decay {_g(cfg.ema.decay)}" if cfg.ema.decay is not None
                                   else f"horizon {_g(cfg.ema.horizon)}")
    model = cfg.model
    head = "class token" if model.get("class_token", True) else "GAP, no class token"
    head += ", tanh pre-logits" if model.get("rep_size") else ""
    data = cfg.data
    normalised = "[-1, 1]" if list(data.mean) == [0.5] * 3 and list(data.std) == [0.5] * 3 else \
        "mean/std ImageNet" if list(data.mean) == [0.485, 0.456, 0.406] else f"mean {list(data.mean)}"
    return {
        "model": model.name + ("" if model.attention.activation == "softmax" else f" ({model.attention.activation})"),
        "optimizer": optimizer, "lr @ batch": f"{_g(o.lr)} @ {o.ref_batch_size}",
        "weight decay": f"{_g(o.weight_decay)} on {scope}" + (", not x lr" if o.weight_decay_scaled_by == "schedule" else ""),
        "schedule": schedule, "epochs": str(cfg.trainer.max_epochs), "augmentation": ", ".join(aug), "mixup / CutMix": mix,
        "smoothing": _g(loss.label_smoothing),
        "loss": kind + (f", head bias {_g(loss.head_bias_init)}" if loss.head_bias_init is not None else ""),
        "EMA": ema, "precise BN": f"{cfg.callbacks.precise_bn.num_images} images" if cfg.callbacks.precise_bn.num_images
        else "-", "clip": _g(cfg.trainer.gradient_clip_val) if cfg.trainer.gradient_clip_val else "-",
        "drop path": _g(model.get("drop_path_rate", 0)), "head": head,
        "input": normalised + (f", {_g(round(100 - 100 * data.holdout, 2))}% of train" if data.holdout else ""),
    }


def compare(name: str, overrides: list[str] = ()) -> tuple[dict[str, str], int]:
    """The row of experiment ``name``: ours, with the paper's value after each cell that differs; the count."""
    cfg = compose([f"experiment={name}", "data=imagenet", *overrides])
    validate(cfg)  # a bad override: one line naming it (ConfigError), not a traceback from a cell's format
    mine, theirs = ours(cfg), paper(name, cfg.hydra.runtime.choices)
    row, differ = {}, 0
    for col in COLUMNS:
        value, ref = mine[col], theirs.get(col)
        if ref is None:
            row[col] = value
        elif ref.rstrip(OURS) == value:
            row[col] = value + (OURS if ref.endswith(OURS) else "")
        else:
            row[col], differ = f"{value} [paper: {ref}]", differ + 1
    return row, differ


def table(rows: dict[str, dict[str, str]]) -> str:
    lines = ["| experiment | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    lines += [f"| {name} | " + " | ".join(row[c] for c in COLUMNS) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitstem-recipes", description=__doc__.splitlines()[0],
                                     epilog="vitstem-train overrides (key=value, group=option) apply to every experiment")
    parser.add_argument("experiments", nargs="*", help="experiment names (default: all), then any overrides")
    parser.add_argument("--bases", action="store_true", help=f"only the recipe bases {BASES}")
    args = parser.parse_args(argv)
    overrides = [a for a in args.experiments if "=" in a]
    names = BASES if args.bases else ([a for a in args.experiments if "=" not in a] or EXPERIMENTS)
    if unknown := sorted(set(names) - set(EXPERIMENTS)):
        parser.error(f"unknown experiment(s) {unknown}; choose from conf/experiment: {', '.join(EXPERIMENTS)}")
    rows, differ = {}, 0
    for name in names:
        try:
            rows[name], n = compare(name, overrides)
        except ConfigError as e:  # a bad override
            sys.exit(f"vitstem-recipes: {name}: {e}")
        differ += n
    print(table(rows))
    print(f"\n{OURS}: not stated by the paper (our reading). {differ} cell(s) differ from the papers.")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
