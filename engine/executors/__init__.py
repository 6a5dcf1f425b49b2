"""Executors: where the embedding stage and the (model, dataset) pairs of a run execute.

``local`` (the default) is this process: :class:`clipeval.engine.embedding.local.LocalExecutor`
decodes in threads or processes and runs the towers here. ``ray`` runs the same work on a Ray
cluster (``pip install 'clipeval[ray]'``; docs/scale.md); the runner
(:mod:`clipeval.engine.runner`) connects and picks what runs there:

* :mod:`.ray_embed` — :class:`~.ray_embed.RayExecutor`, the embedding stage's executor
  (:mod:`clipeval.engine.embedding.executor`) on the cluster: the rows that miss the embedding
  cache become a Ray Dataset; decoding and preprocessing run as CPU tasks (``map_batches``),
  each tower in a pool of actors (one onnxruntime session per actor, opened once from the
  bundle; one GPU per actor where the cluster has GPUs). Embeddings come back to the driver,
  whose embedding stage writes the cache and returns them in input order; the task ranks them
  with the same kernels as a local run.
* :mod:`.ray_pairs` — several (model, dataset) pairs of one config as concurrent Ray tasks, each
  writing its result file as a local run does.
* :mod:`.shipping` — bundles travel to the workers through the object store, verified there.
* :mod:`.rows` — the rows a gallery becomes (paths, URLs, webdataset shard ranges, bytes).
* :mod:`.ray_cluster` — connecting, and keeping Ray's console output out of stdout.

Only the ``ray`` executor imports Ray, and only when a run asks for it: ``local`` runs, and the
runtime install without the extra, never import it.
"""

EXECUTORS = ("local", "ray")
