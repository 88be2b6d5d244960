"""Fidelity evaluation of a pattern generator: the paper's metrics on a held-out test set, reports and figures.

- :mod:`~ebsd_keras.evaluation.run`: :func:`~ebsd_keras.evaluation.run.evaluate_generator` on a plain
  ``generate_fn(quaternion, voltage_kv) -> patterns`` (settings in
  :class:`~ebsd_keras.evaluation.run.EvaluationSettings`) and :func:`~ebsd_keras.evaluation.run.write_report`;
- :mod:`~ebsd_keras.evaluation.metrics` (numpy): BCE per pattern, optimal BCE, pixel tolerance, NCC, summaries,
  disorientation statistics;
- :mod:`~ebsd_keras.evaluation.markdown` (``report.md``) and :mod:`~ebsd_keras.evaluation.figures` (histograms);
- :mod:`~ebsd_keras.evaluation.voltage`: the wrong-voltage table (paper Fig 5) and band width vs kV;
- :mod:`~ebsd_keras.evaluation.pattern_centre`: generation and refinement at other pattern centres.

Built on :mod:`ebsd_keras.indexing` (dictionary indexing, refinement), :mod:`ebsd_keras.serving` (models) and
:mod:`ebsd_keras.io.testset`; nothing below imports this package. Submodules are imported on use: the metrics
need only numpy, the indexing needs the GPL ``emsoft`` extra.
"""
