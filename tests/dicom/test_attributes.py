"""The indexed attributes are written down once (dicom/attributes.py): parsing, matching and
the archive's models follow that table."""

import dataclasses

from pydicom import dcmread
from pydicom.datadict import dictionary_VR

from sonoloop.dicom.attributes import INDEXED, NUMBER_FIELDS, matchable_fields
from sonoloop.dicom.instance import InstanceRecord, read_instance
from sonoloop.dicom.query import MATCHABLE
from sonoloop.dicom.samples import ECHO_CINE_30, sample_path
from tests.dicom.helpers import file_bytes

SAMPLE_BY_VR = {"DA": "20240102", "TM": "101500", "PN": "Doe^Jane", "CS": "O", "IS": "7", "US": 7}
COMPUTED = {"modalities"}  # ModalitiesInStudy: kept up to date from the study's series
FROM_META = {"transfer_syntax_uid"}  # the file's, not the dataset's


def test_the_table_and_the_parsed_record_name_the_same_fields():
    record_fields = {f.name for f in dataclasses.fields(InstanceRecord)}
    table_fields = {a.field for a in INDEXED}
    assert table_fields - COMPUTED <= record_fields
    assert record_fields - FROM_META <= table_fields
    assert len({a.keyword for a in INDEXED}) == len(INDEXED)


def test_matching_uses_the_table():
    assert MATCHABLE == {level: tuple(fields) for level, fields in matchable_fields().items()}
    assert "IssuerOfPatientID" not in MATCHABLE["PATIENT"] and "Rows" in MATCHABLE["IMAGE"]


def test_every_indexed_value_is_parsed_into_its_field():
    path = sample_path(ECHO_CINE_30)
    values = {}
    for a in INDEXED:
        if a.field in COMPUTED or a.keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID",
                                                "SeriesInstanceUID", "NumberOfFrames", "Rows", "Columns",
                                                "PhotometricInterpretation"):
            continue  # these must keep the file's own values (identity and pixel description)
        values[a.keyword] = SAMPLE_BY_VR.get(dictionary_VR(a.keyword), f"V{len(values)}")
    raw = file_bytes(path, **values)
    _, record = read_instance(raw)
    for a in INDEXED:
        if a.keyword in values:
            expected = int(values[a.keyword]) if a.field in NUMBER_FIELDS else str(values[a.keyword])
            assert getattr(record, a.field) == expected, a.keyword
    header = dcmread(path, stop_before_pixels=True)
    assert record.rows == header.Rows and record.number_of_frames == int(header.NumberOfFrames)
