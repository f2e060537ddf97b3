"""Site names, one canonical scheme, checked before any weights are loaded.

- ``L{l}H{h}``: head ``h``'s term of layer ``l``'s attention output projection, in the residual
  basis, without the projection bias (TransformerLens ``hook_result``).
- ``L{l}.attn``: the attention block's whole output (after the output projection, with bias).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SITE = re.compile(r"L(?P<layer>\d+)(?:H(?P<head>\d+)|\.(?P<kind>attn))")
ACCEPTED = "L{layer}H{head} (e.g. L9H6) or L{layer}.attn (e.g. L13.attn)"


@dataclass(frozen=True)
class Site:
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        return f"L{self.layer}.attn" if self.head is None else f"L{self.layer}H{self.head}"

    @property
    def is_head(self) -> bool:
        return self.head is not None

    @property
    def sort_key(self) -> tuple[int, int]:
        """Layer order, heads before the layer's whole attention output."""
        return (self.layer, self.head if self.head is not None else 1 << 30)


@dataclass(frozen=True)
class ModelDims:
    """What site checking needs of a model: depth, heads per layer, residual width."""

    architecture: str
    n_layer: int
    n_head: int
    d_model: int


def parse_site(name: str) -> Site:
    """Parse a site name; raise ``ValueError`` naming it when it is not of an accepted form."""
    m = _SITE.fullmatch(name.strip()) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown site {name!r}; accepted: {ACCEPTED}")
    layer = int(m.group("layer"))
    head = None if m.group("kind") else int(m.group("head"))
    return Site(layer, head)


def check_sites(names: list[str], dims: ModelDims) -> list[Site]:
    """Parse ``names`` and check each lies within a model of shape ``dims``."""
    sites = [parse_site(n) for n in names]
    for site in sites:
        if site.layer >= dims.n_layer:
            raise ValueError(
                f"site {site.name}: layer {site.layer} does not exist; the target has layers "
                f"0..{dims.n_layer - 1}"
            )
        if site.head is not None and site.head >= dims.n_head:
            raise ValueError(
                f"site {site.name}: head {site.head} does not exist; the target has heads "
                f"0..{dims.n_head - 1} per layer"
            )
    return sites


def all_sites(n_layer: int, n_head: int, heads: bool = True, layers: bool = True) -> list[str]:
    """Every head site and/or every attention-layer site of a model, in layer order."""
    out: list[str] = []
    for layer in range(n_layer):
        if heads:
            out.extend(Site(layer, h).name for h in range(n_head))
        if layers:
            out.append(Site(layer).name)
    return out
