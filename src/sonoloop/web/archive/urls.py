from django.urls import path

from . import views

app_name = "archive"

urlpatterns = [
    path("", views.home, name="home"),
    path("studies/", views.study_list, name="studies"),
    path("patients/<int:pk>/", views.patient_detail, name="patient"),
    path("studies/<str:study_uid>/", views.study_detail, name="study"),
    path("studies/<str:study_uid>/delete", views.study_delete, name="study-delete"),
    path("series/<str:series_uid>/", views.series_detail, name="series"),
    path("instances/<str:sop_uid>/", views.instance_detail, name="instance"),
    path("instances/<str:sop_uid>/preview.png", views.instance_preview, name="preview"),
    path("instances/<str:sop_uid>/file.dcm", views.instance_download, name="download"),
    path("upload/", views.upload, name="upload"),
    path("api/studies", views.api_studies, name="api-studies"),
    path("api/instances/<str:sop_uid>", views.api_instance, name="api-instance"),
]
