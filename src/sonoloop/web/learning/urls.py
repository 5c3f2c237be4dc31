from django.urls import path

from . import pages, views

app_name = "learning"

urlpatterns = [
    path("models/", pages.model_list, name="models"),
    path("models/retrain", pages.retrain_start, name="retrain"),
    path("models/retraining/<int:pk>/cancel", pages.retrain_cancel, name="retrain-cancel"),
    path("models/<str:name>/", pages.model_detail, name="model"),
    path("models/<str:name>/promote", pages.model_promote, name="promote"),
    path("models/<str:name>/rollback", pages.model_rollback, name="rollback"),
    path("api/models", views.api_models, name="api-models"),
    path("api/models/<str:name>/promote", views.api_model_promote, name="api-model-promote"),
    path("api/models/<str:name>/rollback", views.api_model_rollback, name="api-model-rollback"),
    path("api/retraining", views.api_retraining, name="api-retraining"),
    path("api/retraining/<int:pk>", views.api_retraining_job, name="api-retraining-job"),
    path("api/retraining/<int:pk>/cancel", views.api_retraining_cancel, name="api-retraining-cancel"),
]
