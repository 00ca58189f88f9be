"""Stability instrumentation: per-block norms, spikes, divergence, token diversity, attention statistics, MFU."""

# The keys the instrumentation adds to results.json (here, light, so a run that failed before training has them too)
RESULT_KEYS = ("train_images_per_s", "train_images_per_s_with_data", "train_flops_per_image", "mfu", "diverged_block",
               "diverged_phase", "spikes", "spikes_total", "diversity", "diversity_ema")
