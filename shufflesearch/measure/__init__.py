"""Latency on this machine: what is timed, how, and what is remembered.

Owns: the target spec and Latency record (target), the environment fingerprint, cache folder
and cross-process locks (env), the timing protocol (protocol), the latency cache (cache), the
drift monitor (drift), the per-unit latency predictor (predictor), the runtimes (backends)
and the torch backend's compiled form (compiled).
May import: common, model and errors.
"""
