"""Experiments: the top layer below the CLI, where the parts meet.

- :mod:`.loop`: a run's rounds in order (train -> evaluate -> record -> select -> label) and resume;
- :mod:`.trainer`: round r -> a fitted model (members of an ensemble, the previous model, the
  auxiliary module a strategy asks for) and its checkpoint; :class:`~.trainer.Carry` is what one
  round hands the next;
- :mod:`.pretraining`: the self-supervised encoder, cached by what determines it;
- :mod:`.compare` (a grid of cells), :mod:`.report` (curves, AUBC, paired differences),
  :mod:`.deploy` (predict, export) and :mod:`.project` (``ssal init``).

It reads and writes a run only through :mod:`ssal.run`.
"""
