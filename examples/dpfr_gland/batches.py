"""Data for training: the datasets of a config, weak views, and resumable batch streams.

Every view is drawn from a generator seeded by ``(seed, stream, rank, serial)`` and every
batch ``t`` is a pure function of the stream's arguments and ``t``, so a resumed run sees
the very batches the interrupted one would have.
"""

from __future__ import annotations

__all__ = ["BatchStream", "ViewDataset", "build_datasets", "build_test_sets", "evaluation_splits"]

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from . import augment
from .config import TrainConfig
from .data import CRAGDataset, FolderDataset, GlaSDataset, PairedDataset
from .scale import ScaledDataset
from .synthetic import SyntheticGlands
from .tasks import TASKS, Task
from .tiling import STRIDE


def minority_indices(seed: int, start: int, count: int, share: float) -> set[int]:
    """Which synthetic indices ``start .. start + count - 1`` show the minority appearance: each
    independently with probability ``share``, from a generator keyed by ``(seed, index)``.

    Example:
        >>> sorted(minority_indices(0, 0, 20, 0.0)), len(minority_indices(0, 0, 20, 1.0))
        ([], 20)
    """
    return {i for i in range(start, start + count) if np.random.default_rng([seed, i, 7919]).random() < share}


class _SyntheticSplit:
    """Synthetic glands ``start .. start + count - 1``, drawn once and held in memory; with
    ``mix = (preset, share)`` a ``share`` of them (by :func:`minority_indices`) come from that
    preset instead, a minority appearance."""

    def __init__(
        self, preset: str, size: int, seed: int, start: int, count: int, mix: tuple[str, float] | None = None
    ) -> None:
        glands = SyntheticGlands(preset=preset, size=size, seed=seed)
        minority = set() if mix is None else minority_indices(seed, start, count, mix[1])
        other = None if mix is None else SyntheticGlands(preset=mix[0], size=size, seed=seed + 1)
        self.samples = [(other if start + i in minority else glands).sample(start + i) for i in range(count)]
        self.names = [f"synth_{start + i}" + ("_minority" if start + i in minority else "") for i in range(count)]
        self.minority = sorted(i - start for i in minority)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.samples[index]


def evaluation_splits(config: TrainConfig) -> list[str]:
    """The test splits a config names: ``test_split`` may list several, comma-separated
    (GlaS ``"testA,testB"``, reported separately); the synthetic and folder sets have one.

    Example:
        >>> evaluation_splits(TrainConfig(dataset="glas", data="x", test_split="testA, testB"))
        ['testA', 'testB']
    """
    if config.dataset == "synthetic" or (config.dataset == "folder" and not config.split_file):
        return ["test"]
    return [part.strip() for part in config.test_split.split(",") if part.strip()]


def build_test_sets(config: TrainConfig) -> dict[str, Any]:
    """Every test split of ``config`` by name (empty when there is none to test on).

    Example:
        >>> sets = build_test_sets(TrainConfig(synthetic_train=2, synthetic_test=1))
        >>> list(sets), len(sets["test"])
        (['test'], 1)
    """
    if config.split_file:
        return {split: split_part(config, split) for split in evaluation_splits(config)}
    if config.dataset == "synthetic" or (config.dataset == "folder"):
        test = _native_datasets(config)[1]
        return {} if test is None else {"test": test}
    root = Path(config.data)
    reader = GlaSDataset if config.dataset == "glas" else CRAGDataset
    return {split: reader(root, split) for split in evaluation_splits(config)}


def split_part(config: TrainConfig, part: str) -> PairedDataset:
    """The images of one part of ``config.split_file``, found among every reader split of the
    ``data`` folder (GlaS ``train``/``testA``/``testB``, CRAG ``train``/``valid``, a plain folder).

    Raises:
        ValueError: the file is not a JSON object of name lists, lacks ``part`` (the parts it has
            are named), or names images the folder does not hold (all of them named).

    Example:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from examples.dpfr_gland.data import write_synthetic
        >>> root = write_synthetic(tempfile.mkdtemp(), "glas", 4, size=32)
        >>> split = Path(root) / "split.json"
        >>> _ = split.write_text(json.dumps({"a": ["train_2", "testA_1"], "b": ["train_1"]}))
        >>> split_part(TrainConfig(dataset="glas", data=str(root), split_file=str(split)), "a").names
        ['train_2', 'testA_1']
    """
    from .config import resolve_split_file

    path = resolve_split_file(config.split_file)
    try:
        parts = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"split_file {path} is not valid JSON: {error}") from None
    parts = {k: v for k, v in parts.items() if not k.startswith("_")} if isinstance(parts, dict) else None
    if not parts or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in parts.values()):
        raise ValueError(
            f"split_file {path} must hold a JSON object of image-name lists, e.g. "
            f'{{"train": ["train_1", ...], "test": [...]}}'
        )
    if part not in parts:
        raise ValueError(f"split_file {path} has no part {part!r}; it has {', '.join(map(repr, parts))}")
    if not config.data:
        raise ValueError(f"data must name the {config.dataset} folder that split_file {path} refers to")
    root = Path(config.data)
    pool: dict[str, tuple[Path, Path]] = {}
    if config.dataset == "folder":
        readers: list[Any] = [lambda: FolderDataset(root / "images", root / "masks")]
    else:
        reader = GlaSDataset if config.dataset == "glas" else CRAGDataset
        names = ("train", "testA", "testB") if config.dataset == "glas" else ("train", "valid")
        readers = [lambda split=split: reader(root, split) for split in names]
    for make in readers:
        try:
            dataset = make()
        except (FileNotFoundError, ValueError):  # a reader split this folder does not have
            continue
        pool.update({n: (i, a) for n, i, a in zip(dataset.names, dataset.image_paths, dataset.annotation_paths)})
    missing = [name for name in parts[part] if name not in pool]
    if missing:
        raise ValueError(
            f"split_file {path} part {part!r} names {len(missing)} image(s) that {root} does not "
            f"hold: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    chosen = parts[part]
    dataset = PairedDataset([pool[n][0] for n in chosen], [pool[n][1] for n in chosen], names=chosen)
    grades = root / "Grade.csv"
    if config.dataset == "glas" and grades.is_file():
        from .data import read_glas_grades

        table = read_glas_grades(grades)
        dataset.grades = [table.get(n) for n in chosen]  # type: ignore[attr-defined]
    return dataset


def build_datasets(config: TrainConfig) -> tuple[Any, Any | None]:
    """The training and test datasets of ``config`` (map-style, ``(image, instances)`` items).

    The training set is at the network's ``scale`` (:class:`~examples.dpfr_gland.scale.ScaledDataset`),
    the test set native: evaluation resamples each image and scores on the native grid.

    Args:
        config: the run's configuration.

    Returns:
        ``(train, test)``; ``test`` is ``None`` when the layout has no test split to use.

    Raises:
        ValueError: ``data`` is empty for a dataset that reads files (names the key).

    Example:
        >>> train, test = build_datasets(TrainConfig(synthetic_train=2, synthetic_test=1))
        >>> len(train), len(test), train[0][0].shape
        (2, 1, (128, 128, 3))
    """
    train, test = _native_datasets(config)
    if config.scale != 1:  # the network trains at its scale; tests stay native (scored on the native grid)
        train = ScaledDataset(train, config.scale, minimum=STRIDE)
    return train, test


def _native_datasets(config: TrainConfig) -> tuple[Any, Any | None]:
    if config.dataset == "synthetic":
        size = config.synthetic_size
        seed = config.seed if config.synthetic_seed < 0 else config.synthetic_seed
        mix = None
        if config.synthetic_mix:
            preset, share = config.synthetic_mix.split(":")
            mix = (preset, float(share))
        train = _SyntheticSplit(config.synthetic_preset, size, seed, 0, config.synthetic_train, mix)
        test = _SyntheticSplit(config.synthetic_preset, size, seed, config.synthetic_train, config.synthetic_test, mix)
        return train, test
    if not config.data:
        raise ValueError(
            f"data must name the {config.dataset} folder for dataset={config.dataset!r} "
            f"(e.g. --set data=/path/to/{config.dataset})"
        )
    root = Path(config.data)
    if config.split_file:
        return split_part(config, config.train_split), split_part(config, evaluation_splits(config)[0])
    if config.dataset in ("glas", "crag"):  # the first test split (build_test_sets has them all)
        reader = GlaSDataset if config.dataset == "glas" else CRAGDataset
        return reader(root, config.train_split), reader(root, evaluation_splits(config)[0])
    train = FolderDataset(root / "images", root / "masks")
    test = (
        FolderDataset(Path(config.test_data) / "images", Path(config.test_data) / "masks") if config.test_data else None
    )
    return train, test


class ViewDataset:
    """Weak views of a subset of a dataset, each drawn from its own seeded generator.

    Items are requested as ``(k, serial)`` pairs (from :class:`BatchStream`): ``k`` picks
    ``base[indices[k]]`` and ``serial`` (the item's position in this rank's stream) seeds
    its view, so a view does not depend on workers or on where a run was resumed.

    Args:
        base: a map-style dataset of ``(image uint8 [H, W, 3], instances int32 [H, W])``.
        indices: the subset (labelled or unlabelled indices of ``base``).
        crop_size: the weak view's side.
        seed: run seed.
        stream: 0 for the labelled stream, 1 for the unlabelled one.
        rank: the process rank.
        labelled: also return the 3-class targets.
        contour_width: contour width of the targets.
        task: the :class:`~examples.dpfr_gland.tasks.Task` (or its name) whose targets the labelled
            views get: ``"instance"`` (3 classes from the instance map) or ``"semantic"``
            (:func:`~examples.dpfr_gland.targets.semantic_targets` of the mask).
        num_classes: ``K`` of the semantic task.

    Shapes:

        - item (labelled): ``(image float32 [3, S, S], classes int64 [S, S] in 0..2)``.
        - item (unlabelled): ``image float32 [3, S, S]``.

    Example:
        >>> import numpy as np
        >>> len(ViewDataset([(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.int32))], [0], 32))
        1
    """

    def __init__(
        self,
        base: Any,
        indices: Sequence[int],
        crop_size: int,
        seed: int = 0,
        stream: int = 0,
        rank: int = 0,
        labelled: bool = True,
        contour_width: int = 2,
        task: Task | str = "instance",
        num_classes: int = 2,
    ) -> None:
        self.task, self.num_classes = TASKS[task] if isinstance(task, str) else task, num_classes
        self.base, self.indices = base, [int(i) for i in indices]
        self.crop_size, self.seed, self.stream, self.rank = crop_size, seed, stream, rank
        self.labelled, self.contour_width = labelled, contour_width

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        k, serial = item
        image, instances = self.base[self.indices[k]]
        rng = np.random.default_rng([self.seed, self.stream, self.rank, serial])
        image, instances = augment.weak_view(image, instances, rng, self.crop_size)
        tensor = augment.to_tensor(image)
        if not self.labelled:
            return tensor
        classes = self.task.targets(
            instances, self.contour_width, self.num_classes, name=f"mask of image {self.indices[k]}"
        )
        return tensor, torch.from_numpy(classes.astype(np.int64))


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class BatchStream:
    """An endless, resumable stream of batches of ``(k, serial)`` items for one rank.

    Epoch ``e`` visits this rank's share of a :class:`~torch.utils.data.DistributedSampler`
    permutation (seeded by ``seed`` and ``e``); the stream runs on across epochs, so a
    subset smaller than a batch still fills batches. Batch ``t`` is a pure function of
    ``(size, batch_size, seed, rank, world_size, t)``: starting at ``start`` gives the
    same batches as skipping ``start`` batches, without loading them.

    Args:
        size: the number of items.
        batch_size: items per batch.
        seed: shuffling seed.
        rank: this process's rank.
        world_size: the number of processes.
        start: the first batch to yield.

    Example:
        >>> stream = iter(BatchStream(5, 2, seed=0))
        >>> first, second = next(stream), next(stream)
        >>> next(iter(BatchStream(5, 2, seed=0, start=1))) == second
        True
        >>> [serial for _, serial in first]
        [0, 1]
    """

    def __init__(
        self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1 (a non-empty subset), got {size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def _epoch(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(
            _Sized(self.size), num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = len(self._epoch(0))
        serial = self.start * self.batch_size
        epoch, offset = divmod(serial, per_epoch)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == per_epoch:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                batch.append((order[offset], serial))
                offset, serial = offset + 1, serial + 1
            yield batch


def _loader(dataset: ViewDataset, stream: BatchStream, num_workers: int, pin: bool) -> Iterator[Any]:
    return iter(
        DataLoader(
            dataset, batch_sampler=stream, num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0
        )
    )
