"""Evaluation: per-cell metrics, robustness summaries over a grid, the runner and its store.

``metrics`` scores one (model, dataset, corruption, severity) cell; ``robustness`` turns a grid
of cell errors into CE, mCE, relative mCE, BE and rBE against a baseline; ``runner`` evaluates
a grid into a :class:`ResultsStore` (``sharding`` splits it across processes and hosts,
``merge`` joins the shards' stores); ``baselines`` holds the published AlexNet baselines;
``uncertainty`` bootstraps any of them over the test images (confidence intervals, paired
differences). Every public metric and summary is exported here (each module's ``__all__``
lists them).
"""

from . import metrics, robustness, uncertainty
from .merge import MergeError, MergeSummary, merge_run
from .metrics import *  # noqa: F403
from .robustness import *  # noqa: F403
from .runner import GridSpec, RunSummary, run_grid
from .sharding import Shard, parse_shard, shard_from_env
from .store import CellKey, ResultsStore, StoreError
from .uncertainty import *  # noqa: F403

__all__ = [
    "CellKey", "GridSpec", "MergeError", "MergeSummary", "ResultsStore", "RunSummary", "Shard",
    "StoreError", "merge_run", "parse_shard", "run_grid", "shard_from_env",
]
__all__ += metrics.__all__
__all__ += robustness.__all__
__all__ += uncertainty.__all__
