"""DICOMweb (PS3.18): QIDO-RS search, WADO-RS retrieve, WADO-URI, STOW-RS store."""

from __future__ import annotations

import itertools
import logging
import re
import uuid

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_http_methods
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from sonoloop.dicom.instance import InvalidInstance
from sonoloop.dicom.pixels import FRAME_MEDIA_TYPES, NoPixelData, frame_native_bytes, frame_stored_bytes
from sonoloop.dicom.query import Match, Query, QueryError, match_for, response_json
from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.accounts.roles import has_role
from sonoloop.web.audit.services import actor_of
from sonoloop.web.bodies import BodyTooLarge, large_body_limit, read_body

from . import previews, services, trail
from .models import Instance

log = logging.getLogger("sonoloop.dicomweb")

DICOM_JSON = "application/dicom+json"

# PS3.18 Table 6.7.1-2: attributes returned by default for each search level.
DEFAULT_FIELDS = {
    "STUDY": [
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle",
    ],
    "SERIES": [
        "Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "SeriesDate",
        "NumberOfSeriesRelatedInstances", "StudyInstanceUID",
    ],
    "IMAGE": [
        "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
        "AvailableTransferSyntaxUID", "StudyInstanceUID", "SeriesInstanceUID",
    ],
}


MAX_FRAMES_PER_REQUEST = 256
# The most results one QIDO-RS answer holds (PS3.18 lets a server answer fewer than match).
QIDO_MAX_RESULTS = 1000


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _keyword(name: str) -> str | None:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(Tag(int(name, 16))) or None
    return name if tag_for_keyword(name) is not None else None


def _qido_query(request, level: str, fixed: dict[str, str]) -> tuple[Query, int | None, int] | JsonResponse:
    query = Query(level=level, root="STUDY", return_keys=list(DEFAULT_FIELDS[level]))
    limit, offset = None, 0
    for name, values in request.GET.lists():
        if name == "limit":
            try:
                limit = max(0, int(values[-1]))
            except ValueError:
                return _error(400, "limit must be a whole number")
            continue
        if name == "offset":
            try:
                offset = max(0, int(values[-1]))
            except ValueError:
                return _error(400, "offset must be a whole number")
            continue
        if name in ("fuzzymatching", "_"):
            continue
        if name == "includefield":
            for value in ",".join(values).split(","):
                if value == "all":
                    continue
                keyword = _keyword(value.strip())
                if keyword is None:
                    return _error(400, f"includefield {value!r} is not a DICOM attribute")
                query.return_keys.append(keyword)
            continue
        keyword = _keyword(name)
        if keyword is None:
            return _error(400, f"{name!r} is not a DICOM attribute keyword or tag")
        try:
            match = match_for(keyword, values[-1])
        except QueryError as exc:
            return _error(400, str(exc))
        if match is not None:
            query.add(match)
    for keyword, value in fixed.items():
        query.matches.append(Match(keyword, "single", value=value))
    return query, limit, offset


def _search(request, level: str, **fixed):
    parsed = _qido_query(request, level, {k: v for k, v in fixed.items() if v})
    if isinstance(parsed, JsonResponse):
        return parsed
    query, limit, offset = parsed
    query.return_keys = list(dict.fromkeys(query.return_keys))
    limit = QIDO_MAX_RESULTS if limit is None else min(limit, QIDO_MAX_RESULTS)
    trail.record_query(actor_of(request), query, "QIDO-RS")
    body = []
    # one more than asked for tells whether the answer was cut
    for record in services.query_records(query, limit=limit + 1, offset=offset):
        body.append(response_json(query, record))
    response = JsonResponse(body[:limit], safe=False, content_type=DICOM_JSON)
    if len(body) > limit:
        # PS3.18 8.3.4.4: fewer results than match, and how to ask for the rest
        response["Warning"] = (f'299 {request.get_host()}: "There are more than {limit} results; '
                               f'ask again with offset={offset + limit}"')
    return response


@api_login_required
@require_http_methods(["GET", "POST"])
def studies(request):
    if request.method == "POST":
        return stow(request)
    return _search(request, "STUDY")


@api_login_required
@require_http_methods(["GET"])
def series_search(request, study=None):
    return _search(request, "SERIES", StudyInstanceUID=study)


@api_login_required
@require_http_methods(["GET"])
def instance_search(request, study=None, series=None):
    return _search(request, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series)


# -- WADO-RS ----------------------------------------------------------------------------------------


def instances_at(study, series=None, instance=None):
    qs = Instance.objects.select_related("series__study__patient").filter(series__study__study_instance_uid=study)
    if series:
        qs = qs.filter(series__series_instance_uid=series)
    if instance:
        qs = qs.filter(sop_instance_uid=instance)
    return qs.order_by("series__series_number", "instance_number", "pk")


def multipart_response(parts, content_type: str, transfer_syntax: str = "") -> StreamingHttpResponse:
    boundary = uuid.uuid4().hex
    part_type = f"{content_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else content_type

    def stream():
        for extra_headers, payload in parts:
            header = f"--{boundary}\r\nContent-Type: {part_type}\r\n{extra_headers}\r\n"
            yield header.encode()
            yield payload
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    response = StreamingHttpResponse(stream())
    response["Content-Type"] = f'multipart/related; type="{content_type}"; boundary={boundary}'
    if transfer_syntax:
        response["Content-Type"] += f"; transfer-syntax={transfer_syntax}"
    return response


EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _accepted(accept: str) -> list[tuple[str, str]]:
    """The (media type, transfer syntax) pairs an Accept header names for frames; ("*", "")
    for any (no header, ``*/*``, ``multipart/related`` alone)."""
    pairs = []
    for media_range in filter(None, (r.strip() for r in accept.split(","))):
        kind, *params = (p.strip() for p in media_range.split(";"))
        values = {}
        for param in params:
            name, _, value = param.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        if kind == "multipart/related":
            pairs.append((values.get("type", "*"), values.get("transfer-syntax", "")))
        elif kind in ("*/*", "*"):
            pairs.append(("*", ""))
        else:
            pairs.append((kind, values.get("transfer-syntax", "")))
    return pairs or [("*", "")]


def frame_answer(accept: str, stored: str) -> tuple[str, str] | None:
    """How to send frames of an instance stored in ``stored``: (media type, transfer syntax).
    As stored whenever the request allows it (``transfer-syntax=*``, the stored syntax named,
    or the stored syntax's own image type); else decoded to explicit little endian, the
    default of ``application/octet-stream``; None when neither is acceptable (406)."""
    compressed = stored in FRAME_MEDIA_TYPES
    for media, syntax in _accepted(accept):
        if compressed and media in ("application/octet-stream", "*") and syntax in ("*", stored):
            return "application/octet-stream", stored
        if compressed and media == FRAME_MEDIA_TYPES[stored] and syntax in ("", "*", stored):
            return media, stored
    for media, syntax in _accepted(accept):
        if media in ("application/octet-stream", "*") and syntax in ("", "*", EXPLICIT_LE):
            return "application/octet-stream", EXPLICIT_LE
    return None


@api_login_required
@require_http_methods(["GET"])
def retrieve(request, study, series=None, instance=None):
    return _retrieve(request, study, series, instance)


def _retrieve(request, study, series=None, instance=None):
    accept = request.headers.get("Accept", "")
    if accept and "application/dicom" not in accept and "*/*" not in accept and "multipart/related" not in accept:
        return _error(406, "WADO-RS retrieve returns multipart/related; type=\"application/dicom\"")
    instances = list(instances_at(study, series, instance))
    if not instances:
        return _error(404, "no matching instances")
    trail.record_transfer(actor_of(request), instances, "R", "WADO-RS")
    return multipart_response(((("", services.instance_path(i).read_bytes()) for i in instances)), "application/dicom")


@api_login_required
@require_http_methods(["GET"])
def metadata(request, study, series=None, instance=None):
    instances = list(instances_at(study, series, instance))
    if not instances:
        return _error(404, "no matching instances")
    trail.record_read(actor_of(request), instances[0].series.study, "WADO-RS metadata")
    body = []
    for item in instances:
        ds = dcmread(services.instance_path(item), stop_before_pixels=True)
        ds.remove_private_tags()
        # everything inline but Pixel Data, which is a BulkDataURI (and .../frames/{n})
        attributes = ds.to_json_dict(bulk_data_threshold=2**31)
        if "Rows" in ds:
            attributes[PIXEL_DATA] = {"vr": _pixel_vr(ds), "BulkDataURI": _bulkdata_url(request, item)}
        body.append(attributes)
    return JsonResponse(body, safe=False, content_type=DICOM_JSON)


PIXEL_DATA = "7FE00010"


def _pixel_vr(ds: Dataset) -> str:
    encapsulated = "TransferSyntaxUID" in ds.file_meta and ds.file_meta.TransferSyntaxUID.is_encapsulated
    return "OB" if encapsulated or int(ds.get("BitsAllocated", 8)) <= 8 else "OW"


def _bulkdata_url(request, item: Instance) -> str:
    """Absolute, from the request's own host and scheme: what a client reached, so it resolves
    behind a reverse proxy that passes Host and X-Forwarded-Proto (README, "Stock OHIF v3")."""
    series = item.series
    return request.build_absolute_uri(
        f"/dicomweb/studies/{series.study.study_instance_uid}/series/{series.series_instance_uid}"
        f"/instances/{item.sop_instance_uid}/bulkdata/{PIXEL_DATA}")


@api_login_required
@require_http_methods(["GET"])
def frames(request, study, series, instance, frame_list):
    item = instances_at(study, series, instance).first()
    if item is None:
        return _error(404, "no matching instance")
    try:
        numbers = list(dict.fromkeys(int(n) for n in frame_list.split(",")))  # each frame once
    except ValueError:
        return _error(400, "frame numbers must be whole numbers separated by commas")
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        return _error(400, f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    if any(not 1 <= n <= (item.number_of_frames or 1) for n in numbers):
        return _error(404, f"this instance has frames 1 to {item.number_of_frames or 1}")
    return _frames_response(request, item, numbers)


@api_login_required
@require_http_methods(["GET"])
def bulkdata(request, study, series, instance, attribute):
    """The Pixel Data a metadata answer points at: every frame as its own part, as stored when the
    Accept header allows it; decoded, the whole value as one part (PS3.18 8.5.1)."""
    if attribute.upper() != PIXEL_DATA:
        return _error(404, "only Pixel Data (7FE00010) is sent as bulk data; the rest is inline in the metadata")
    item = instances_at(study, series, instance).first()
    if item is None:
        return _error(404, "no matching instance")
    return _frames_response(request, item, list(range(1, (item.number_of_frames or 1) + 1)), whole=True)


def _frames_response(request, item: Instance, numbers: list[int], whole: bool = False):
    answer = frame_answer(request.headers.get("Accept", ""), item.transfer_syntax_uid)
    if answer is None:
        return _error(406, f"frames of this instance are sent as stored ({item.transfer_syntax_uid}, "
                           f"{FRAME_MEDIA_TYPES.get(item.transfer_syntax_uid, 'application/octet-stream')}) or "
                           f"decoded as application/octet-stream; the Accept header allows neither")
    media, syntax = answer
    read = frame_native_bytes if syntax == EXPLICIT_LE else frame_stored_bytes
    path = services.instance_path(item)
    try:
        first = read(path, numbers[0] - 1)
    except NoPixelData:
        return _error(400, "this instance has no pixel data")
    except IndexError as exc:
        return _error(404, str(exc))
    trail.record_read(actor_of(request), item.series.study, "WADO-RS frames")
    if whole and syntax == EXPLICIT_LE:
        value = b"".join([first, *(read(path, n - 1) for n in numbers[1:])])
        return multipart_response([("", value)], media, syntax)
    # one frame in memory at a time, however many are asked for
    rest = (("", read(path, n - 1)) for n in numbers[1:])
    return multipart_response(itertools.chain([("", first)], rest), media, syntax)


# -- WADO-URI ---------------------------------------------------------------------------------------


@api_login_required
@require_http_methods(["GET"])
def wado_uri(request):
    if request.GET.get("requestType") != "WADO":
        return _error(400, "requestType must be WADO")
    uid = request.GET.get("objectUID", "")
    item = Instance.objects.filter(sop_instance_uid=uid).select_related("series__study__patient").first()
    if item is None:
        return _error(404, f"no instance with objectUID {uid!r}")
    for param, actual in (("studyUID", item.series.study.study_instance_uid), ("seriesUID", item.series.series_instance_uid)):
        if request.GET.get(param) and request.GET[param] != actual:
            return _error(404, f"{param} does not match the stored instance")
    content_type = request.GET.get("contentType", "application/dicom")
    trail.record_read(actor_of(request), item.series.study, "WADO-URI")
    if content_type == "application/dicom":
        return HttpResponse(services.instance_path(item).read_bytes(), content_type="application/dicom")
    if content_type in ("image/png", "image/jpeg"):
        try:
            frame = int(request.GET.get("frameNumber", 1))
        except ValueError:
            return _error(400, "frameNumber must be a whole number")
        try:
            return HttpResponse(services.instance_preview_png(item, frame, previews.FULL_SIZE), content_type="image/png")
        except (NoPixelData, IndexError) as exc:
            return _error(400, str(exc))
    return _error(406, f"contentType {content_type!r} is not offered; use application/dicom or image/png")


# -- STOW-RS ----------------------------------------------------------------------------------------


def _split_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("the multipart/related Content-Type has no boundary")
    # RFC 2046: the CRLF before each "--boundary" belongs to the delimiter.
    delimiter = b"\r\n--" + match.group(1).encode()
    parts = []
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a multipart part has no header/body separator")
        part_type = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                part_type = value.strip()
        parts.append((part_type, payload))
    return parts


def _sop_reference(uid_class: str, uid_instance: str, reason: int | None = None, url: str = "") -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = uid_class
    item.ReferencedSOPInstanceUID = uid_instance
    if reason is not None:
        item.FailureReason = reason
    if url:
        item.RetrieveURL = url
    return item


def stow(request, study=None):
    if not has_role(request.user, "admin"):
        return _error(403, "storing instances (STOW-RS) needs the admin role")
    content_type = request.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/related") or "application/dicom" not in content_type:
        return _error(415, 'STOW-RS accepts multipart/related; type="application/dicom"')
    try:
        body = read_body(request, large_body_limit())
    except BodyTooLarge as exc:
        return _error(413, f"{exc} (SONOLOOP_MAX_INSTANCE_MB)")
    try:
        parts = _split_multipart(body, content_type)
    except ValueError as exc:
        return _error(400, str(exc))
    if not parts:
        return _error(400, "the request holds no DICOM parts")
    stored, failed, received = [], [], []
    sender = services.admin_sender("stow", request.user.username, request.META.get("REMOTE_ADDR", ""))
    for part_type, payload in parts:
        if part_type and not part_type.startswith("application/dicom"):
            failed.append(_sop_reference("", "", 0xA900))
            continue
        try:
            result = services.instance_store(payload, sender=sender, study_uid=study)
        except InvalidInstance as exc:
            log.warning("STOW-RS from %s: instance %s rejected: %s", request.user, exc.sop_instance_uid, exc)
            failed.append(_sop_reference("", exc.sop_instance_uid, exc.status))
            continue
        except services.StorageFull as exc:
            log.error("STOW-RS from %s refused: %s", request.user, exc.strerror or exc)
            failed.append(_sop_reference("", "", exc.status))
            continue
        inst = result.instance
        if not result.kept_existing:
            received.append(inst)
        url = request.build_absolute_uri(
            f"/dicomweb/studies/{inst.series.study.study_instance_uid}/series/"
            f"{inst.series.series_instance_uid}/instances/{inst.sop_instance_uid}"
        )
        stored.append(_sop_reference(inst.sop_class_uid, inst.sop_instance_uid, url=url))
    trail.record_transfer(actor_of(request), received, "C", "STOW-RS")
    response = Dataset()
    if stored:
        response.ReferencedSOPSequence = stored
    if failed:
        response.FailedSOPSequence = failed
    status = 200 if not failed else 409 if not stored else 202
    return JsonResponse(response.to_json_dict(), status=status, content_type=DICOM_JSON)


def _delete(request, study, series=None, instance=None):
    """``DELETE`` of a study, series or instance (as Orthanc and dcm4chee offer; PS3.18 has no
    delete): the admin role, an optional ``?reason=`` for the access trail."""
    if not has_role(request.user, "admin"):
        return _error(403, "deleting needs the admin role")
    actor, reason = actor_of(request), request.GET.get("reason", "").strip()[:200] or "DICOMweb DELETE"
    try:
        if instance:
            removed = services.instance_remove(instance, actor=actor, reason=reason, study_uid=study, series_uid=series)
        elif series:
            removed = services.series_remove(series, actor=actor, reason=reason, study_uid=study)
        else:
            removed = services.study_remove(study, actor=actor, reason=reason)
    except services.RemovalError as exc:
        return _error(404, str(exc))
    return JsonResponse({"deleted": removed.instances, "derived_deleted": removed.derived,
                         "studies": list(removed.studies), "studies_removed": removed.studies_gone})


@api_login_required
@require_http_methods(["GET", "POST", "DELETE"])
def study_resource(request, study):
    if request.method == "POST":
        return stow(request, study)
    if request.method == "DELETE":
        return _delete(request, study)
    return _retrieve(request, study)


@api_login_required
@require_http_methods(["GET", "DELETE"])
def series_resource(request, study, series):
    if request.method == "DELETE":
        return _delete(request, study, series)
    return _retrieve(request, study, series)


@api_login_required
@require_http_methods(["GET", "DELETE"])
def instance_resource(request, study, series, instance):
    if request.method == "DELETE":
        return _delete(request, study, series, instance)
    return _retrieve(request, study, series, instance)

