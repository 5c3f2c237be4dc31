from django.db import migrations

ROLES = ("viewer", "annotator", "reviewer", "admin")


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    User = apps.get_model("auth", "User")
    viewer = None
    for name in ROLES:
        group, _ = Group.objects.get_or_create(name=name)
        viewer = viewer or group
    # accounts that existed before roles keep seeing what they saw
    for user in User.objects.filter(is_superuser=False, groups=None):
        user.groups.add(viewer)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
