"""Loggers: Lightning's CSV logger always (continued, not rewritten, on resume); wandb on request, offline
when no API key is set, one wandb run per run folder (its id is kept there and reused on resume)."""
from __future__ import annotations

import csv
import netrc
import os
import socket
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger

WANDB_ID_FILE = "wandb_run_id"


class CSVLogger(_CSVLogger):
    """Lightning's ``CSVLogger``; :meth:`resume_before` keeps the rows an earlier attempt logged.

    Lightning deletes ``metrics.csv`` when its writer starts in a folder that has one; after a resume the
    rows logged before the checkpoint's step are written back first, and later rows (logged after the
    checkpoint by the attempt that was killed, and about to be logged again) are dropped. The checkpoint
    callback flushes the file before each checkpoint (:meth:`flush`) and records its row count, and the
    resumed run keeps exactly those rows (:meth:`keep_rows`): no row an interrupted attempt logged after its
    checkpoint (an epoch-end row of the interrupted epoch) survives.
    """

    _kept: tuple[list[str], list[dict]] | None = None
    rows = 0  # rows in metrics.csv after the last flush (counted on the rank that writes it)

    def resume_before(self, step: int) -> None:
        path = Path(self.log_dir) / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if r.get("step") not in (None, "") and int(float(r["step"])) < step]
                self._kept = (list(reader.fieldnames or []), rows)

    @property
    def experiment(self):
        first = self._experiment is None
        writer = super().experiment  # on other ranks than 0, Lightning's dummy: nothing to restore there
        if first and self._kept is not None and isinstance(writer, _ExperimentWriter):
            keys, rows = self._kept
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = list(keys)
            self.rows = len(rows)
            self._kept = None
        return writer

    def save(self) -> None:
        if isinstance(self._experiment, _ExperimentWriter):
            self.rows += len(self._experiment.metrics)
        super().save()

    def flush(self) -> int:
        """Write the rows logged so far to ``metrics.csv`` (a checkpoint is about to be taken); return how many
        rows the file holds."""
        self.save()
        return self.rows

    def keep_rows(self, n: int) -> None:
        """Keep the first ``n`` rows of ``metrics.csv`` (the rows it held when the resumed checkpoint was taken;
        later ones were logged by the stopped attempt and are logged again)."""
        writer = self.experiment
        if not isinstance(writer, _ExperimentWriter) or not os.path.isfile(writer.metrics_file_path):
            return
        self.save()
        with open(writer.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        if len(rows) > n:
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows[:n])
        self.rows = min(n, len(rows))


def wandb_api_key_present() -> bool:
    """True if wandb could authenticate: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_run_id(save_dir: str) -> str:
    """The wandb run id of this run folder: read from ``<save_dir>/wandb_run_id``, else made and kept there."""
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]  # wandb's own ids: 8 lowercase alphanumerics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def wandb_reachable(timeout: float = 5.0) -> str | None:
    """None if the wandb server answers and accepts the API key within ``timeout`` seconds, else why not.

    Without this check an unreachable server stalls ``wandb.init`` for its 90 s timeout and then fails the
    run with ``CommError`` before its first step; a bad key fails it too.
    """
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    url = urlparse(base if "://" in base else "https://" + base)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as e:
        return f"cannot reach {base} ({e})"
    try:
        import wandb

        if not wandb.login(verify=True, timeout=int(timeout), relogin=False):
            return "the API key was not accepted"
    except Exception as e:  # noqa: BLE001  (wandb raises several types for a bad key or a slow server)
        return f"login failed ({type(e).__name__}: {e})"
    return None


def wandb_logger(offline: bool | None = None, save_dir: str = ".", choices: dict | None = None,
                 tags: list | None = None, **kwargs) -> WandbLogger:
    """Lightning's ``WandbLogger``; ``offline=None`` means offline exactly when no API key is set, or when the
    server cannot be reached or refuses the key (one warning, within seconds). The run id is the run
    folder's (:func:`wandb_run_id`), with ``resume="allow"``: a resumed run continues its chart. ``choices``
    (stem, attention, optimizer, ...) become tags ``key=value`` beside ``tags``."""
    if offline is None:
        offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_api_key_present()
        if not offline:
            problem = wandb_reachable()
            if problem:
                warnings.warn(f"wandb: {problem}; logging offline to {save_dir}/wandb (upload later with "
                              "`wandb sync`)", stacklevel=2)
                offline = True
    tags = list(tags or []) + [f"{k}={v}" for k, v in (choices or {}).items() if v is not None]
    return WandbLogger(offline=offline, save_dir=save_dir, id=wandb_run_id(save_dir), resume="allow", tags=tags,
                       **kwargs)


def finish_wandb(failed: bool) -> None:
    """Close this process's wandb run, if one is open (one run per job, also when the job fails)."""
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
