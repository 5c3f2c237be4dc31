import pytest
from pydicom import dcmread

from sonoloop.dicom import status
from sonoloop.dicom.attributes import INDEXED
from sonoloop.dicom.instance import InvalidInstance, _get, is_valid_uid, read_instance

from .helpers import file_bytes


@pytest.mark.parametrize("key", ["cine_jpeg", "us_rle_palette", "us_j2k", "us_native", "us_implicit_palette",
                                 "sc_rle", "jpeg_ls", "jpeg_extended", "deflated", "seg", "sr"])
def test_real_files_of_every_kind_are_read_and_indexed(samples, key):
    raw = samples[key].read_bytes()
    _, record = read_instance(raw)
    assert is_valid_uid(record.sop_instance_uid)
    assert record.transfer_syntax_uid


@pytest.mark.parametrize("key", ["cine_jpeg", "us_rle_palette", "us_native", "seg", "sr"])
def test_the_record_holds_what_pydicom_reads_by_keyword(samples, key):
    ds, record = read_instance(samples[key].read_bytes())
    fresh = dcmread(samples[key])  # every value converted on first access, through pydicom's own get
    for a in INDEXED:
        if a.computed or a.field in ("number_of_frames", "transfer_syntax_uid"):
            continue
        value = fresh.get(a.keyword)
        if a.number:
            expected = None if value in (None, "") else int(value)
        else:
            expected = "" if value is None else str(value).strip()[:a.length]
        assert getattr(record, a.field) == expected, a.keyword


def test_an_unknown_keyword_is_a_programming_error_not_a_missing_value(samples):
    ds, _ = read_instance(samples["us_native"].read_bytes())
    with pytest.raises(ValueError):
        _get(ds, "NoSuchKeyword")
    assert _get(ds, "AcquisitionDeviceProcessingCode") is None  # a real keyword the file lacks


def test_cine_record_carries_frames_and_modality(samples):
    _, record = read_instance(samples["cine_jpeg"].read_bytes())
    assert record.number_of_frames == 120
    assert record.modality == "US"
    assert record.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert record.study_date == "20160503"


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_truncated_native_dataset_is_refused(samples, cut):
    raw = samples["us_native"].read_bytes()
    with pytest.raises(InvalidInstance) as info:
        read_instance(raw[: int(len(raw) * cut)])
    assert 0xC000 <= info.value.status <= 0xCFFF


@pytest.mark.parametrize("cut", [0.3, 0.8, 0.999])
def test_truncated_encapsulated_cine_is_refused(samples, cut):
    raw = samples["cine_jpeg"].read_bytes()
    with pytest.raises(InvalidInstance) as info:
        read_instance(raw[: int(len(raw) * cut)])
    assert 0xC000 <= info.value.status <= 0xCFFF


def test_garbage_is_refused_as_cannot_understand():
    with pytest.raises(InvalidInstance) as info:
        read_instance(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    assert info.value.status == status.CANNOT_UNDERSTAND


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid_is_refused(samples, keyword):
    with pytest.raises(InvalidInstance, match=keyword) as info:
        read_instance(file_bytes(samples["us_rle_palette"], **{keyword: None}))
    assert info.value.status == status.MISSING_UID


def test_uid_with_path_characters_is_refused(samples):
    with pytest.raises(InvalidInstance, match="not a valid UID") as info:
        read_instance(file_bytes(samples["us_rle_palette"], SOPInstanceUID="../../etc/passwd"))
    assert info.value.status == status.INVALID_UID


def test_dataset_that_contradicts_the_request_is_refused(samples):
    raw = samples["us_rle_palette"].read_bytes()
    with pytest.raises(InvalidInstance) as info:
        read_instance(raw, expected=("1.2.840.10008.5.1.4.1.1.7", ""))
    assert info.value.status == status.DATASET_DOES_NOT_MATCH


@pytest.mark.parametrize("uid, ok", [("1.2.840.10008.1.2", True), ("1..2", False), ("1.2.a", False), ("1." * 40, False)])
def test_uid_syntax(uid, ok):
    assert is_valid_uid(uid) is ok


def test_a_decompression_bomb_is_refused_before_anything_decodes_it(samples):
    """A 6 MB JPEG cine whose 120 frames declare 4096² RGB pixels: 6 GB once decoded."""
    raw = samples["cine_jpeg"].read_bytes()
    _, record = read_instance(raw, max_decoded_bytes=111 * 1000**2)  # 120 × 480 × 640 × 3 = 110.6 MB
    assert record.number_of_frames == 120
    with pytest.raises(InvalidInstance, match="would decode to 110592000 bytes"):
        read_instance(raw, max_decoded_bytes=110 * 1000**2)
    bomb = file_bytes(samples["cine_jpeg"], Rows=4096, Columns=4096)
    with pytest.raises(InvalidInstance, match="would decode to") as refused:
        read_instance(bomb, max_decoded_bytes=4 * 1024**3)
    assert refused.value.status == status.TOO_LARGE


@pytest.mark.parametrize("pixel_bytes, accepted", [(4 * 6 * 2, True), (4 * 6 * 2 - 2, False)])
def test_native_ybr_full_422_is_two_thirds_the_size_and_not_truncated(pixel_bytes, accepted):
    """pydicom's expected length: native YBR_FULL_422 stores two samples per pixel, not three."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PlanarConfiguration = "US", 4, 6, 3, 0
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "YBR_FULL_422", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(pixel_bytes)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    if accepted:
        assert read_instance(buffer.getvalue())[1].photometric_interpretation == "YBR_FULL_422"
    else:
        with pytest.raises(InvalidInstance, match="truncated"):
            read_instance(buffer.getvalue())
