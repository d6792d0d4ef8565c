"""Training reports: the history of a run, loggers, and a report folder of plots and tables.

* :mod:`~hydranet.report.history`: :class:`History` (one :class:`EpochLog` per epoch) and
  :class:`DiagnosticsMeter` (a balancer's diagnostics averaged over an epoch);
* :mod:`~hydranet.report.loggers`: :class:`CSVLogger` (long format, one line per value) and
  :class:`TensorBoardLogger` (the ``tensorboard`` extra);
* :mod:`~hydranet.report.summary`: :func:`write_report`: ``summary.md`` (main metric per task, its
  baseline, relative change and Δm), ``metrics.json``, ``history.json``;
* :mod:`~hydranet.report.plots`: the figures (``loss.png``, ``metrics.png``, ``weights.png``,
  ``grad_norms.png``, ``cosines.png``, ``confusion_<task>.png``; the ``report`` extra, matplotlib).
"""

from hydranet.report.history import DiagnosticsMeter, EpochLog, History
from hydranet.report.loggers import CSVLogger, TensorBoardLogger
from hydranet.report.summary import Report, write_report

__all__ = ["CSVLogger", "DiagnosticsMeter", "EpochLog", "History", "Report", "TensorBoardLogger", "write_report"]
