"""Registry: duplicates are errors, unknown names suggest close ones, and a prefix resolver
serves a family of names without registering each (e.g. timm/<name>)."""

from __future__ import annotations

import pytest

from kdlab.core.registry import Registry
from kdlab.errors import UserError


def test_prefix_names_resolve_without_being_listed():
    reg: Registry = Registry("model")
    reg.register("tiny")(lambda: "tiny")
    known = {"a1": "A1"}

    def resolve(rest: str):
        if rest not in known:
            raise UserError(f"Unknown zoo model {rest!r}.")
        return known[rest]

    reg.register_prefix("zoo/", resolve)
    assert reg.get("zoo/a1") == "A1" and reg.get("tiny")() == "tiny"
    assert "zoo/a1" in reg and "zoo/b2" not in reg and "other" not in reg
    assert reg.names() == ["tiny"] and reg.prefixes() == ["zoo/"]
    with pytest.raises(UserError, match="Unknown zoo model 'b2'"):
        reg.get("zoo/b2")
    with pytest.raises(UserError, match="Did you mean 'tiny'"):
        reg.get("tinny")
    with pytest.raises(UserError, match="Unknown model None"):
        reg.get(None)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_prefix("zoo/", resolve)
