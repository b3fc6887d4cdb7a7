"""Capture agent, classifier daemon, batcher, sinks, metrics and sd_notify."""
