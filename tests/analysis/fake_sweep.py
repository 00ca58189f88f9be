"""A fake sweep folder (no training): Hydra's random sweeper over model=vit_p_32,vit_c_32 x 7 samples of lr / wd.

Job ``k`` is sample ``k // 2`` of model ``MODELS[k % 2]`` (Hydra's order: samples outermost). Jobs 0-11 have
folders, 12 and 13 are planned in ``multirun.yaml`` but not started. Errors (percent):

    vit_p_32: 0: 25.0   2: 25.5   4: 26.5   6: 29.5   8: diverged   10: pending (.hydra/overrides.yaml only)
    vit_c_32: 1: 20.0 (EMA; 22.0 without)   3: 20.5   5: 21.5   7: 23.0   9: 30.0   11: failed
"""
from __future__ import annotations

import json
from pathlib import Path

MODELS = ("vit_p_32", "vit_c_32")
SAMPLED = ["optimizer.lr", "optimizer.weight_decay"]
ERRORS = {0: 25.0, 2: 25.5, 4: 26.5, 6: 29.5, 1: 20.0, 3: 20.5, 5: 21.5, 7: 23.0, 9: 30.0}
DIVERGED, PENDING, FAILED, UNSTARTED = 8, 10, 11, (12, 13)

MULTIRUN = """\
hydra:
  sweeper:
    _target_: vitstem.sweeps.random.RandomSweeper
    params: null
    samples: 7
    seed: 0
  overrides:
    task:
    - model=vit_p_32,vit_c_32
    - optimizer.lr=tag(log, interval(2.5e-4, 8e-3))
    - optimizer.weight_decay=tag(log, interval(0.02, 0.8))
    - study.name=xiao_lr_wd
    - trainer.max_epochs=3
name: xiao_lr_wd
run_dir: ${hydra:runtime.output_dir}
"""


def lr_of(k: int) -> float:
    return 1e-3 * 2 ** (k // 2)


def wd_of(k: int) -> float:
    return 0.02 * 2 ** (k // 2)


def overrides(k: int) -> list[str]:
    return [f"model={MODELS[k % 2]}", f"optimizer.lr={lr_of(k)}", f"optimizer.weight_decay={wd_of(k)}",
            "study.name=xiao_lr_wd", "trainer.max_epochs=3", f"study.sample={k // 2}",
            f"study.sampled=[{','.join(SAMPLED)}]"]


def results(k: int) -> dict:
    model = MODELS[k % 2]
    hparams = {"model": model, "stem": "conv_small" if model == "vit_c_32" else None,
               "attention": {"activation": "softmax", "alpha": 1.0}, "optimizer": "adamw", "lr": lr_of(k),
               "lr_scaled": lr_of(k), "ref_batch_size": 128, "weight_decay": wd_of(k), "warmup": 1,
               "warmup_unit": "epochs", "epochs": 3, "global_batch": 128, "seed": 0, "ema": "none",
               "study": "xiao_lr_wd", "sample": k // 2, "sampled": SAMPLED}
    out = {"status": "finished", "final_val_acc1": None, "best_val_acc1": None, "final_val_err1": None,
           "best_val_err1": None, "final_train_loss": 1.0, "epochs": 3, "steps": 30, "wall_time_s": 10.0 + k,
           "diverged_at_step": None, "error": None, "model": model, "overrides": overrides(k),
           "run_dir": f"multirun/xiao_lr_wd/{k}", "hparams": hparams}
    if k in ERRORS:
        err = 22.0 if k == 1 else ERRORS[k]
        out.update(best_val_err1=err, best_val_acc1=100 - err, final_val_err1=err + 1, final_val_acc1=99 - err)
    if k == 1:
        out.update(best_val_ema_err1=20.0, best_val_ema_acc1=80.0)
        hparams["ema"] = "pycls"
    if k == DIVERGED:
        out.update(status="diverged", best_val_acc1=12.0, best_val_err1=88.0, diverged_at_step=17, epochs=1)
    if k == FAILED:
        out.update(status="failed", error="RuntimeError: boom", epochs=0)
    return out


def metrics_csv(k: int) -> str:
    """Three epochs of validation rows (the last at the best error), with training rows in between."""
    best = 100 - results(k)["best_val_acc1"]
    lines = ["epoch,step,train/loss,val/acc1,val/loss" + (",val_ema/acc1" if k == 1 else "")]
    for epoch, err in enumerate([best + 10, best + 4, best]):
        lines.append(f"{epoch},{10 * epoch + 5},2.0,," + ("," if k == 1 else ""))
        ema = f",{100 - err + 2}" if k == 1 else ""
        lines.append(f"{epoch},{10 * epoch + 9},,{100 - err},1.5{ema}")
    return "\n".join(lines) + "\n"


def make_sweep(root: Path, plan: bool = True) -> Path:
    sweep = root / "xiao_lr_wd"
    for k in range(12):
        job = sweep / str(k)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides(k)))
        if k != PENDING:
            (job / "results.json").write_text(json.dumps(results(k), indent=2))
        if k in ERRORS or k == DIVERGED:
            (job / "metrics.csv").write_text(metrics_csv(k))
    if plan:
        (sweep / "multirun.yaml").write_text(MULTIRUN)
    return sweep
