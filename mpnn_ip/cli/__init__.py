"""Console scripts (Hydra apps): ``mpnn-train`` (:mod:`mpnn_ip.cli.train`), ``mpnn-eval``, ``mpnn-md``.

Shared plumbing (config directory, the user's ``./configs`` on the search path, one-paragraph
errors with exit code 2) lives in :mod:`mpnn_ip.cli.hydra_app`.
"""
