"""The five commands, one module each, with their shared option groups (:mod:`.options`) and
error reporting (:mod:`.common`).

=============  ======================  ====================================================
command        module                  does
=============  ======================  ====================================================
cover-run      :mod:`.run`             score videos and images
cover-eval     :mod:`.eval`            score a labelled set, report SROCC/KROCC/PLCC/RMSE
cover-fetch    :mod:`.fetch`           download and verify the weight files
cover-export   :mod:`.export`          PyTorch model -> engine folder (needs torch)
cover-bench    :mod:`.bench`           stage times and throughput per backend (needs torch)
=============  ======================  ====================================================

Each module holds only option parsing and reporting; the work lives in the other subpackages
(``export`` and ``bench`` are imported when their command runs, so this package imports without
torch).
"""
