"""The architecture and everything derived from it without running it.

Owns: Arch and the presets (arch), per-unit channel arithmetic (specs), the OpGraph (graph),
params/MACs/MAC (cost), the nn units (units), compile to training/inference form (compile) and
the standalone model.py generated from those units (codegen).
May import: common and errors. Takes an Arch, never a preset name or a path: those are resolved
at the edges (cli.py, the public API) with ``model.arch.resolve_arch``.
"""
