"""The DICOM network node and DICOM encoding. No Django here: the node talks to the
archive through the :class:`sonoloop.dicom.node.Archive` protocol."""
