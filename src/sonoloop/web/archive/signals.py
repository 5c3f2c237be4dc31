"""Signals the archive sends; other apps react to them without the archive knowing them."""

from django.dispatch import Signal

# Sent inside the transaction that indexes a stored instance (new or replacing an earlier
# copy), so what receivers write commits or rolls back with the index row.
# Arguments: instance (archive.models.Instance), created (bool), derived (bool: an object
# Sonoloop wrote itself, such as its own SEG and SR).
instance_indexed = Signal()

# Sent before a stored instance is replaced by a new copy with the same SOP Instance UID.
# Arguments: instance. A receiver returns a reason (str) to refuse the replacement — for
# example that the instance has AI results or expert annotations drawn on its pixels — or None.
instance_replacing = Signal()

# Sent inside the transaction that deletes instances, before their rows go (archive.removal).
# Arguments: instances (a list of Instance), hiding (bool: a rejection note hides them; records
# and files stay). A receiver marks the records it keeps and returns a removal.Removing naming
# the stored objects made from them (SEG, SR) and the files that go too.
instances_removing = Signal()
