"""What training and serving share, defined once (docs/architecture.md, "The contract").

- :mod:`contract.ids`: raw ids, their canonical spelling, :class:`~contract.ids.Vocab` (id → row).
- :mod:`contract.schema`: the impression-log columns, the tasks, days, the history length.
- :mod:`contract.log`: reading, validating and writing impression logs (pandas, pyarrow).
- :mod:`contract.knowledge`: the knowledge layout (block dims and names) a model depends on.
- :mod:`contract.downstream`: the downstream model's config.
- :mod:`contract.extractor`: the knowledge extractor's config and its checkpoint's metadata.
- :mod:`contract.artifact`: a trained downstream model on disk (torch).

Dependency rule: ``contract`` imports only the standard library, numpy, ``services.errors`` and itself;
``contract.log`` also pandas/pyarrow, ``contract.artifact`` also torch. ``gkc`` may import ``ids``,
``schema`` and ``knowledge`` only (it never imports torch or pandas; a test proves it).
"""
