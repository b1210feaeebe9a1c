"""People's labels: who answers and how their answers reach a run.

- :mod:`.oracles`: the registry of oracles (simulated, human); each collects its answers and writes
  its own queries;
- :mod:`.queries`: the files people answer (queries.csv, the contact sheet, Label Studio tasks);
- :mod:`.answers`: the open batch and one transaction per batch of answers (the lock, the checks,
  the atomic store), whatever brought them: a file import or the page;
- :mod:`.serve`: the labeling page (loopback by default, its own origin and token only).

Parsing the answer files themselves is :mod:`ssal.data.label_files` (pure, below the run).
"""
