"""``medrobust.evaluation`` exports every public metric and robustness summary."""

from __future__ import annotations

import inspect

import medrobust.evaluation as evaluation
from medrobust.evaluation import metrics, robustness, uncertainty


def test_every_public_metric_and_summary_is_exported() -> None:
    assert len(evaluation.__all__) == len(set(evaluation.__all__))
    for module in (metrics, robustness, uncertainty):
        public = {name for name, obj in vars(module).items()
                  if (inspect.isfunction(obj) or inspect.isclass(obj))
                  and obj.__module__ == module.__name__ and not name.startswith("_")}
        assert public <= set(module.__all__), f"{module.__name__}: {public - set(module.__all__)}"
        for name in module.__all__:
            assert getattr(evaluation, name) is getattr(module, name), name
    assert {"cell_metrics", "mean_corruption_error", "relative_mean_corruption_error",
            "balanced_error_ratio", "RobustnessSummary", "ErrorGrid"} <= set(evaluation.__all__)
