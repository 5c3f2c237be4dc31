"""WADO-RS frames for viewers: as stored whenever the Accept header allows it, decoded otherwise."""

import re

import pytest
from django.test import Client
from pydicom import dcmread
from pydicom.encaps import get_frame

from sonoloop.web.archive import services
from sonoloop.web.archive.dicomweb import frame_answer
from tests.web.conftest import user_with_role

pytestmark = pytest.mark.django_db
JPEG = "1.2.840.10008.1.2.4.50"
OHIF = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # what OHIF v3 sends


def parts(response) -> list[tuple[str, bytes]]:
    body = b"".join(response.streaming_content)
    boundary = re.search(r"boundary=([^;]+)", response["Content-Type"]).group(1).encode()
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        found.append((head.decode().strip(), payload[:-2]))
    return found


@pytest.mark.parametrize("accept, answer", [
    (OHIF, ("application/octet-stream", JPEG)),
    (f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG}', ("application/octet-stream", JPEG)),
    ('multipart/related; type="image/jpeg"', ("image/jpeg", JPEG)),
    ("", ("application/octet-stream", "1.2.840.10008.1.2.1")),  # PS3.18's default: uncompressed
    ('multipart/related; type="application/octet-stream"', ("application/octet-stream", "1.2.840.10008.1.2.1")),
    ('multipart/related; type="image/jp2"', None),  # no transcoding between compressed syntaxes: 406
])
def test_the_accept_header_decides_between_the_stored_frame_and_a_decoded_one(accept, answer):
    assert frame_answer(accept, JPEG) == answer


def test_ohif_gets_the_stored_jpeg_frames_a_plain_client_decoded_pixels(config, samples):
    config(auto_analysis=False)
    cine = services.instance_store(samples["cine_jpeg"].read_bytes()).instance
    source = dcmread(samples["cine_jpeg"])
    client = Client()
    client.force_login(user_with_role("v", "viewer"))
    url = (f"/dicomweb/studies/{cine.series.study.study_instance_uid}/series/{cine.series.series_instance_uid}"
           f"/instances/{cine.sop_instance_uid}/frames/1,60")
    stored = client.get(url, HTTP_ACCEPT=OHIF)
    assert stored.status_code == 200 and f"transfer-syntax={JPEG}" in stored["Content-Type"]
    got = parts(stored)
    assert [p for _, p in got] == [get_frame(source.PixelData, i, number_of_frames=120) for i in (0, 59)]
    assert got[0][0] == f"Content-Type: application/octet-stream; transfer-syntax={JPEG}"
    assert got[0][1][:2] == b"\xff\xd8"  # a JPEG codestream, tens of KB instead of 921,600 decoded bytes
    decoded = parts(client.get(url))
    assert len(decoded[0][1]) == source.Rows * source.Columns * 3 > 10 * len(got[0][1])
    refused = client.get(url, HTTP_ACCEPT='multipart/related; type="image/jp2"')
    assert refused.status_code == 406 and "Accept" in refused.json()["error"]


def test_rendered_and_thumbnail_resources_answer_jpeg_or_png_for_series_instances_and_frames(config, samples):
    import io

    from PIL import Image

    config(auto_analysis=False)
    cine = services.instance_store(samples["cine_jpeg"].read_bytes()).instance
    client = Client()
    client.force_login(user_with_role("v", "viewer"))
    study, series = cine.series.study.study_instance_uid, cine.series.series_instance_uid
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{cine.sop_instance_uid}"

    def image(response, media="image/jpeg"):
        assert response.status_code == 200 and response["Content-Type"] == media, response.content[:200]
        return Image.open(io.BytesIO(response.content))

    full = image(client.get(f"{base}/frames/60/rendered"))
    assert full.size == (cine.columns, cine.rows) and full.format == "JPEG"
    assert image(client.get(f"{base}/rendered", HTTP_ACCEPT="image/png"), "image/png").format == "PNG"
    for url in (f"/dicomweb/studies/{study}/thumbnail", f"/dicomweb/studies/{study}/series/{series}/thumbnail",
                f"{base}/thumbnail", f"{base}/frames/3/thumbnail"):
        assert max(image(client.get(url)).size) <= 128, url
    assert max(image(client.get(f"{base}/thumbnail", {"viewport": "256,256"})).size) <= 256
    several = client.get(f"{base}/frames/1,2,3/rendered", HTTP_ACCEPT='multipart/related; type="image/png"')
    assert several.status_code == 200 and [p[0] for p in parts(several)] == ["Content-Type: image/png"] * 3
    assert client.get(f"{base}/frames/121/rendered").status_code == 404
    assert client.get(f"{base}/rendered", HTTP_ACCEPT="application/dicom").status_code == 406
    assert Client().get(f"{base}/rendered").status_code in (401, 403)


@pytest.mark.parametrize("key, frames", [("cine_jpeg", (0, 59, 119)), ("us_j2k", (0,)), ("us_rle_palette", (0,)),
                                         ("jpeg_ls", (0,))])
def test_a_stored_frame_read_on_its_own_is_the_frame_pydicom_reads_from_the_whole_file(samples, key, frames):
    from sonoloop.dicom.pixels import frame_stored_bytes

    ds = dcmread(samples[key])
    count = int(ds.get("NumberOfFrames", 1) or 1)
    for index in frames:
        assert frame_stored_bytes(samples[key], index) == get_frame(ds.PixelData, index, number_of_frames=count)
    with pytest.raises(IndexError):
        frame_stored_bytes(samples[key], count)


def test_metadata_points_at_the_pixel_data_with_an_absolute_bulkdata_uri_that_answers(config, samples):
    config(auto_analysis=False)
    cine = services.instance_store(samples["cine_jpeg"].read_bytes()).instance
    native = services.instance_store(samples["us_native"].read_bytes()).instance
    client = Client()
    client.force_login(user_with_role("v", "viewer"))

    def bulkdata_uri(item, host):
        url = (f"/dicomweb/studies/{item.series.study.study_instance_uid}/series/"
               f"{item.series.series_instance_uid}/instances/{item.sop_instance_uid}/metadata")
        attributes = client.get(url, HTTP_HOST=host).json()[0]
        assert "InlineBinary" not in attributes["7FE00010"]
        return attributes["7FE00010"]

    # the host the client reached (a proxy passing Host), so the URI resolves from where it asked
    pixel = bulkdata_uri(cine, "viewer.example")
    assert pixel["vr"] == "OB"
    assert pixel["BulkDataURI"].startswith("http://viewer.example/dicomweb/studies/")
    path = pixel["BulkDataURI"].removeprefix("http://viewer.example")
    source = dcmread(samples["cine_jpeg"])
    got = parts(client.get(path, HTTP_ACCEPT=OHIF))
    assert [p for _, p in got] == [get_frame(source.PixelData, i, number_of_frames=120) for i in range(120)]

    pixel = bulkdata_uri(native, "testserver")
    whole = parts(client.get(pixel["BulkDataURI"].removeprefix("http://testserver")))
    assert [p for _, p in whole] == [dcmread(samples["us_native"]).PixelData]  # decoded: one part, the value
    other = client.get(pixel["BulkDataURI"].replace("7FE00010", "00280010"))
    assert other.status_code == 404 and "Pixel Data" in other.json()["error"]
