import subprocess

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from sonoloop.dicom.samples import ECHO_CINE_JPEG, US_NATIVE, sample_path
from sonoloop.dicom.seg import Algorithm, SegmentationError, build_segmentation, dicom_cielab, read_segmentation
from tests.conftest import require_tools

CLASSES = ["background", "LV", "MYO", "LA"]
ALGORITHM = Algorithm("camus-unet-v2", "2026-11-27")


def moving_labels(frames: int, rows: int, columns: int) -> np.ndarray:
    """A different picture on every frame, so a wrong frame mapping cannot go unnoticed."""
    labels = np.zeros((frames, rows, columns), np.uint8)
    for n in range(frames):
        labels[n, 50 + n: 150 + n, 100:200] = 1
        labels[n, 150 + n: 170 + n, 90:210] = 2
        if n % 3:  # LA missing on some frames: their LA frames are empty, not skipped
            labels[n, 300:360, 120 + n: 200 + n] = 3
    return labels


def dciodvfy_errors(path) -> list[str]:
    require_tools("dciodvfy")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_a_cine_segmentation_maps_every_frame_exactly_and_validates(tmp_path):
    source = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    assert "FrameOfReferenceUID" not in source  # why highdicom 0.28 cannot write this one
    labels = moving_labels(120, source.Rows, source.Columns)
    seg = build_segmentation(source, labels, CLASSES, ALGORITHM, series_number=901)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    back = dcmread(path)
    assert back.Modality == "SEG" and back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID and "FrameOfReferenceUID" not in back
    assert back.NumberOfFrames == 3 * 120
    assert [s.SegmentAlgorithmName for s in back.SegmentSequence] == ["camus-unet-v2"] * 3
    identification = back.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (identification.AlgorithmName, identification.AlgorithmVersion) == ("camus-unet-v2", "2026-11-27")
    item = back.PerFrameFunctionalGroupsSequence[120 + 4]  # segment 2 (MYO), source frame 5
    reference = item.DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and reference.ReferencedFrameNumber == 5
    assert item.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2

    restored, names = read_segmentation(back)
    assert names == {1: "LV", 2: "MYO", 3: "LA"}
    np.testing.assert_array_equal(restored, labels)

    # another implementation reads the same frames back: highdicom's own reader
    opened = hd.seg.segread(path)
    for frames in ([1, 2, 3], [60, 120]):
        by_frame = opened.get_pixels_by_source_frame(source_sop_instance_uid=source.SOPInstanceUID,
                                                     source_frame_numbers=frames, combine_segments=True)
        np.testing.assert_array_equal(by_frame, labels[[n - 1 for n in frames]])


def test_a_single_frame_segmentation_has_only_the_segments_present(tmp_path):
    source = dcmread(sample_path(US_NATIVE), stop_before_pixels=True)
    labels = np.zeros((1, source.Rows, source.Columns), np.uint8)
    labels[0, 100:200, 100:300] = 1
    labels[0, 300:350, 300:400] = 3
    path = tmp_path / "seg1.dcm"
    build_segmentation(source, labels[0], CLASSES, ALGORITHM).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = dcmread(path)
    assert back.NumberOfFrames == 2
    assert "ReferencedFrameNumber" not in back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0] \
        .SourceImageSequence[0]
    restored, names = read_segmentation(back)
    assert names == {1: "LV", 2: "LA"}
    np.testing.assert_array_equal(restored[0] == 2, labels[0] == 3)


def test_labels_that_do_not_fit_are_refused_with_a_reason():
    source = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    with pytest.raises(SegmentationError, match=r"do not fit the source's 120 frame\(s\) of 480×640"):
        build_segmentation(source, np.zeros((119, 480, 640), np.uint8), CLASSES, ALGORITHM)
    with pytest.raises(SegmentationError, match="every frame is background"):
        build_segmentation(source, np.zeros((120, 480, 640), np.uint8), CLASSES, ALGORITHM)
    with pytest.raises(SegmentationError, match="label 7 has no class"):
        build_segmentation(source, np.full((120, 480, 640), 7, np.uint8), CLASSES, ALGORITHM)


def test_display_colours_are_scaled_cielab():
    assert dicom_cielab((255, 255, 255)) == pytest.approx([65535, 32896, 32896], abs=40)
    assert dicom_cielab((0, 0, 0)) == [0, 32896, 32896]


@pytest.mark.parametrize("shape", [(20, 4, 6), (3, 5, 3), (1, 8, 8)])  # frames of whole bytes, of odd bits
def test_masks_packed_a_few_frames_at_a_time_are_the_bits_of_the_whole_loop(shape):
    from sonoloop.dicom.seg import _packed_masks

    labels = np.random.default_rng(7).integers(0, 4, size=shape).astype(np.uint8)
    whole = np.packbits(np.concatenate([labels == c for c in (1, 3)]).ravel(), bitorder="little").tobytes()
    assert _packed_masks(labels, [1, 3], chunk=3) == whole


def per_frame_items_as_datasets(source, segments: int, numbers: list[int]) -> list:
    """The Per-Frame Functional Groups the SEG must carry, built as pydicom datasets (as
    build_segmentation built them before it encoded them itself)."""
    from pydicom.dataset import Dataset

    def code(value, scheme, meaning):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item

    multi_frame = int(source.get("NumberOfFrames", 1) or 1) > 1
    items = []
    for segment in range(1, segments + 1):
        for n in numbers:
            reference = Dataset()
            reference.ReferencedSOPClassUID = source.SOPClassUID
            reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
            if multi_frame:
                reference.ReferencedFrameNumber = n
            purpose = code("121322", "DCM", "Source image for image processing operation")
            reference.PurposeOfReferenceCodeSequence = [purpose]
            reference.SpatialLocationsPreserved = "YES"
            derivation = Dataset()
            derivation.DerivationCodeSequence = [code("113076", "DCM", "Segmentation")]
            derivation.SourceImageSequence = [reference]
            content = Dataset()
            content.DimensionIndexValues = [segment, n] if multi_frame else [segment]
            if multi_frame:
                content.TemporalPositionIndex = n
            identification = Dataset()
            identification.ReferencedSegmentNumber = segment
            item = Dataset()
            item.DerivationImageSequence = [derivation]
            item.FrameContentSequence = [content]
            item.SegmentIdentificationSequence = [identification]
            items.append(item)
    return items


@pytest.mark.parametrize("sample, frames", [(ECHO_CINE_JPEG, 120), (US_NATIVE, 1)])
def test_the_encoded_per_frame_groups_are_the_items_built_as_datasets_in_either_vr_encoding(sample, frames):
    import io

    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ImplicitVRLittleEndian

    source = dcmread(sample_path(sample), stop_before_pixels=True)
    labels = moving_labels(frames, source.Rows, source.Columns)
    seg = build_segmentation(source, labels, CLASSES, ALGORITHM)
    segments = len(seg.SegmentSequence)
    expected = per_frame_items_as_datasets(source, segments, list(range(1, frames + 1)))
    assert list(seg.PerFrameFunctionalGroupsSequence) == expected  # in memory, as the SR reads it
    for syntax in (None, ImplicitVRLittleEndian):  # as stored, and re-encoded for a peer that wants implicit VR
        seg = build_segmentation(source, labels, CLASSES, ALGORITHM)
        out = io.BytesIO()
        if syntax:
            seg.file_meta.TransferSyntaxUID = syntax
        dcmwrite(out, seg, enforce_file_format=True)
        back = dcmread(io.BytesIO(out.getvalue()))
        assert list(back.PerFrameFunctionalGroupsSequence) == expected
        assert back.NumberOfFrames == segments * frames
        np.testing.assert_array_equal(read_segmentation(back)[0], labels)  # segments 1, 2 (, 3) are LV, MYO (, LA)
