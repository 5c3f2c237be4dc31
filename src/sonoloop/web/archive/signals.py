"""Signals the archive sends; other apps react to them without the archive knowing them."""

from django.dispatch import Signal

# Sent inside the transaction that indexes a stored instance (new or replacing an earlier
# copy), so what receivers write commits or rolls back with the index row.
# Arguments: instance (archive.models.Instance), created (bool), derived (bool: an object
# Sonoloop wrote itself, such as its own SEG and SR).
instance_indexed = Signal()
