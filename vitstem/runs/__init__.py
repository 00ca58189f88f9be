"""One run folder's life: resume, skip or refuse it; checkpoints on a schedule and on signals; exact continuation."""
