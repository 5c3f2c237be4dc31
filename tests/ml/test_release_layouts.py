"""The official CAMUS release layouts, on small files written here in those formats."""

import nibabel  # a hard dependency: a broken install fails here instead of skipping
import numpy as np
import pytest

from sonoloop.ml.data import DataError, camus_frames


def _frame(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (40, 30), dtype=np.uint8)
    labels = np.zeros((40, 30), np.uint8)
    labels[5:20, 8:16], labels[22:30, 10:20] = 1, 3
    return image, labels


def _write_mhd(path, array):
    path.with_suffix(".raw").write_bytes(array.tobytes())
    path.write_text(f"ObjectType = Image\nNDims = 2\nDimSize = {array.shape[1]} {array.shape[0]}\n"
                    f"ElementType = MET_UCHAR\nElementDataFile = {path.with_suffix('.raw').name}\n")


def test_metaimage_layout_reads_rows_and_columns_the_right_way(tmp_path):
    image, labels = _frame(1)
    folder = tmp_path / "training" / "patient0001"
    folder.mkdir(parents=True)
    for phase in ("ED", "ES"):
        _write_mhd(folder / f"patient0001_4CH_{phase}.mhd", image)
        _write_mhd(folder / f"patient0001_4CH_{phase}_gt.mhd", labels)
    frames = camus_frames(tmp_path)
    assert [f.frame_id for f in frames] == ["patient0001_4CH_ED", "patient0001_4CH_ES"]
    got_image, got_labels = frames[0].load()
    assert np.array_equal(got_image, image) and np.array_equal(got_labels, labels)


def test_nifti_layout_with_the_official_split_files(tmp_path):
    image, labels = _frame(2)
    for patient in ("patient0001", "patient0002"):
        folder = tmp_path / "database_nifti" / patient
        folder.mkdir(parents=True)
        for suffix, array in (("", image), ("_gt", labels)):
            nibabel.save(nibabel.Nifti1Image(array.T.copy(), np.eye(4)), folder / f"{patient}_2CH_ED{suffix}.nii.gz")
    (tmp_path / "database_split").mkdir()
    (tmp_path / "database_split" / "subgroup_training.txt").write_text("patient0001\n")
    (tmp_path / "database_split" / "subgroup_validation.txt").write_text("patient0002\n")
    frames = camus_frames(tmp_path)
    assert {f.patient: f.split for f in frames} == {"patient0001": "training", "patient0002": "validation"}
    got_image, got_labels = frames[1].load()
    assert np.array_equal(got_image, image) and np.array_equal(got_labels, labels)


def test_a_folder_of_something_else_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a CAMUS frames folder"):
        camus_frames(tmp_path)
