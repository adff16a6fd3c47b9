"""The model math, written once against the Python array API: every op's forward and hand-written backward
(`ops`, `attention`, `loss`), the encoder and MLM head (`model`), the classification heads (`heads`, `classify`),
AdamW and the training step (`optim`, `step`), the mixed-precision policy (`precision`) and the parameter layout
(`layout`). Nothing in this package imports an array library, directly or through what it imports
(tests/test_model.py walks the import graph): `xp` comes from the arrays, the rest from the backend object."""
