"""Torch-free runtime: decoding, view sampling, preprocessing, backends and scoring.

Nothing under this package may import torch: a deployment host has only the engine files, numpy
and its inference backend.
"""
