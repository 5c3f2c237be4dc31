import subprocess
import warnings

import highdicom as hd
import numpy as np
from pydicom import dcmread

from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.dicom.seg import Algorithm, build_segmentation
from sonoloop.dicom.sr import EDV, EF, EF_QUALITY, IMPLAUSIBLE_FRAMES, RELIABLE, UNRELIABLE, build_measurement_report
from sonoloop.echo.measure import Calibration, measure_loop
from tests.conftest import require_tools
from tests.dicom.test_seg import CLASSES
from tests.echo.test_measure import heart


def beating_loop(frames=40):
    return np.stack([heart(80, 34 + 6 * np.cos(2 * np.pi * n / 20), shape=(480, 640), centre=(200, 320))
                     for n in range(frames)])


def report_for(calibration):
    source = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    labels = beating_loop()
    source.NumberOfFrames = len(labels)
    seg = build_segmentation(source, labels, CLASSES, Algorithm("camus-unet-v2", "abc"))
    measurements = measure_loop(labels, CLASSES, calibration, None, 33.3).as_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample's single-component patient name
        return source, seg, measurements, build_measurement_report(source, seg, measurements,
                                                                   algorithm=("camus-unet-v2", "abc"))


def test_the_measurement_report_validates_and_reads_back(tmp_path):
    require_tools("dciodvfy")
    source, seg, measurements, sr = report_for(Calibration(0.05, 0.05, "cm"))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")] == []

    report = hd.sr.srread(path)
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    evidence = {sop.ReferencedSOPInstanceUID for study in report.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert {source.SOPInstanceUID, seg.SOPInstanceUID} == evidence
    groups = report.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["LV at end-diastole", "LV at end-systole", "LA at end-systole"]
    (edv_area_length,) = [m for m in groups[0].get_measurements(name=EDV) if m.method.value == "125205"]
    assert edv_area_length.value == round(measurements["edv"], 3) and edv_area_length.unit.value == "ml"
    assert groups[0].referenced_segmentation_frame.referenced_sop_instance_uid == seg.SOPInstanceUID
    (ejection,) = report.content.get_image_measurement_groups()
    values = {(m.method.meaning, m.derivation.meaning): m.value for m in ejection.get_measurements(name=EF)}
    spread = measurements["ef_spread"]
    assert spread["beats"] == 2 and measurements["reliable"]
    assert values == {("Area-Length Single Plane", "Median"): round(measurements["ef"], 3),
                      ("Area-Length Single Plane", "Minimum"): round(spread["min"], 3),
                      ("Area-Length Single Plane", "Maximum"): round(spread["max"], 3),
                      ("Method of Disks, Single Plane", "Median"): round(measurements["ef_disks"], 3)}
    (verdict,) = ejection.get_qualitative_evaluations(name=EF_QUALITY)
    assert verdict.value == RELIABLE
    (count,) = ejection.get_measurements(name=IMPLAUSIBLE_FRAMES)
    assert count.value == 0 and count.unit.value == "{frames}"


def test_an_unreliable_ejection_fraction_is_left_out_with_its_reasons(tmp_path):
    require_tools("dciodvfy")
    source = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    labels = beating_loop()
    source.NumberOfFrames = len(labels)
    seg = build_segmentation(source, labels, CLASSES, Algorithm("camus-unet-v3", "abc"))
    problems = [["lv_exposed"] if n % 3 else [] for n in range(len(labels))]  # two frames in three implausible
    measurements = measure_loop(labels, CLASSES, Calibration(0.05, 0.05, "cm"), None, 33.3, problems).as_dict()
    assert not measurements["reliable"] and measurements["ef"] is None
    assert "implausible_frames" in measurements["reliability_reasons"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = build_measurement_report(source, seg, measurements, algorithm=("camus-unet-v3", "abc"))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")] == []
    report = hd.sr.srread(path)
    assert report.content.get_planar_roi_measurement_groups() == []  # no volumes from an unreliable loop
    (ejection,) = report.content.get_image_measurement_groups()
    assert ejection.get_measurements(name=EF) == []
    reasons = {e.value for e in ejection.get_qualitative_evaluations(name=EF_QUALITY)}
    assert UNRELIABLE["implausible_frames"] in reasons and RELIABLE not in reasons
    (count,) = ejection.get_measurements(name=IMPLAUSIBLE_FRAMES)
    assert count.value == measurements["implausible_frames"] == 26


def test_uncalibrated_loops_report_only_the_ejection_fraction():
    _, _, measurements, sr = report_for(Calibration())
    assert measurements["units"]["volume"] == "px3"
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert report.content.get_planar_roi_measurement_groups() == []
    (ejection,) = report.content.get_image_measurement_groups()
    assert {m.unit.value for m in ejection.get_measurements(name=EF)} == {"%"}
