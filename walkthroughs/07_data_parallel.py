# %% [markdown]
# # Walkthrough 7: one batch on four devices gives the step of one
#
# Data parallelism splits a batch by rows over N devices, keeps a copy of the parameters on each, and sums the
# gradients over the devices (an all-reduce) before the optimizer. Mini-BERT leaves the partitioning to JAX: the
# same step function, fed arrays split by rows (`backend.data_parallel(4)`), compiles to a program in which XLA
# inserts the all-reduce. Here on four *virtual* CPU devices, which must be asked for before JAX starts: this script
# sets `XLA_FLAGS` first thing. Guide: [docs/guide/12-data-parallel-training.md](../docs/guide/12-data-parallel-training.md).

# %%
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import re  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import backends  # noqa: E402
from minibert import BertConfig, init_params  # noqa: E402
from minibert.data.batch import check_batch, device_batches  # noqa: E402
from minibert.nn.model import forward_backward, label_count  # noqa: E402
from minibert.nn.step import accumulate_gradients  # noqa: E402

one = backends.get_backend("jax")
four = one.data_parallel(4)
print(f"{len(jax.devices())} devices: {jax.devices()}")

# %% [markdown]
# A small model and one batch of 8 sequences, with a different number of labelled tokens in each row (so the
# devices hold different label counts, which the token-weighted loss must handle).

# %%
config = BertConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=16)
rng = np.random.default_rng(0)
ids = rng.integers(5, config.vocab_size, (8, 12))
labels = np.full((8, 12), -100)
for row in range(8):
    chosen = rng.choice(12, size=row % 4 + 1, replace=False)
    labels[row, chosen] = ids[row, chosen]
batch = check_batch({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
                     "labels": labels}, config)
print("labelled tokens per row:", (labels != -100).sum(1).tolist())


def gradients(backend):
    """(loss, gradients, the compiled program's text) of one step's forward and backward on `backend`."""
    params = init_params(config, seed=0, backend=backend)
    step = backend.jit(partial(accumulate_gradients, partial(forward_backward, config=config, backend=backend),
                               backend=backend, count_fn=label_count))
    arrays = device_batches([batch], backend, "float32")
    compiled = step.lower(params, arrays, None).compile()
    loss, grads = compiled(params, arrays, None)
    return float(one.to_numpy(loss)), {k: one.to_numpy(g) for k, g in grads.items()}, compiled.as_text(), arrays


# %% [markdown]
# The same function on one device and on four. On four, each device really holds 2 of the 8 rows.

# %%
loss_1, grads_1, program_1, _ = gradients(one)
loss_4, grads_4, program_4, arrays_4 = gradients(four)
shards = [s.data.shape for s in arrays_4[0].input_ids.addressable_shards]
print("input_ids on 4 devices:", shards)
assert shards == [(2, 12)] * 4
print(f"loss: one device {loss_1:.6f}, four devices {loss_4:.6f}")
np.testing.assert_allclose(loss_4, loss_1, rtol=1e-5)
worst = max(float(np.max(np.abs(grads_4[k] - grads_1[k])) / (np.max(np.abs(grads_1[k])) + 1e-30)) for k in grads_1)
print(f"largest gradient difference, relative to each tensor's largest entry: {worst:.1e}")
assert worst < 1e-5
print("four devices == one device")

# %% [markdown]
# Where the sum over devices happens: nowhere in Mini-BERT's code. The compiled program of the four-device step
# contains all-reduce operations (the gradients, the label count, the loss); the one-device program has none.

# %%
collectives = []
for line in program_4.splitlines():
    found = re.match(r"\s*%all-reduce[\w.-]* = (.*?) all-reduce(?:-start)?\(", line)
    if found:
        shapes = re.findall(r"f32\[([\d,]*)\]", found.group(1))
        collectives.append((len(shapes), sum(int(np.prod([int(d) for d in s.split(",") if d])) for s in shapes)))
print(f"all-reduce ops on four devices: {len(collectives)}; on one device: {program_1.count('all-reduce')}")
for arrays, elements in sorted(collectives, key=lambda c: -c[1]):
    print(f"  {arrays:3d} float32 arrays, {elements:7d} elements")
parameters = sum(g.size for g in grads_1.values())
print(f"the model has {parameters} parameters")
assert collectives and "all-reduce" not in program_1
assert max(elements for _, elements in collectives) >= parameters     # every gradient crosses the devices once
