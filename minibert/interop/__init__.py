"""transformers interop: reading hub folders of every BERT class and writing them (`hf`), the config and
parameter-name mapping (`hf_names`)."""
