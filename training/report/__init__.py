"""``trustgc report``: the trustworthiness report (paper Sec. 4.1-4.3 analogs) as markdown + PNG.

For a set of IB-INN models (a beta sweep) and a discriminative baseline it measures, writes
``README.md``, ``results.json`` and the figures into one directory:

- Table 2 / Fig. 2: test L_X, L_Y, bits/dim, accuracy, top-1 ECE, the authors' ECE and OCE
  (:func:`training.evaluate.metrics_from_outputs` on one forward pass over the test images;
  ``evaluate_model`` is exactly that pass plus this function), and the trade-off curves.
- Table 3: the 15 corruptions of :mod:`training.corruptions` at 5 severities on a test subset:
  clean error, corruption error, mCE and relative mCE (normalised by the baseline), entropy
  increase, and the OoD ROC-AUC of the production statistic per corruption.
- OoD table: ROC-AUC per OoD set of :mod:`training.ood` for the production statistic, the
  paper's two-sided test and the one-sided likelihood; max-posterior for the baseline.
- Fig. 7: Carlini-Wagner attacks (kappa x d) through :func:`training.attack_eval.evaluate_attacks`.
- Figs. 3-5: decision spaces, class similarity and posterior heatmaps (:mod:`trustgc.plots`).

p-values need calibrated models: every IB-INN is copied to ``WORK/models/NAME`` and calibrated
there with :func:`training.calibrate.calibrate_artifact` (sources are never modified).  Results
of each (stage, model) are cached under ``WORK/cache`` keyed by the weights' hash and the
settings, so an interrupted run resumes where it stopped.  ``quick`` uses small subsets (and
calibrates on a subset of the held-out split) to check the pipeline in a few minutes.

The package, one job per module: :mod:`~training.report.options` (what to measure),
:mod:`~training.report.models` (calibrated copies and the baseline),
:mod:`~training.report.cache` (results per stage and model), :mod:`~training.report.scoring`
(one forward pass: posteriors and OoD scores), :mod:`~training.report.stages` (clean, OoD and
corruption stages), :mod:`~training.report.attack` and :mod:`~training.report.explain` (the
attack and explainability stages), :mod:`~training.report.plots` (the report's figures),
:mod:`~training.report.markdown`, :mod:`~training.report.findings` and
:mod:`~training.report.formatting` (the README) and :mod:`~training.report.build`
(:func:`build_report`, which runs them in order).
"""

from __future__ import annotations

from training.report.attack import _write_idx_subset as _write_idx_subset
from training.report.build import build_report
from training.report.cache import _Cache as _Cache
from training.report.options import QUICK, ReportOptions, quick_options
from training.report.stages import _corruption_summary as _corruption_summary

__all__ = ["QUICK", "ReportOptions", "build_report", "quick_options"]
