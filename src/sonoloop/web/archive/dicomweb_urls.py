from django.urls import path

from . import dicomweb, rendered

S = "studies/<str:study>"
SE = f"{S}/series/<str:series>"
I = f"{SE}/instances/<str:instance>"

urlpatterns = [
    path("wado", dicomweb.wado_uri, name="wado-uri"),
    path("studies", dicomweb.studies, name="qido-studies"),
    path("series", dicomweb.series_search),
    path("instances", dicomweb.instance_search),
    path(S, dicomweb.study_resource),
    path(f"{S}/metadata", dicomweb.metadata),
    path(f"{S}/series", dicomweb.series_search),
    path(f"{S}/instances", dicomweb.instance_search),
    path(SE, dicomweb.series_resource),
    path(f"{SE}/metadata", dicomweb.metadata),
    path(f"{SE}/instances", dicomweb.instance_search),
    path(I, dicomweb.instance_resource),
    path(f"{I}/metadata", dicomweb.metadata),
    path(f"{I}/frames/<str:frame_list>", dicomweb.frames),
    path(f"{I}/bulkdata/<str:attribute>", dicomweb.bulkdata),
    # consumer images for viewers (PS3.18 8.3.5, 8.3.6)
    path(f"{S}/thumbnail", rendered.thumbnail),
    path(f"{SE}/thumbnail", rendered.thumbnail),
    path(f"{I}/thumbnail", rendered.thumbnail),
    path(f"{I}/frames/<str:frame_list>/thumbnail", rendered.thumbnail),
    path(f"{SE}/rendered", rendered.rendered),
    path(f"{I}/rendered", rendered.rendered),
    path(f"{I}/frames/<str:frame_list>/rendered", rendered.rendered),
]
