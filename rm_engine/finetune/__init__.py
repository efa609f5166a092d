"""Fine-tune mode: the whole backbone with a score head, and its GPU machinery (length-grouped and
packed batches, varlen attention, memory fitting, data parallelism)."""
