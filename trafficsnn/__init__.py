"""trafficsnn: classify encrypted traffic from packet sizes, directions and timing with spiking neural networks.

    import trafficsnn
    flows = trafficsnn.Flows("trace.pcap")             # flows of a capture (no torch needed)
    flows.to_pandas()                                  # one row per flow (needs pandas)
    trafficsnn.Classifier().classify(flows).to_pandas()   # verdicts with the shipped model

``Flows``, ``Classifier`` and ``Verdicts`` live in ``trafficsnn.api``; they are imported on first
use, and torch only when a ``Classifier`` is made, so ``import trafficsnn`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["Flows", "Classifier", "Verdicts", "community_id", "__version__"]


def __getattr__(name: str):
    if name in ("Flows", "Classifier", "Verdicts"):
        from . import api

        return getattr(api, name)
    if name == "community_id":
        from .flows.community_id import community_id

        return community_id
    raise AttributeError(f"module 'trafficsnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
