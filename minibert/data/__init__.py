"""Host-side data (NumPy): the embedded corpus and corpus files (`corpus`), prepared token shards (`prepared`),
WordPiece (`tokenizer`), masked-LM packing and masking (`mlm`), batch validation and device batches (`batch`,
`classify_batch`), fine-tuning examples and their encoding (`finetune_data`, `finetune_encode`) and the built-in
tasks (`tasks_builtin`)."""
