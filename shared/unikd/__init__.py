"""The method: UNI-KD's networks, loss terms and the one split step (engine), with evaluation.

It imports no platform code (Flower, processes, signing): tests/test_boundaries.py keeps it so.
"""
