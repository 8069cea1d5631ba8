"""Classification accuracy as an ``evaluate`` metric.

Definition (same as scikit-learn's ``accuracy_score`` and the Hugging Face ``evaluate`` "accuracy" metric)::

    accuracy = sum_i w_i * [prediction_i == reference_i] / sum_i w_i      (normalize=True, the default)
    accuracy = sum_i w_i * [prediction_i == reference_i]                  (normalize=False)

with ``w_i = 1`` unless ``sample_weight`` is given. Unlike the VQA-style metrics in ``hive_hf.metrics``, the value
is a fraction in ``[0, 1]`` (not a percentage), to stay drop-in compatible with ``evaluate.load("accuracy")``.

The script is self-contained (only the standard library, ``datasets`` and ``evaluate``) because ``evaluate.load``
copies this single file into its module cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate

_DESCRIPTION = """
Accuracy: the proportion of correct predictions among all predictions,
(TP + TN) / (TP + TN + FP + FN) for binary tasks. Returned as a fraction in [0, 1] (or a weighted count of
correct predictions when `normalize=False`). An empty input raises a ValueError instead of returning a score.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): ground-truth class ids, same length as `predictions`.
    normalize (`bool`, defaults to `True`): if `False`, return the (weighted) number of correct predictions
        instead of the fraction.
    sample_weight (`list` of `float`, *optional*): one non-negative weight per example.

Returns:
    `dict` with key `"accuracy"` (`float`).

Examples:
    >>> accuracy = evaluate.load(metric_path("accuracy"))
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], normalize=False)
    {'accuracy': 3.0}
    >>> accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0], sample_weight=[0.5, 0.5, 1.0])
    {'accuracy': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def _check_inputs(metric: str, **columns: Sequence) -> int:
    """Validate that the input columns are non-empty and of equal length; return that length."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{metric}: all inputs must have the same length, got {lengths}.")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(
            f"{metric}: got 0 examples. Pass at least one prediction/reference pair (an empty evaluation has no "
            "meaningful score, so this metric refuses to return one)."
        )
    return n


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Classification accuracy with optional normalisation and per-example weights."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(
        self,
        predictions: Sequence[int],
        references: Sequence[int],
        normalize: bool = True,
        sample_weight: Sequence[float] | None = None,
    ) -> dict[str, float]:
        n = _check_inputs("accuracy", predictions=predictions, references=references)
        if sample_weight is None:
            weights = [1.0] * n
        else:
            weights = [float(w) for w in sample_weight]
            if len(weights) != n:
                raise ValueError(
                    f"accuracy: sample_weight has {len(weights)} entries but there are {n} predictions; "
                    "pass exactly one weight per example."
                )
            if any(w < 0 for w in weights):
                raise ValueError("accuracy: sample_weight must be non-negative.")
        correct = sum(w for p, r, w in zip(predictions, references, weights) if p == r)
        if not normalize:
            return {"accuracy": float(correct)}
        total = sum(weights)
        if total == 0:
            raise ValueError("accuracy: sample_weight sums to 0, so the weighted mean is undefined.")
        return {"accuracy": float(correct / total)}
