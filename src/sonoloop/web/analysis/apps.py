from django.apps import AppConfig


class AnalysisConfig(AppConfig):
    name = "sonoloop.web.analysis"
    label = "analysis"
    verbose_name = "Automatic segmentation and measurements"

    def ready(self):
        from sonoloop.web.archive.signals import instance_indexed, instance_replacing, instances_removing

        from . import services

        instance_indexed.connect(services.on_instance_indexed, dispatch_uid="analysis-on-instance-indexed")
        instance_replacing.connect(services.on_instance_replacing, dispatch_uid="analysis-on-instance-replacing")
        instances_removing.connect(services.on_instances_removing, dispatch_uid="analysis-on-instances-removing")

        from sonoloop.web.archive.panels import INSTANCE_API_SECTIONS, INSTANCE_PANELS, STUDY_PANELS

        from .views import instance_api_section, instance_panel, study_panel

        if instance_api_section not in INSTANCE_API_SECTIONS:
            INSTANCE_API_SECTIONS.append(instance_api_section)
        if instance_panel not in INSTANCE_PANELS:
            INSTANCE_PANELS.append(instance_panel)
        if study_panel not in STUDY_PANELS:
            STUDY_PANELS.append(study_panel)

        from sonoloop.web.archive.panels import STUDY_LIST_COLUMNS, STUDY_LIST_FILTERS

        from . import worklist

        if worklist.study_columns not in STUDY_LIST_COLUMNS:
            STUDY_LIST_COLUMNS.append(worklist.study_columns)
        STUDY_LIST_FILTERS.update(worklist.FILTERS)
