"""Stability instrumentation: per-block norms, spikes, divergence, token diversity, attention statistics, MFU."""
