"""The worklist's server time on 10,000 studies: the page as it is now against the study list's
query before issue 16 (related counts by JOIN and GROUP BY, no AI or annotation columns), in
one process.

    .venv/bin/python benchmarks/worklist.py [--studies 10000] [--repeats 20]

Builds the index of an archive in a temporary SQLite database (the page reads only the index,
so no files are written): one patient per study, two series of echo loops and the AI's SEG, a
finished analysis per loop with a reliable or an unreliable EF, a failed job in one study in
fifty, a submitted annotation in one in twenty. Then renders GET /studies/ through Django's
test client as a logged-in reader (middleware, template and all) for the first page, a page
deep in the list, a name search and each filter, and prints the median server time of each,
plus the old query alone on the same pages.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import timeit


def build(studies: int, seed: int = 5) -> None:
    from django.contrib.auth import get_user_model

    from sonoloop.web.analysis.models import AnalysisJob, AnalysisResult
    from sonoloop.web.annotations.models import Annotation
    from sonoloop.web.archive.models import Instance, Patient, Series, Study

    rng = random.Random(seed)
    families = ["Smith", "Müller", "García", "Rossi", "Nowak", "Jensen", "Dubois", "Silva", "Berg", "Khan"]
    patients = Patient.objects.bulk_create(
        Patient(patient_id=f"P{n:06d}", patient_name=f"{rng.choice(families)}^Anna", patient_sex="F")
        for n in range(studies))
    rows = Study.objects.bulk_create(
        Study(patient=p, study_instance_uid=f"1.2.3.{n}", study_date=f"{rng.randint(2015, 2025)}0{rng.randint(1, 9)}15",
              study_time="101010", modalities="US\\SEG", study_description="Echo")
        for n, p in enumerate(patients))
    series = Series.objects.bulk_create(
        Series(study=s, series_instance_uid=f"1.2.3.{n}.{k}", modality="US" if k < 2 else "SEG", series_number=k + 1)
        for n, s in enumerate(rows) for k in range(3))
    instances = Instance.objects.bulk_create(
        Instance(series=se, sop_instance_uid=f"{se.series_instance_uid}.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
                 number_of_frames=60, rows=600, columns=800, file_key=f"k{n}", file_size=1)
        for n, se in enumerate(series))
    loops = [i for i in instances if not i.sop_instance_uid.endswith(".2.1")]
    jobs = AnalysisJob.objects.bulk_create(
        AnalysisJob(instance=i, status=AnalysisJob.DONE, frames_total=60, frames_done=60) for i in loops)
    results = []
    for n, (instance, job) in enumerate(zip(loops, jobs)):
        reliable = n % 7 != 0
        ef = round(rng.uniform(20, 70), 1)
        results.append(AnalysisResult(job=job, instance=instance, version=1, model_name="m", model_version="1",
                                      labels_key="x", measurements={
                                          "view": "A4C" if n % 2 == 0 else "A2C", "ef": ef if reliable else None,
                                          "reliable": reliable, "la_volume": 50.0, "units": {"volume": "mL"},
                                          "reliability": "reliable" if reliable else "unreliable, no EF reported"}))
    AnalysisResult.objects.bulk_create(results)
    AnalysisJob.objects.bulk_create(AnalysisJob(instance=i, status=AnalysisJob.FAILED) for i in loops[::100])
    author = get_user_model().objects.create_user("anna")
    Annotation.objects.bulk_create(Annotation(instance=i, version=1, author=author, status=Annotation.SUBMITTED,
                                              document_key="d") for i in loops[::40])


def old_page(page: int):
    """The study list's query before issue 16: counts by JOIN + GROUP BY, then one page."""
    from django.core.paginator import Paginator
    from django.db.models import Count, Q

    from sonoloop.web.archive import services
    from sonoloop.web.archive.models import Study

    present = Q(series__instances__rejected_for="")
    studies = services.present_only(Study.objects.select_related("patient"), "STUDY").annotate(
        n_series=Count("series", distinct=True, filter=present),
        n_instances=Count("series__instances", distinct=True, filter=present),
    ).order_by("-study_date", "-study_time", "-id")
    return list(Paginator(studies, 25).get_page(page))


def median_ms(fn, repeats: int) -> float:
    fn()  # warm: the first call compiles templates and fills caches
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="sonoloop-worklist-")
    os.environ.update(SONOLOOP_DATA_DIR=work, DJANGO_SETTINGS_MODULE="sonoloop.web.settings",
                      SONOLOOP_AUTO_ANALYSIS="0")
    for key in [k for k in os.environ if k.startswith("DATABASE_URL")]:
        del os.environ[key]
    try:
        import django

        django.setup()
        import logging

        logging.disable(logging.WARNING)
        from django.conf import settings
        from django.core.management import call_command
        from django.test import Client

        # templates name static files; without `collectstatic` there is no hashed manifest
        settings.STORAGES = {**settings.STORAGES, "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}


        call_command("migrate", verbosity=0)
        began = time.perf_counter()
        build(args.studies)
        print(f"index of {args.studies} studies ({3 * args.studies} series and instances, "
              f"{2 * args.studies} AI results) built in {time.perf_counter() - began:.0f} s")
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_superuser("reader", password="x")
        client = Client()
        client.force_login(user)
        last = (args.studies + 24) // 25
        pages = {
            "first page": {},
            f"page {last // 2} of {last}": {"page": str(last // 2)},
            "name search 'Berg'": {"q": "Berg"},
            "needs review": {"show": "needs-review"},
            "EF below 40 %": {"show": "ef-below-40"},
            "AI failed or unreliable": {"show": "ai-problem"},
        }
        for name, params in pages.items():
            def render(params=params):
                response = client.get("/studies/", params)
                assert response.status_code == 200, response.status_code
            print(f"{name:26s} {median_ms(render, args.repeats):7.1f} ms (whole page, server side)")
        for name, page in (("first page", 1), (f"page {last // 2} of {last}", last // 2)):
            now = median_ms(lambda page=page: client.get("/studies/", {"page": str(page)}), args.repeats)
            before = median_ms(lambda page=page: old_page(page), args.repeats)
            print(f"{name:26s} before (its query alone) {before:7.1f} ms; now (the whole page) {now:7.1f} ms; "
                  f"ratio {now / before:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
