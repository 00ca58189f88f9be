"""pytest set-up shared by every test: wandb stays offline and quiet."""
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
