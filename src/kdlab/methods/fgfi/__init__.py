"""FGFI, fine-grained feature imitation (``fgfi``: :mod:`.fgfi`), a detection method: its
imitation mask (:mod:`.mask`), adaptation layer (:mod:`.adapter`) and loss (:mod:`.losses`).
FGFI has no classification form (its mask is built from anchors and boxes)."""

from kdlab.methods.fgfi.fgfi import FGFI

__all__ = ["FGFI"]
