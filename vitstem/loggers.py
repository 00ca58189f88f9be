"""Loggers: Lightning's CSV logger always; wandb on request, offline when no API key is set."""
from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger


def wandb_api_key_present() -> bool:
    """True if wandb could authenticate: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(offline: bool | None = None, **kwargs) -> WandbLogger:
    """Lightning's ``WandbLogger``; ``offline=None`` means offline exactly when no API key is set."""
    if offline is None:
        offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_api_key_present()
    return WandbLogger(offline=offline, **kwargs)


def finish_wandb(failed: bool) -> None:
    """Close this process's wandb run, if one is open (one run per job, also when the job fails)."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
