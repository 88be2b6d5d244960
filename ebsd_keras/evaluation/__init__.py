"""Fidelity evaluation: the paper's metrics, dictionary indexing + refinement, reports and figures.

- :mod:`ebsd_keras.evaluation.metrics` (numpy): BCE per pattern, optimal BCE, pixel tolerance, NCC, summaries,
  disorientation statistics.
- :mod:`ebsd_keras.evaluation.indexing` (kikuchipy, orix, nlopt): :class:`~ebsd_keras.evaluation.indexing.Indexer`
  (dictionary indexing, BOBYQA and kikuchipy refinement).
- :mod:`ebsd_keras.evaluation.report`: :func:`~ebsd_keras.evaluation.report.evaluate_generator` on a plain
  ``generate_fn(quaternion, voltage_kv) -> patterns`` and :func:`~ebsd_keras.evaluation.report.write_report`.
- :mod:`ebsd_keras.evaluation.figures`: pattern grids.

Submodules are imported on use: the metrics need only numpy, the indexing needs the GPL ``emsoft`` extra.
"""
