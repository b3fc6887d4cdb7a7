"""trafficsnn: classify encrypted traffic from packet sizes, directions and timing with spiking neural networks."""

__version__ = "0.1.0"
