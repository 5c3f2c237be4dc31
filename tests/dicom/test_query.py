import pytest
from pydicom.dataset import Dataset

from sonoloop.dicom.query import QueryError, build_response, check_retrieve_keys, parse_identifier


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
