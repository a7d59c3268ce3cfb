"""Console scripts (Hydra apps): ``mpnn-train`` (:mod:`mpnn_ip.cli.train`), ``mpnn-eval``, ``mpnn-md``.

Each module parses its command line and calls the library (training set-up in :mod:`mpnn_ip.train`, MD in
:mod:`mpnn_ip.md`, checkpoints and committees in :mod:`mpnn_ip.checkpoint`). Shared plumbing (config
directory, the user's ``./configs`` on the search path, one-paragraph errors with exit code 2, Hydra's
parse of ``key=value`` arguments) lives in :mod:`mpnn_ip.cli.hydra_app`.
"""
