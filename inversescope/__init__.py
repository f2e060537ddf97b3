"""InverseScope: interpret activations of a language model by inverting them."""

# nnsight patches `object` with a `save` method. Libraries that inspect every attribute of a
# class when they first load (anyio's typed attribute sets, which Prefect's engine imports
# lazily; beartype) then fail. Load them before anything can import nnsight.
import anyio._backends._asyncio  # noqa: F401
import anyio.abc  # noqa: F401
import beartype  # noqa: F401

__version__ = "0.1.0"
