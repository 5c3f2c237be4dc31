from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from sonoloop.dicom.deidentify import UidMap, blank_outside_regions, deidentify


def test_an_allowlist_keeps_what_the_image_needs_and_nothing_that_names_anyone():
    ds = dcmread(get_testdata_file("OBXXXX1A_rle.dcm"))
    ds.add_new(0x00091001, "LO", "private secret")
    item = Dataset()
    item.PersonName = "Doe^Jane"  # a name hidden inside a kept sequence
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-32000", "SRT", "Heart"
    ds.SequenceOfUltrasoundRegions[0].add_new(0x0040A123, "PN", "Doe^Jane")
    ds.ViewCodeSequence = [item]
    uids = UidMap(b"k" * 32)
    out = deidentify(ds, uids, "ANON-0001")
    keywords = {e.keyword for e in out.iterall()}
    assert "InstitutionName" not in keywords and "PersonName" not in keywords
    assert not any(e.tag.is_private for e in out.iterall())
    assert out.PatientID == "ANON-0001" and out.Rows == ds.Rows and "SequenceOfUltrasoundRegions" in out
    assert out.ViewCodeSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.ViewCodeSequence[0].CodeMeaning == "Heart"
    assert out.SOPClassUID == ds.SOPClassUID  # well-known UIDs stay
    assert UidMap(b"k" * 32)(ds.StudyInstanceUID) == out.StudyInstanceUID != UidMap()(ds.StudyInstanceUID)
    assert "PatientName" in dcmread(get_testdata_file("OBXXXX1A_rle.dcm"))  # the original is unchanged


def test_pixels_outside_the_ultrasound_regions_are_blanked():
    ds = dcmread(get_testdata_file("OBXXXX1A_rle.dcm"))
    before = ds.pixel_array.copy()
    assert before[:60].max() > 0  # text above the first region (y < 60) in this Philips image
    cleaned = blank_outside_regions(ds)
    after = cleaned.pixel_array
    assert after[:60].max() == 0 and (after[100:500, 200:700] == before[100:500, 200:700]).all()
    assert blank_outside_regions(dcmread(get_testdata_file("US1_UNCR.dcm"))) is None  # no regions to go by
