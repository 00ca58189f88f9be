"""One run folder's life, from its identity to its record.

- :mod:`~vitstem.runs.identity`: the settings that define a run (and the one list of those that do not);
- :mod:`~vitstem.runs.folder`: train, resume, skip or refuse a folder; rank 0 decides for every rank;
- :mod:`~vitstem.runs.guard`: the same refusals before Hydra writes into a folder (a run, a sweep's jobs);
- :mod:`~vitstem.runs.lock`: one writer per folder;
- :mod:`~vitstem.runs.record`: status, error, ``results.json``, summary, as one context manager;
- :mod:`~vitstem.runs.results`: ``results.json`` (its one writer and one reader) and the summary table;
- :mod:`~vitstem.runs.checkpoint` writes ``checkpoints/last.ckpt`` (on a schedule, on signals; exact continuation),
  :mod:`~vitstem.runs.restore` reads checkpoints (``ckpt_path``, ``init_from``).
"""
