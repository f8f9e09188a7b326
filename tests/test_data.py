"""Gland data readers, label-ratio splits and the data command line (examples/dpfr_gland/data.py).

Oracles: the arrays the tests themselves write to disk with Pillow (readers must give them back
exactly), integer round-half-up arithmetic (split sizes), and the synthetic generator's own
in-memory samples (the on-disk round trip).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from examples.dpfr_gland.data import (
    CRAGDataset,
    FolderDataset,
    GlaSDataset,
    PairedDataset,
    label_split,
    main,
    parse_ratio,
    read_glas_grades,
    read_image,
    read_instances,
    read_pair,
    write_instances,
    write_synthetic,
)
from examples.dpfr_gland.synthetic import SyntheticGlands


def _image(rng: np.random.Generator, h: int = 6, w: int = 5) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _labels(rng: np.random.Generator, h: int = 6, w: int = 5, high: int = 4) -> np.ndarray:
    return rng.integers(0, high, size=(h, w)).astype(np.int32)


def _save_rgb(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="RGB").save(path)


def _save_grey(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(path)


def _name_in(path) -> str:
    """A regex that matches the path literally inside an error message."""
    return re.escape(str(path))


# ----------------------------------------------------------------------------- GlaS


@pytest.fixture
def glas_root(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for split, numbers in (("train", (1, 2, 10)), ("testA", (1,)), ("testB", (3,))):
        for n in numbers:
            image, labels = _image(rng), _labels(rng)
            _save_rgb(tmp_path / f"{split}_{n}.bmp", image)
            _save_grey(tmp_path / f"{split}_{n}_anno.bmp", labels)
            written[f"{split}_{n}"] = (image, labels)
    # The released Grade.csv pads its header cells (and some values) with spaces.
    (tmp_path / "Grade.csv").write_text(
        "name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)\n"
        "testA_1,4, malignant, adenomatous\n"
        "train_1,1,benign , healthy\n"
        "train_10, 7, malignant, moderately differentiated\n"
        "testB_3,2, benign, healthy\n"
    )
    return tmp_path, written


def test_glas_reads_back_exact_pairs_in_numeric_order(glas_root):
    root, written = glas_root
    data = GlaSDataset(root, "train")
    assert data.names == ["train_1", "train_2", "train_10"]  # natural, not lexicographic order
    assert len(data) == 3
    for i, name in enumerate(data.names):
        image, instances = data[i]
        assert image.dtype == np.uint8 and image.shape == (6, 5, 3)
        assert instances.dtype == np.int32 and instances.shape == (6, 5)
        np.testing.assert_array_equal(image, written[name][0])
        np.testing.assert_array_equal(instances, written[name][1])
    np.testing.assert_array_equal(data[-1][1], written["train_10"][1])
    with pytest.raises(IndexError):
        data[3]


def test_glas_grades_per_sample_from_padded_csv(glas_root):
    root, _ = glas_root
    assert GlaSDataset(root, "train").grades == ["benign", None, "malignant"]  # train_2 has no row
    assert GlaSDataset(root, "testA").grades == ["malignant"]
    assert GlaSDataset(root, "testB").names == ["testB_3"]
    assert read_glas_grades(root / "Grade.csv") == {
        "testA_1": "malignant",
        "train_1": "benign",
        "train_10": "malignant",
        "testB_3": "benign",
    }


def test_glas_without_grade_file_has_no_grades(glas_root):
    root, _ = glas_root
    (root / "Grade.csv").unlink()
    assert GlaSDataset(root, "testA").grades == [None]


def test_grade_csv_without_grade_column_names_the_file(tmp_path):
    path = tmp_path / "Grade.csv"
    path.write_text("name, Patient ID\ntrain_1, 1\n")
    with pytest.raises(ValueError, match=_name_in(path)):
        read_glas_grades(path)


def test_glas_missing_annotation_names_the_file(glas_root):
    root, _ = glas_root
    (root / "train_2_anno.bmp").unlink()
    with pytest.raises(FileNotFoundError, match=_name_in(root / "train_2_anno")):
        GlaSDataset(root, "train")


def test_glas_corrupt_annotation_names_the_file(glas_root):
    root, _ = glas_root
    (root / "train_2_anno.bmp").write_bytes(b"BM this is not a bitmap")
    data = GlaSDataset(root, "train")
    with pytest.raises(ValueError, match=_name_in(root / "train_2_anno.bmp")):
        data[1]


def test_glas_size_mismatch_names_both_files(glas_root):
    root, _ = glas_root
    _save_grey(root / "train_1_anno.bmp", np.zeros((7, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=_name_in(root / "train_1_anno.bmp")) as error:
        GlaSDataset(root, "train")[0]
    assert str(root / "train_1.bmp") in str(error.value)


def test_glas_rgb_annotation_is_an_error_naming_the_file(glas_root):
    root, _ = glas_root
    colour = np.zeros((6, 5, 3), dtype=np.uint8)
    colour[1, 1] = (255, 0, 0)
    _save_rgb(root / "train_1_anno.bmp", colour)
    with pytest.raises(ValueError, match=_name_in(root / "train_1_anno.bmp")):
        GlaSDataset(root, "train")[0]


def test_glas_empty_folder_and_bad_split(tmp_path):
    with pytest.raises(ValueError, match=_name_in(tmp_path)):
        GlaSDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        GlaSDataset(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "nope")):
        GlaSDataset(tmp_path / "nope", "train")


# ----------------------------------------------------------------------------- annotation formats


def test_grey_rgb_annotation_is_accepted(tmp_path):
    labels = _labels(np.random.default_rng(1))
    _save_rgb(tmp_path / "a.png", np.repeat(labels[..., None], 3, axis=2).astype(np.uint8))
    np.testing.assert_array_equal(read_instances(tmp_path / "a.png"), labels)


def test_sixteen_bit_annotation_round_trips(tmp_path):
    labels = np.array([[0, 300, 65535], [1, 2, 4000]], dtype=np.int32)
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(read_instances(tmp_path / "a.png"), labels)
    np.testing.assert_array_equal(read_instances(tmp_path / "a.tif"), labels)
    write_instances(tmp_path / "b.png", labels)
    np.testing.assert_array_equal(read_instances(tmp_path / "b.png"), labels)


def test_palette_annotation_reads_the_indices(tmp_path):
    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    palette = Image.new("P", (2, 2))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])  # colour-coded palette
    palette.putdata(list(indices.ravel()))
    palette.save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as stored:
        assert stored.mode == "P"
    np.testing.assert_array_equal(read_instances(tmp_path / "p.png"), indices)


def test_write_instances_refuses_labels_a_bmp_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="bmp"):
        write_instances(tmp_path / "a.bmp", np.array([[0, 256]]))
    with pytest.raises(ValueError, match="instances"):
        write_instances(tmp_path / "a.png", np.array([[-1, 0]]))
    with pytest.raises(TypeError, match="instances"):
        write_instances(tmp_path / "a.png", np.array([[0.5, 0]]))


def test_grey_image_is_read_as_rgb(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(6, 5)
    _save_grey(tmp_path / "g.png", grey)
    image = read_image(tmp_path / "g.png")
    assert image.shape == (6, 5, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_read_pair_missing_and_unreadable_files_are_named(tmp_path):
    _save_rgb(tmp_path / "x.png", _image(np.random.default_rng(2)))
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "x_anno.png")):
        read_pair(tmp_path / "x.png", tmp_path / "x_anno.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=_name_in(tmp_path / "broken.png")):
        read_image(tmp_path / "broken.png")


# ----------------------------------------------------------------------------- CRAG and folders


@pytest.mark.parametrize("annotation_dir", ["Annotation", "Annotations"])
def test_crag_reads_both_annotation_folder_names(tmp_path, annotation_dir):
    rng = np.random.default_rng(3)
    written = {}
    for split in ("train", "valid"):
        for name in (f"{split}_2", f"{split}_1"):
            image, labels = _image(rng), _labels(rng)
            _save_rgb(tmp_path / split / "Images" / f"{name}.png", image)
            _save_grey(tmp_path / split / annotation_dir / f"{name}.png", labels)
            written[name] = (image, labels)
    for split in ("train", "valid"):
        data = CRAGDataset(tmp_path, split)
        assert data.names == [f"{split}_1", f"{split}_2"]
        for i, name in enumerate(data.names):
            np.testing.assert_array_equal(data[i][0], written[name][0])
            np.testing.assert_array_equal(data[i][1], written[name][1])


def test_crag_errors_name_the_missing_folder_or_file(tmp_path):
    _save_rgb(tmp_path / "train" / "Images" / "a.png", _image(np.random.default_rng(4)))
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "train" / "Annotation")):
        CRAGDataset(tmp_path, "train")
    (tmp_path / "train" / "Annotation").mkdir()
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "train" / "Annotation" / "a")):
        CRAGDataset(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        CRAGDataset(tmp_path, "test")


def test_folder_pairs_by_stem_with_suffix_and_other_extension(tmp_path):
    rng = np.random.default_rng(5)
    image, labels = _image(rng), _labels(rng)
    _save_rgb(tmp_path / "img" / "gland7.bmp", image)
    _save_grey(tmp_path / "msk" / "gland7_mask.png", labels)
    data = FolderDataset(tmp_path / "img", tmp_path / "msk", mask_suffix="_mask")
    assert data.names == ["gland7"]
    np.testing.assert_array_equal(data[0][0], image)
    np.testing.assert_array_equal(data[0][1], labels)


def test_folder_shared_with_masks_skips_the_masks(tmp_path):
    rng = np.random.default_rng(6)
    for name in ("b", "a10", "a2"):
        _save_rgb(tmp_path / f"{name}.png", _image(rng))
        _save_grey(tmp_path / f"{name}_anno.png", _labels(rng))
    # Natural order: a2 before a10.
    assert FolderDataset(tmp_path, tmp_path, mask_suffix="_anno").names == ["a2", "a10", "b"]
    with pytest.raises(ValueError, match="mask_suffix"):
        FolderDataset(tmp_path, tmp_path)


def test_folder_errors_name_the_path(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=_name_in(tmp_path / "img")):
        FolderDataset(tmp_path / "img", tmp_path / "msk")  # empty of images
    _save_rgb(tmp_path / "img" / "a.png", _image(np.random.default_rng(7)))
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "msk" / "a")):
        FolderDataset(tmp_path / "img", tmp_path / "msk")
    with pytest.raises(FileNotFoundError, match=_name_in(tmp_path / "none")):
        FolderDataset(tmp_path / "none", tmp_path / "msk")


def test_paired_dataset_length_mismatch():
    with pytest.raises(ValueError, match="annotation_paths"):
        PairedDataset(["a.png", "b.png"], ["a_anno.png"])
    with pytest.raises(ValueError, match="image_paths"):
        PairedDataset([], [])


# ----------------------------------------------------------------------------- splits


def _round_half_up(numerator: int, n: int, denominator: int) -> int:
    """floor(numerator * n / denominator + 1/2) in integers only."""
    return (2 * numerator * n + denominator) // (2 * denominator)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), denominator=st.sampled_from([8, 4, 2]), seed=st.integers(0, 2**32 - 1))
def test_split_sizes_disjoint_covering_deterministic(n, denominator, seed):
    labelled, unlabelled = label_split(n, f"1/{denominator}", seed)
    assert len(labelled) == max(1, _round_half_up(1, n, denominator))
    assert len(set(labelled.tolist()) & set(unlabelled.tolist())) == 0
    assert sorted(labelled.tolist() + unlabelled.tolist()) == list(range(n))
    again = label_split(list(range(n)), 1 / denominator, seed)  # a sequence and a float: same split
    np.testing.assert_array_equal(again[0], labelled)
    np.testing.assert_array_equal(again[1], unlabelled)


def test_split_known_sizes_and_seed_dependence():
    # GlaS train has 85 images: 1/8 -> 10.625 -> 11, 1/4 -> 21.25 -> 21, 1/2 -> 42.5 -> 43.
    assert [len(label_split(85, r, 0)[0]) for r in ("1/8", "1/4", "1/2")] == [11, 21, 43]
    assert len(label_split(3, "1/8", 0)[0]) == 1  # at least one labelled sample
    assert len(label_split(5, 1.0, 0)[1]) == 0
    a, b = label_split(100, "1/4", 0)[0], label_split(100, "1/4", 1)[0]
    assert not np.array_equal(a, b)


def test_split_is_pinned_across_versions_and_platforms():
    # The promise is the same split everywhere, not just twice in one process: pin one.
    labelled, unlabelled = label_split(16, "1/4", seed=0)
    assert labelled.tolist() == [2, 3, 10, 11]
    assert unlabelled.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15]


def test_parse_ratio_forms_and_errors():
    assert parse_ratio("12.5%") == parse_ratio("1/8") == parse_ratio(0.125)
    assert parse_ratio(0.1) == parse_ratio("1/10")
    for bad in (0, 1.5, "abc", "1/0", float("nan"), "-1/4"):
        with pytest.raises(ValueError, match="ratio"):
            label_split(10, bad, 0)
    with pytest.raises(TypeError, match="ratio"):
        label_split(10, None, 0)
    with pytest.raises(TypeError, match="seed"):
        label_split(10, "1/2", 0.5)
    with pytest.raises(ValueError, match="names_or_n"):
        label_split(0, "1/2", 0)


# ----------------------------------------------------------------------------- command line round trips


def test_synth_glas_layout_round_trip(tmp_path):
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path),
                "--layout",
                "glas",
                "--num",
                "6",
                "--preset",
                "hard",
                "--size",
                "64",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    generator = SyntheticGlands("hard", size=64, seed=3)
    index = 0
    counts = []
    for split in ("train", "testA", "testB"):
        data = GlaSDataset(tmp_path, split)
        counts.append(len(data))
        for i in range(len(data)):
            expected = generator.draw(index)
            image, instances = data[i]
            np.testing.assert_array_equal(image, expected.image)
            np.testing.assert_array_equal(instances, expected.instances)
            assert data.grades[i] == expected.grade
            index += 1
    assert counts == [3, 2, 1] and index == 6  # GlaS proportions 85:60:20
    header = (tmp_path / "Grade.csv").read_text().splitlines()[0]
    assert header.startswith("name, Patient ID, grade (GlaS)")


@pytest.mark.parametrize("layout", ["crag", "folder"])
def test_synth_other_layouts_round_trip(tmp_path, layout):
    assert main(["synth", "--out", str(tmp_path), "--layout", layout, "--num", "3", "--size", "48"]) == 0
    if layout == "crag":
        data = [CRAGDataset(tmp_path, "train"), CRAGDataset(tmp_path, "valid")]
    else:
        data = [FolderDataset(tmp_path / "images", tmp_path / "masks")]
    samples = [d[i] for d in data for i in range(len(d))]
    assert len(samples) == 3
    generator = SyntheticGlands("medium", size=48, seed=0)
    for index, (image, instances) in enumerate(samples):
        np.testing.assert_array_equal(image, generator.sample(index)[0])
        np.testing.assert_array_equal(instances, generator.sample(index)[1])


def test_sheet_command_writes_a_png(tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["sheet", "--out", str(out), "--num", "2", "--size", "40"]) == 0
    with Image.open(out) as sheet:
        # 3 preset rows of 40 px + gaps of 4; 2 samples of (raw | outlined) per row.
        assert sheet.size == (2 * (2 * 40 + 4) + 4, 3 * (40 + 4) + 4)
        assert sheet.mode == "RGB"
        pixels = np.asarray(sheet)
    raw, outlined = pixels[4:44, 4:44], pixels[4:44, 44:84]
    assert (raw != outlined).any()  # the right tile carries the instance outlines


@pytest.mark.parametrize("layout", ["glas", "crag", "folder"])
def test_synth_into_a_used_folder_never_mixes_runs(tmp_path, layout):
    def read_all():
        if layout == "glas":
            return [GlaSDataset(tmp_path, s) for s in ("train", "testA", "testB")]
        if layout == "crag":
            return [CRAGDataset(tmp_path, s) for s in ("train", "valid")]
        return [FolderDataset(tmp_path / "images", tmp_path / "masks")]

    write_synthetic(tmp_path, layout, 9, preset="easy", size=40, seed=0)
    # The same run again rewrites the same files: allowed.
    write_synthetic(tmp_path, layout, 9, preset="easy", size=40, seed=0)
    assert sum(len(d) for d in read_all()) == 9
    # A smaller run would leave the larger run's extra files to be read as its own samples.
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        write_synthetic(tmp_path, layout, 3, preset="easy", size=40, seed=1)
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--layout", layout, "--num", "3", "--size", "40"])
    write_synthetic(tmp_path, layout, 3, preset="easy", size=40, seed=1, overwrite=True)
    data = read_all()
    assert sum(len(d) for d in data) == 3
    generator = SyntheticGlands("easy", size=40, seed=1)
    samples = [d[i] for d in data for i in range(len(d))]
    for index, (image, instances) in enumerate(samples):
        np.testing.assert_array_equal(image, generator.sample(index)[0])
        np.testing.assert_array_equal(instances, generator.sample(index)[1])
    if layout == "glas":
        assert all(g is not None for d in data for g in d.grades)
    # Files that are not the layout's own are never touched.
    (tmp_path / "notes.txt").write_text("keep")
    write_synthetic(tmp_path, layout, 2, preset="easy", size=40, seed=1, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep"
