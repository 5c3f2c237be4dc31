from django.urls import path

from . import views

app_name = "annotations"

urlpatterns = [
    path("instances/<str:sop_uid>/editor/", views.editor, name="editor"),
    path("review/", views.review_queue, name="review"),
    path("api/instances/<str:sop_uid>/annotations", views.api_instance_annotations, name="api-instance-annotations"),
    path("api/instances/<str:sop_uid>/results/<int:version>/masks", views.api_ai_masks, name="api-ai-masks"),
    path("api/annotations/<int:pk>", views.api_annotation, name="api-annotation"),
    path("api/annotations/<int:pk>/status", views.api_annotation_status, name="api-annotation-status"),
    path("api/annotations/<int:pk>/export", views.api_annotation_export, name="api-annotation-export"),
]
