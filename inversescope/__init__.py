"""InverseScope: interpret activations of a language model by inverting them."""

__version__ = "0.1.0"
