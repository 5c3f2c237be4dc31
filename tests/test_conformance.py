"""docs/conformance.md lists exactly the SOP classes, transfer syntaxes and C-FIND keys the node accepts."""

import re
from pathlib import Path

from sonoloop.dicom.attributes import INDEXED, LEVELS
from sonoloop.dicom.node import DicomNode, NodeSettings, STORAGE_SOP_CLASSES

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def table(name: str) -> list[list[str]]:
    text = DOC.read_text()
    body = re.search(rf"<!-- begin:{name} -->\n(.*?)<!-- end:{name} -->", text, re.S).group(1)
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in body.splitlines()[2:]]
    assert rows, name
    return rows


def uids(name: str) -> list[str]:
    return [re.fullmatch(r"`([0-9.]+)`", row[-1]).group(1) for row in table(name)]


def accepted() -> dict[str, list[str]]:
    node = DicomNode(archive=None, settings=NodeSettings("SONOLOOP", "127.0.0.1", 0))
    return {cx.abstract_syntax: cx.transfer_syntax for cx in node.ae.supported_contexts}


def test_the_sop_classes_listed_are_the_ones_the_node_accepts():
    listed_storage, listed_other = uids("storage-classes"), uids("scp-classes")
    assert len(listed_storage) == len(set(listed_storage)) == len(STORAGE_SOP_CLASSES)
    assert set(listed_storage) | set(listed_other) == set(accepted())
    assert set(listed_storage) == set(STORAGE_SOP_CLASSES)
    assert {"1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"} <= set(listed_storage)  # the retired US classes


def test_the_transfer_syntaxes_listed_are_the_ones_each_class_is_accepted_in():
    contexts = accepted()
    storage, other = uids("storage-syntaxes"), uids("other-syntaxes")
    for sop_class in uids("storage-classes"):
        assert contexts[sop_class] == storage, sop_class
    for sop_class in uids("scp-classes"):
        assert contexts[sop_class] == other, sop_class


def test_the_find_keys_listed_are_the_indexed_matching_keys():
    listed = {row[0]: [k.strip() for k in row[1].split(",")] for row in table("find-keys")}
    assert listed == {level: [a.keyword for a in INDEXED if a.level == level and a.matchable] for level in LEVELS}
