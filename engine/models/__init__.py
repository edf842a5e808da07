"""The model types behind one protocol (see :mod:`engine.run.registry`).

``similarity`` — the seed's model and ``nearest`` (its KD-tree variant) share
:mod:`engine.models.similarity`; ``evidence`` (tbp.monty's object and pose recognition)
lives in :mod:`engine.models.evidence`.
"""
