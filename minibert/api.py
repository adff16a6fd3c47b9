"""TEMPORARY SHIM (wt-loop): the public host-side API moves here from model.py in the wt-model branch.
This file only re-exports model.py's versions so wt-loop's code runs; take wt-model's api.py when merging."""
from minibert.model import compiled, loss_and_grads, mlm_logits  # noqa: F401
