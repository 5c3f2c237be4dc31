"""The shipped model segments the same echo the same way whatever the DICOM encoding:
8/12/16-bit, signed, MONOCHROME1/2, RGB, palette colour, uncompressed or RLE."""

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.ml.modelfolder import DEFAULT_MODEL
from sonoloop.ml.infer import Segmenter

FRAMES = slice(0, 2)


@pytest.fixture(scope="module")
def cine():
    frames, header, bits = all_frames(sample_path(ECHO_CINE_JPEG))
    assert bits == 8 and frames.shape == (120, 480, 640, 3)
    return frames[FRAMES]


@pytest.fixture(scope="module")
def gray(cine):
    return (cine.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(DEFAULT_MODEL)


def _write(path, pixels: np.ndarray, photometric: str, bits: int, signed: bool = False, palette=None,
           compress: bool = False):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "ENC", "US"
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1], pixels.shape[2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 4 else 1
    if pixels.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    if palette is not None:
        descriptor = [len(palette), 0, 16]
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
            setattr(ds, f"{colour}PaletteColorLookupTableData", palette.astype("<u2").tobytes())
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(path, enforce_file_format=True)
    return path


def _variants(gray: np.ndarray, tmp_path):
    g16 = gray.astype(np.uint16) * 257
    identity = np.arange(256, dtype=np.uint16) * 257
    yield "MONOCHROME2 8-bit", _write(tmp_path / "m8.dcm", gray, "MONOCHROME2", 8)
    yield "MONOCHROME2 16-bit", _write(tmp_path / "m16.dcm", g16, "MONOCHROME2", 16)
    yield "MONOCHROME2 16-bit RLE", _write(tmp_path / "m16rle.dcm", g16, "MONOCHROME2", 16, compress=True)
    yield "MONOCHROME2 12-bit", _write(tmp_path / "m12.dcm", gray.astype(np.uint16) * 16 + gray // 16,
                                       "MONOCHROME2", 12)
    yield "MONOCHROME2 16-bit signed", _write(tmp_path / "s16.dcm", (g16.astype(np.int32) - 32768).astype(np.int16),
                                              "MONOCHROME2", 16, signed=True)
    yield "MONOCHROME1 8-bit", _write(tmp_path / "mono1.dcm", 255 - gray, "MONOCHROME1", 8)
    yield "RGB 8-bit", _write(tmp_path / "rgb.dcm", np.repeat(gray[..., None], 3, axis=3), "RGB", 8)
    yield "PALETTE COLOR, 16-bit table", _write(tmp_path / "pal.dcm", gray, "PALETTE COLOR", 8, palette=identity)


def _dice(a, b, label):
    p, q = a == label, b == label
    return 2.0 * np.logical_and(p, q).sum() / max(p.sum() + q.sum(), 1)


def test_every_encoding_of_the_same_echo_gets_the_same_segmentation(gray, segmenter, tmp_path):
    reference = segmenter.predict(gray, bits_stored=8)
    assert all((reference[n] == label).sum() > 2000 for n in range(len(reference)) for label in (1, 2, 3)), \
        "the model should find LV, myocardium and LA in this apical 4-chamber view"
    for name, path in _variants(gray, tmp_path):
        frames, header, bits = all_frames(path)
        assert frames.shape[:3] == gray.shape, name
        labels = segmenter.predict(frames, bits_stored=bits)
        for label in (1, 2, 3):
            assert _dice(labels, reference, label) > 0.99, (name, label)


def test_the_original_jpeg_colour_cine_matches_its_grayscale(cine, gray, segmenter):
    colour = segmenter.predict(cine, bits_stored=8)
    reference = segmenter.predict(gray, bits_stored=8)
    # the grayscale copy rounds luma to whole grey levels (≤ 0.5 of 255): boundaries move by
    # about half a pixel on average in this cine, measured Dice 0.98
    for label in (1, 2, 3):
        assert _dice(colour, reference, label) > 0.97


def test_predict_command_reads_a_real_palette_colour_ultrasound_image(tmp_path):
    from PIL import Image

    from sonoloop.cli import main
    from sonoloop.dicom.samples import US_RLE_PALETTE

    frames, header, bits = all_frames(sample_path(US_RLE_PALETTE))
    assert header.PhotometricInterpretation == "PALETTE COLOR" and frames.dtype == np.uint8 and bits == 8
    assert frames.shape[-1] == 3 and frames.max() > 100  # colours through the table, not raw indices
    assert main(["predict", str(sample_path(US_RLE_PALETTE)), "--out", str(tmp_path)]) == 0
    mask = np.asarray(Image.open(tmp_path / "mask-0001.png"))
    assert mask.shape == frames.shape[1:3]


def test_ybr_frames_decoded_as_luma_segment_like_their_rgb(cine, segmenter):
    luma, _, bits = all_frames(sample_path(ECHO_CINE_JPEG), luma=True)
    assert luma.shape == (120, 480, 640) and luma.dtype == np.uint8 and bits == 8
    from_luma = segmenter.predict(luma[FRAMES], bits_stored=8)
    from_rgb = segmenter.predict(cine, bits_stored=8)
    for label in (1, 2, 3):  # the Y plane is BT.601 luma up to rounding (see the test above)
        assert _dice(from_luma, from_rgb, label) > 0.97


def test_jpeg_luma_comes_from_the_y_component_alone_and_falls_back_to_the_full_decoder(monkeypatch):
    from pydicom.pixels import pixel_array

    from sonoloop.dicom import pixels

    path = sample_path(ECHO_CINE_JPEG)
    luma, header, bits = all_frames(path, luma=True)
    assert luma.shape == (120, 480, 640) and luma.dtype == np.uint8 and bits == 8
    # exactly the Y plane the full YBR decode gives with the same decoder (libjpeg-turbo)
    assert np.array_equal(luma, pixel_array(path, as_rgb=False, decoding_plugin="pillow")[..., 0])

    def broken(codestream):
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(pixels, "_decode_luma", broken)
    fallback, _, _ = all_frames(path, luma=True)  # pydicom's own decoder, the way it was before
    assert np.array_equal(fallback, pixel_array(path, as_rgb=False)[..., 0])
    assert np.abs(fallback.astype(int) - luma).max() <= 1  # two JPEG decoders: rounding apart
