"""InverseScope: interpret activations of a language model by inverting them."""

# nnsight patches `object` with a `save` method. Libraries that inspect every attribute of a
# class when they first load (anyio's typed attribute sets, which Prefect's engine imports
# lazily; beartype) then fail. Load them before anything can import nnsight.
import anyio._backends._asyncio  # noqa: F401
import anyio.abc  # noqa: F401
import beartype  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Run", "open", "runs", "load_run_config", "__version__"]


def __getattr__(name: str):
    # the API loads polars and the storage layer: only when asked, so the CLI starts fast
    if name in ("Run", "open", "runs"):
        from inversescope import api

        return getattr(api, name)
    if name == "load_run_config":
        from inversescope.config import load_run_config

        return load_run_config
    raise AttributeError(f"module 'inversescope' has no attribute {name!r}")
