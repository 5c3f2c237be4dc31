from django.urls import path

from . import views

app_name = "learning"

urlpatterns = [
    path("api/models", views.api_models, name="api-models"),
    path("api/models/<str:name>/promote", views.api_model_promote, name="api-model-promote"),
    path("api/models/<str:name>/rollback", views.api_model_rollback, name="api-model-rollback"),
    path("api/retraining", views.api_retraining, name="api-retraining"),
    path("api/retraining/<int:pk>", views.api_retraining_job, name="api-retraining-job"),
    path("api/retraining/<int:pk>/cancel", views.api_retraining_cancel, name="api-retraining-cancel"),
]
