"""Helpers shared by test modules (importable because ``tests/`` holds the root conftest):
tiny segmentation pairs (:mod:`.segmentation`), detection batches (:mod:`.detection`),
training runs (:mod:`.training`), the reference implementations' formulas
(:mod:`.references`) and the docs' guides run as written (:mod:`.guides`)."""
