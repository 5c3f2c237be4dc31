import pytest
from pydicom.dataset import Dataset

from sonoloop.dicom.query import Query, QueryError, build_response, check_retrieve_keys, parse_identifier


def identifier(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_matching_kinds_follow_ps3_4():
    query = parse_identifier(
        identifier("STUDY", PatientName="SMI*", StudyDate="20240101-20241231", StudyInstanceUID="1.2.3\\1.2.4",
                   AccessionNumber="", StudyTime="-1200"),
        "STUDY",
    )
    kinds = {m.keyword: m.kind for m in query.matches}
    assert kinds == {"PatientName": "wildcard", "StudyDate": "range", "StudyInstanceUID": "list", "StudyTime": "range"}
    date = next(m for m in query.matches if m.keyword == "StudyDate")
    assert (date.low, date.high) == ("20240101", "20241231")
    assert "AccessionNumber" in query.return_keys  # universal matching: returned, not filtered


def test_keys_below_the_query_level_are_not_used_for_matching():
    query = parse_identifier(identifier("STUDY", SOPInstanceUID="1.2.3", StudyInstanceUID=""), "STUDY")
    assert query.matches == []


def test_patient_level_does_not_exist_in_study_root():
    with pytest.raises(QueryError):
        parse_identifier(identifier("PATIENT", PatientID="1"), "STUDY")


def test_unknown_level_is_refused():
    with pytest.raises(QueryError):
        parse_identifier(identifier("FRAME"), "PATIENT")


def test_response_holds_exactly_the_requested_keys_and_the_unique_key():
    query = parse_identifier(identifier("SERIES", Modality="US", SeriesDescription=""), "STUDY")
    ds = build_response(query, {"Modality": "US", "SeriesDescription": "A4C", "SeriesInstanceUID": "1.2.3", "Other": "x"})
    keywords = {e.keyword for e in ds}
    assert keywords == {"SpecificCharacterSet", "QueryRetrieveLevel", "Modality", "SeriesDescription", "SeriesInstanceUID"}
    assert ds.SeriesDescription == "A4C"


@pytest.mark.parametrize("root, keys", [
    ("PATIENT", {"level": "PATIENT"}),  # "everything", the review's getscu
    ("PATIENT", {"level": "PATIENT", "PatientID": "*"}),
    ("PATIENT", {"level": "STUDY", "StudyInstanceUID": "1.2.3"}),  # no PatientID above it
    ("STUDY", {"level": "SERIES", "SeriesInstanceUID": "1.2.3.4"}),  # no StudyInstanceUID
    ("STUDY", {"level": "IMAGE", "StudyInstanceUID": "1.2\\1.3", "SeriesInstanceUID": "1.2.3.4",
               "SOPInstanceUID": "1.2.3.4.5"}),  # a list above the retrieve level
])
def test_a_retrieve_must_name_what_it_retrieves(root, keys):
    with pytest.raises(QueryError, match="must name"):
        check_retrieve_keys(parse_identifier(identifier(**keys), root))


@pytest.mark.parametrize("root, keys", [
    ("PATIENT", {"level": "PATIENT", "PatientID": "12345"}),
    ("STUDY", {"level": "STUDY", "StudyInstanceUID": "1.2.3\\1.2.4"}),
    ("STUDY", {"level": "SERIES", "StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4"}),
    ("PATIENT", {"level": "IMAGE", "PatientID": "7", "StudyInstanceUID": "1.2.3",
                 "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5\\1.2.3.4.6"}),
])
def test_a_retrieve_that_names_its_objects_passes(root, keys):
    check_retrieve_keys(parse_identifier(identifier(**keys), root))


@pytest.mark.parametrize("requested, name, answered", [
    ((), "Buc^Jérôme", "ISO_IR 192"),  # none named: UTF-8
    (("ISO_IR 100",), "Buc^Jérôme", "ISO_IR 100"),  # Latin-1 asked, Latin-1 answered
    (("ISO_IR 100",), "Wang^XiaoDong=王^小東", "ISO_IR 192"),  # not writable in Latin-1
    (("", "ISO 2022 IR 87"), "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
    (("GB18030",), "Wang^XiaoDong=王^小东", "GB18030"),
    (("ISO_IR 6",), "Äneas^Rüdiger", "ISO_IR 192"),  # the default repertoire is ASCII only
    (("ISO_IR 6",), "Smith^John", "ISO_IR 6"),
    (("NOT A CHARSET",), "Smith^John", "ISO_IR 192"),
])
def test_a_find_response_is_written_in_the_requesters_character_set_when_it_can_be(requested, name, answered):
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    query = Query("PATIENT", "PATIENT", return_keys=["PatientName", "PatientID"], charsets=requested)
    response = build_response(query, {"PatientName": name, "PatientID": "P1"})
    assert response.SpecificCharacterSet == answered
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, response)  # as pynetdicom encodes it; read back, the name is the same
    back = read_dataset(DicomBytesIO(buffer.getvalue()), True, True)
    back.decode()
    assert str(back.PatientName) == name


@pytest.mark.parametrize("pattern, text, expected", [
    ("Vivid*", "Vivid E95", True), ("*E9?", "Vivid E95", True), ("*E9?", "Vivid E9", False),
    ("a*b*c", "aXbYc", True), ("a*b*c", "acb", False), ("*", "", True), ("?", "", False),
    ("*a*a*a*a*a*a*a*a*b", "a" * 60, False),  # no exponential backtracking
])
def test_file_keys_use_a_linear_wildcard_match(pattern, text, expected):
    from sonoloop.dicom.query import Match, value_matches

    assert value_matches(Match("ManufacturerModelName", "wildcard", value=pattern), text) is expected


def test_keys_the_index_lacks_are_matched_and_answered_from_the_files():
    from sonoloop.dicom.query import Match, value_matches

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientAge = "04*"  # not in the index
    ds.InstitutionName = ""
    ds.PatientName = "SMITH*"  # indexed
    query = parse_identifier(ds, "STUDY")
    assert [m.keyword for m in query.matches] == ["PatientName"]
    assert [m.keyword for m in query.file_matches] == ["PatientAge"]
    assert "InstitutionName" in query.file_keys and "PatientName" not in query.file_keys
    assert value_matches(Match("OperatorsName", "single", value="doe^jane"), "Doe^Jane")  # PN ignores case
    assert not value_matches(Match("InstitutionName", "single", value="st mary"), "St Mary")
    assert value_matches(Match("AcquisitionDate", "range", low="20200101", high="20201231"), "20200615")


def test_the_json_written_directly_is_what_pydicom_writes_for_the_response_dataset():
    from sonoloop.dicom.query import response_json

    query = Query(level="STUDY", root="STUDY", return_keys=[
        "PatientName", "PatientID", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries", "StudyDescription", "ReferencedStudySequence", "PatientWeight",
        "AccessionNumber", "InstanceNumber", "RetrieveAETitle"])
    records = [
        {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう", "PatientID": "P1", "StudyDate": "20190124",
         "ModalitiesInStudy": "US\\SR", "NumberOfStudyRelatedInstances": 12, "NumberOfStudyRelatedSeries": 0,
         "StudyDescription": "Écho cœur", "PatientWeight": "72.5", "AccessionNumber": "", "InstanceNumber": "7",
         "RetrieveAETitle": "SONOLOOP"},
        {"PatientName": "", "PatientID": "P2", "ModalitiesInStudy": "US", "PatientWeight": "80",
         "NumberOfStudyRelatedInstances": None, "InstanceNumber": None},
    ]
    for record in records:
        expected = build_response(query, record).to_json_dict()
        del expected["00080052"]  # Query/Retrieve Level: C-FIND's, not QIDO-RS's
        assert response_json(query, record) == expected
