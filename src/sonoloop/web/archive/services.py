"""The archive's services, by concern — storing (``store``), who may change what
(``ownership``), deleting (``removal``), rejection notes (``rejection``), the integrity
check (``integrity``), querying (``querying``), peers (``peers``), what pages show
(``presenting``) and what Sonoloop makes itself (``own``) — gathered here for the views,
commands and other apps that call them."""

from sonoloop.dicom.filestore import FileStore, StorageFull, new_key  # noqa: F401

from .integrity import ArchiveCheck, archive_check  # noqa: F401
from .own import dataset_store, own_device, own_uid  # noqa: F401
from .peers import PeerError, move_destination, peer_add, peer_permissions, peer_remove  # noqa: F401
from .presenting import instance_attributes, instance_preview_png, instance_summary, study_summary  # noqa: F401
from .removal import (  # noqa: F401
    Removed, RemovalError, Removing, instance_remove, instances_removing, remove_instances, series_remove, study_remove,
)
from .querying import FIELDS, MODELS, apply_matches, instances_for, present_only, query_records, with_counts  # noqa: F401
from .ownership import Sender, StoreRefused, admin_sender, forget_cached_parents, same_patient  # noqa: F401
from .store import StoreResult, filestore, instance_path, instance_store  # noqa: F401
