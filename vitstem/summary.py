"""The result table printed at the end of a run."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitstem.analysis.report import fmt


def print_summary(results: dict) -> None:
    table = Table(title=f"vitstem run: {results['status']}", show_header=False)
    for key in ("model", "params_m", "final_val_acc1", "best_val_acc1", "final_val_err1", "final_val_acc5",
                "final_val_ema_acc1", "best_val_ema_acc1",
                "final_train_loss", "epochs", "steps", "global_batch_size", "train_images_per_s",
                "train_images_per_s_with_data", "mfu", "wall_time_s", "diverged_at_step", "diverged_block",
                "spikes_total", "error", "run_dir"):
        if key in results and (results[key] is not None or key in ("final_val_acc1",)):
            table.add_row(key, Text(fmt(results[key])))  # as text: an error message may contain [brackets]
    Console().print(table)
