"""The search: a space of architectures, and the Optuna loop that explores it.

Owns: the search space and its typed config (space), the run folder and storage (runfolder),
one trial's evaluation (evaluator), objectives and sampler (objective), the worker loop
(worker), baselines and short training of the front (baselines), fault injection (faults), the
front and knee (front), trial records (records), progress display (progress), and ``search()``
(engine).
May import: common, model, measure, guidelines, accuracy and errors.
"""
