"""What a run segments: the two tasks of the recipe as objects, so no code compares the task by name.

A :class:`Task` carries what differs between the tasks: the classes and their names, the
training targets made from a label map, how a network is scored on a dataset (and the pictures
that go with the scores), the table the scores print as, and whether the task has gland
instances (instance maps, GeoJSON, object metrics).

- :data:`INSTANCE` (GlaS, CRAG): 3 classes — background, gland interior, contour — made from
  instance maps (:func:`~examples.dpfr_gland.targets.instances_to_classes`), scored with the GlaS
  object metrics after the interiors are grown back to glands
  (:func:`~examples.dpfr_gland.evaluate.evaluate`).
- :data:`SEMANTIC` (PGland): ``K`` classes straight from the masks
  (:func:`~examples.dpfr_gland.targets.semantic_targets`), scored with pixel F1, Dice and mIoU
  (:func:`~examples.dpfr_gland.evaluate.evaluate_semantic`).

:func:`task_of` gives a config's (or a stored config dict's) task.
"""

from __future__ import annotations

__all__ = ["INSTANCE", "SEMANTIC", "TASKS", "Task", "task_of"]

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .targets import instances_to_classes, semantic_targets

Kwargs = dict[str, Any]


class Task:
    """One task of the recipe (see the module docstring); :data:`INSTANCE` and :data:`SEMANTIC`
    are its two instances.

    Attributes:
        name: the config's ``task`` value.
        has_instances: whether predictions are gland instances (instance maps, GeoJSON,
            object metrics).

    Example:
        >>> task_of({"task": "semantic", "semantic_classes": 2}).class_names(2)
        ('background', 'gland')
    """

    name = ""
    has_instances = False

    def num_classes(self, semantic_classes: int) -> int:
        """The network's output classes (``semantic_classes``: ``K`` of the semantic task)."""
        raise NotImplementedError

    def class_names(self, num_classes: int) -> tuple[str, ...]:
        """The classes' names in logs and tables."""
        raise NotImplementedError

    def targets(
        self, labels: np.ndarray, contour_width: int = 2, num_classes: int = 2, name: str = "mask"
    ) -> np.ndarray:
        """The training targets of a label map as read from disk.

        Shapes:
            - labels: ``[H, W]`` integer (instance ids, or a mask) -> ``[H, W]`` classes ``0..K-1``
        """
        raise NotImplementedError

    def score(
        self,
        model: nn.Module,
        dataset: Any,
        *,
        num_classes: int,
        tile: int,
        overlap: int | None,
        min_size: int,
        dilation: int,
        amp: bool,
        scale: float,
        limit: int | None = None,
        batch_size: int = 4,
        pictures: Path | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """The network's scores on ``dataset`` (``pictures``: a folder for the pictures that go with them;
        ``min_size``, ``dilation`` and ``pictures`` are for the instance task)."""
        common = dict(
            tile=tile, overlap=overlap, batch_size=batch_size, amp=amp, limit=limit, progress=progress, scale=scale
        )
        instance_only = dict(min_size=min_size, dilation=dilation, out=pictures)
        return dict(self._score(model, dataset, common, instance_only, num_classes))

    def _score(self, model: nn.Module, dataset: Any, common: Kwargs, instance_only: Kwargs, num_classes: int) -> Any:
        raise NotImplementedError

    def table(self, rows: dict[str, dict[str, Any]], first: str = "run") -> str:
        """Scores of :meth:`score` as a Markdown table, one row per entry."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Instance(Task):
    name, has_instances = "instance", True

    def num_classes(self, semantic_classes: int) -> int:
        return 3

    def class_names(self, num_classes: int) -> tuple[str, ...]:
        return ("background", "interior", "contour")

    def targets(
        self, labels: np.ndarray, contour_width: int = 2, num_classes: int = 2, name: str = "mask"
    ) -> np.ndarray:
        return instances_to_classes(np.ascontiguousarray(labels), contour_width=contour_width)

    def _score(self, model: nn.Module, dataset: Any, common: Kwargs, instance_only: Kwargs, num_classes: int) -> Any:
        from . import evaluate

        return evaluate.evaluate(model, dataset, **common, **instance_only)

    def table(self, rows: dict[str, dict[str, Any]], first: str = "run") -> str:
        from . import evaluate

        return evaluate.score_table(rows, first=first)


class _Semantic(Task):
    name, has_instances = "semantic", False

    def num_classes(self, semantic_classes: int) -> int:
        return semantic_classes

    def class_names(self, num_classes: int) -> tuple[str, ...]:
        return ("background", "gland") if num_classes == 2 else tuple(f"class{c}" for c in range(num_classes))

    def targets(
        self, labels: np.ndarray, contour_width: int = 2, num_classes: int = 2, name: str = "mask"
    ) -> np.ndarray:
        return semantic_targets(labels, num_classes, name=name)

    def _score(self, model: nn.Module, dataset: Any, common: Kwargs, instance_only: Kwargs, num_classes: int) -> Any:
        from . import evaluate

        return evaluate.evaluate_semantic(model, dataset, num_classes, **common)

    def table(self, rows: dict[str, dict[str, Any]], first: str = "run") -> str:
        from . import evaluate

        return evaluate.semantic_table(rows, first=first)


#: The instance task (GlaS, CRAG).
INSTANCE: Task = _Instance()
#: The semantic task (PGland).
SEMANTIC: Task = _Semantic()
#: The tasks by their config name.
TASKS: dict[str, Task] = {t.name: t for t in (INSTANCE, SEMANTIC)}


def task_of(config: Any) -> Task:
    """The task of a :class:`~examples.dpfr_gland.config.TrainConfig` or of a stored config dict
    (``"instance"`` when it names none, as configs from before the semantic task).

    Args:
        config: a config, or a dict with an optional ``"task"``.

    Raises:
        ValueError: an unknown task name.

    Example:
        >>> task_of({}).name, task_of({"task": "semantic"}).has_instances
        ('instance', False)
    """
    name = config.get("task", "instance") if isinstance(config, dict) else config.task
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {name!r}")
    return TASKS[name]
