"""Spiking neural network: neuron dynamics, layers, presets, input encoding, checkpoints."""
