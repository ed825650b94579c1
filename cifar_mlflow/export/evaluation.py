"""Scores of a model's test-set predictions, computed with scikit-learn: accuracy, the confusion
matrix (and its chart) and per-class precision, recall and F1. No MLflow here: job.py logs
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure


@dataclass(frozen=True)
class Evaluation:
    classes: tuple[str, ...]
    accuracy: float
    confusion: np.ndarray  # (C, C) counts: row = true class, column = predicted class
    precision: np.ndarray  # (C,) per class
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray  # (C,) test images of each class

    @property
    def num_images(self) -> int:
        return int(self.support.sum())

    def per_class_table(self) -> dict[str, list]:
        """Columns of the per-class table, in class order."""
        return {
            "class": list(self.classes),
            "precision": self.precision.round(4).tolist(),
            "recall": self.recall.round(4).tolist(),
            "f1": self.f1.round(4).tolist(),
            "support": self.support.tolist(),
        }

    def summary_metrics(self) -> dict[str, float]:
        return {
            "test_acc": self.accuracy,
            "macro_precision": float(self.precision.mean()),
            "macro_recall": float(self.recall.mean()),
            "macro_f1": float(self.f1.mean()),
        }

    def model_scores(self) -> dict[str, float]:
        """The scores a logged model carries beside the accuracy its run logged (`test_acc`):
        named for the split they were measured on."""
        return {f"test_{k}": v for k, v in self.summary_metrics().items() if k != "test_acc"}

    def confusion_figure(self) -> Figure:
        """The confusion matrix as a chart with the class names on both axes."""
        from sklearn.metrics import ConfusionMatrixDisplay

        # A bare Figure, not pyplot: nothing global to close, and no display backend needed.
        figure = Figure(figsize=(7.5, 6.5), layout="constrained")
        ax = figure.subplots()
        display = ConfusionMatrixDisplay(self.confusion, display_labels=list(self.classes))
        display.plot(ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False, values_format="d")
        for label in ax.get_xticklabels():  # rotated names end under their column
            label.set(horizontalalignment="right", rotation_mode="anchor")
        ax.set_title(f"Test confusion matrix ({self.num_images} images, "
                     f"accuracy {self.accuracy:.4f})")  # fmt: skip
        return figure


def evaluate(labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> Evaluation:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    every_class = list(range(len(classes)))  # classes absent from a tiny test set still get a row
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=every_class, zero_division=0
    )
    return Evaluation(
        classes=tuple(classes),
        accuracy=float(accuracy_score(labels, predicted)),
        confusion=confusion_matrix(labels, predicted, labels=every_class),
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
    )
