from django.urls import path

from . import views

app_name = "analysis"

urlpatterns = [
    path("jobs/", views.job_list, name="jobs"),
    path("jobs/<int:pk>/retry", views.job_retry, name="retry"),
    path("api/jobs", views.api_jobs, name="api-jobs"),
    path("api/jobs/<int:pk>", views.api_job, name="api-job"),
    path("api/jobs/<int:pk>/retry", views.api_job_retry, name="api-job-retry"),
    path("api/instances/<str:sop_uid>/analysis", views.api_instance_analysis, name="api-instance-analysis"),
    path("api/studies/<str:study_uid>/measurements", views.api_study_measurements, name="api-study-measurements"),
]
