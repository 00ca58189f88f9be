"""``vitstem-models``: every registered model with its parameters (M) and GMACs at its native resolution.

    vitstem-models                                   # all models
    vitstem-models vit_c_4gf vit_p_4gf               # some models
    vitstem-models --stem scaled_relu --attention relu   # every model with that stem / attention
    vitstem-models --paper                           # the paper models beside Xiao et al.'s Table 1

GMACs are multiply-adds (pycls "GF"), counted on the meta device (see :mod:`vitstem.models.complexity`).
"""
from __future__ import annotations

import argparse
import json
import sys

import timm
import torch
from rich.console import Console
from rich.table import Table

from vitstem.models.complexity import count_macs, count_params, stem_cost
from vitstem.models.zoo import ATTENTION_NAMES, MODEL_NAMES, STEM_NAMES, attention_config, stem_config

# Xiao et al. 2021, Table 1: (params M, GF) at 224 px.
PAPER_TABLE1 = {
    "vit_p_1gf": (4.8, 1.1), "vit_p_4gf": (18.5, 3.9), "vit_p_18gf": (86.6, 17.5), "vit_p_36gf": (178.4, 35.9),
    "vit_c_1gf": (4.6, 1.1), "vit_c_4gf": (17.8, 4.0), "vit_c_18gf": (81.6, 17.7), "vit_c_36gf": (167.8, 35.0),
}


def measure(name: str, stem: str | None = None, attention: str | None = None) -> dict:
    """Parameters, MACs and stem cost of registered model ``name`` (optionally another stem / attention)."""
    overrides = {}
    if stem:
        overrides["stem"] = stem_config(stem)
    if attention:
        overrides["attention"] = attention_config(attention)
    with torch.device("meta"):
        model = timm.create_model(name, **overrides)
    img = model.patch_embed.img_size[0]
    stem_macs, stem_params = stem_cost(model, img)
    return {"model": name, "img_size": img, "depth": len(model.blocks), "embed_dim": model.embed_dim,
            "params_m": count_params(model) / 1e6, "gmacs": count_macs(model, img) / 1e9,
            "stem_mmacs": stem_macs / 1e6, "stem_params_m": stem_params / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vitstem-models", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"model names (default: all): {', '.join(MODEL_NAMES)}")
    parser.add_argument("--stem", choices=STEM_NAMES, help="replace every model's stem with this preset")
    parser.add_argument("--attention", choices=ATTENTION_NAMES, help="replace every model's attention")
    parser.add_argument("--paper", action="store_true", help="only Xiao et al.'s models, beside Table 1")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    names = list(PAPER_TABLE1) if args.paper else (args.models or MODEL_NAMES)
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; registered: {MODEL_NAMES}")
    rows = [measure(n, args.stem, args.attention) for n in names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    title = "vitstem models" + (f" with stem={args.stem}" if args.stem else "") + \
        (f" attention={args.attention}" if args.attention else "")
    table = Table(title=title)
    for col in ("model", "px", "blocks", "width", "params (M)", "GMACs", "stem MMACs", "stem params (M)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    if args.paper:
        table.add_column("paper params (M)", justify="right")
        table.add_column("paper GF", justify="right")
    for r in rows:
        cells = [r["model"], str(r["img_size"]), str(r["depth"]), str(r["embed_dim"]), f"{r['params_m']:.2f}",
                 f"{r['gmacs']:.3f}", f"{r['stem_mmacs']:.0f}", f"{r['stem_params_m']:.2f}"]
        if args.paper:
            cells += [f"{v}" for v in PAPER_TABLE1[r["model"]]]
        table.add_row(*cells)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


if __name__ == "__main__":
    main()
