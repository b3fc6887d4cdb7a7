"""Packet sources (pcap, pcapng, live) and the vectorised header decoder.

Never imports torch: a sensor host runs this without it.
"""
