"""Training runs: the flags (`settings`, `finetune_settings`, `command`), the run directory (`rundir`), the loop
every task shares (`loop`), the two tasks (`pretrain`, `finetune`) and data-parallel scaling (`scaling`)."""
