from django.apps import AppConfig


class AnnotationsConfig(AppConfig):
    name = "sonoloop.web.annotations"
    label = "annotations"
    verbose_name = "Expert annotations"

    def ready(self):
        from sonoloop.web.archive.signals import instance_replacing, instances_removing

        from .services import on_instance_replacing, on_instances_removing

        instance_replacing.connect(on_instance_replacing, dispatch_uid="annotations-on-instance-replacing")
        instances_removing.connect(on_instances_removing, dispatch_uid="annotations-on-instances-removing")
        from sonoloop.web.archive.panels import INSTANCE_API_SECTIONS, INSTANCE_PANELS

        from . import views

        for panel in (views.player_panel, views.instance_panel):
            if panel not in INSTANCE_PANELS:
                INSTANCE_PANELS.append(panel)
        if views.instance_api_section not in INSTANCE_API_SECTIONS:
            INSTANCE_API_SECTIONS.append(views.instance_api_section)

        from sonoloop.web.archive.panels import STUDY_LIST_COLUMNS, STUDY_LIST_FILTERS

        from . import worklist

        if worklist.study_columns not in STUDY_LIST_COLUMNS:
            STUDY_LIST_COLUMNS.append(worklist.study_columns)
        STUDY_LIST_FILTERS.update(worklist.FILTERS)
