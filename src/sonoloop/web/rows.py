"""Rows written on every received image, through statements compiled once.

A C-STORE writes three rows (the instance, its analysis job, the job's task) and names the
task on the job. ``Model.objects.create`` compiles its INSERT again for every row: on a
single-frame store that was about a third of a millisecond per row, a tenth of what the
whole store may take to keep up with Orthanc. :class:`PreparedInsert` asks Django's own
insert compiler for the statement once per database (it is the SQL ``create`` runs) and
then executes it with the values the fields prepare themselves (``pre_save`` for
``auto_now_add``, ``get_db_prep_save`` for JSON and dates), sending ``pre_save`` and
``post_save`` as ``Model.save`` does, so that receivers (django-tasks-db's among them) run.
"""

from __future__ import annotations

import threading

from django.db import connections, router
from django.db.models import Model, signals
from django.db.models.sql import InsertQuery


class PreparedInsert:
    """``create(**values)`` for one model, with the INSERT compiled once per database.

    Only for plain rows: fields with database defaults or expressions as values are not
    supported (none of the rows it writes has them); a model with such a field raises at
    construction.
    """

    def __init__(self, model: type[Model]):
        meta = model._meta
        self.model = model
        self.fields = [f for f in meta.local_concrete_fields if not f.generated
                       and not (f.primary_key and f.auto_created) and not getattr(f, "db_returning", False)]
        unsupported = [f.name for f in self.fields if f.has_db_default()]
        if unsupported:
            raise TypeError(f"{model.__name__}: fields with database defaults ({', '.join(unsupported)}) "
                            f"are not supported")
        self._returning = meta.db_returning_fields
        self._sql: dict[tuple[str, str], tuple[str, tuple]] = {}
        self._lock = threading.Lock()

    def _statement(self, using: str, obj: Model) -> tuple[str, tuple]:
        connection = connections[using]
        key = (using, connection.vendor)
        statement = self._sql.get(key)
        if statement is None:
            query = InsertQuery(self.model)
            query.insert_values(self.fields, [obj])
            compiler = query.get_compiler(using=using)
            compiler.returning_fields = self._returning if connection.features.can_return_columns_from_insert else None
            [(sql, params)] = compiler.as_sql()
            if len(params) != len(self.fields) or sql.count("%s") != len(self.fields):
                raise TypeError(f"{self.model.__name__}: the compiled INSERT does not take one parameter per field")
            statement = (sql, compiler.returning_params)
            with self._lock:
                self._sql[key] = statement
        return statement

    def create(self, **values) -> Model:
        model = self.model
        obj = model(**values)
        using = router.db_for_write(model, instance=obj)
        if signals.pre_save.has_listeners(model):
            signals.pre_save.send(sender=model, instance=obj, raw=False, using=using, update_fields=None)
        connection = connections[using]
        sql, returning_params = self._statement(using, obj)
        params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in self.fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if self._returning and connection.features.can_return_columns_from_insert:
                returned = connection.ops.fetch_returned_insert_columns(cursor, returning_params)
                for field, value in zip(self._returning, returned):
                    setattr(obj, field.attname, value)
            elif self._returning:
                pk = model._meta.pk
                obj.pk = connection.ops.last_insert_id(cursor, model._meta.db_table, pk.column)
        obj._state.adding = False
        obj._state.db = using
        if signals.post_save.has_listeners(model):
            signals.post_save.send(sender=model, instance=obj, created=True, update_fields=None, raw=False, using=using)
        return obj


class PreparedUpdate:
    """``set(pk, value)``: one field of one row by primary key, without building a query."""

    def __init__(self, model: type[Model], field: str):
        self.model = model
        self.field = model._meta.get_field(field)
        self._sql: dict[str, str] = {}

    def set(self, pk, value) -> int:
        using = router.db_for_write(self.model)
        connection = connections[using]
        sql = self._sql.get(using)
        if sql is None:
            quote, meta = connection.ops.quote_name, self.model._meta
            sql = f"UPDATE {quote(meta.db_table)} SET {quote(self.field.column)} = %s WHERE {quote(meta.pk.column)} = %s"
            self._sql[using] = sql
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.field.get_db_prep_save(value, connection),
                                 self.model._meta.pk.get_db_prep_save(pk, connection)])
            return cursor.rowcount
