"""Simulated 720p cameras: sources, JPEG encoding, pacing and MQTT/CoAP transports.

The first role in the flow of a frame: cameras -> gateway -> cloud. The cloud's trainer
imports :mod:`cameras.scene` (the one import of a role by another, declared in the layer
contract) to render training data exactly the way the cameras render what they send.
"""
