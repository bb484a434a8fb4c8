"""The generic trainer every generator uses: batches, optimizers, schedule, checkpoints, data parallelism, pretrained starts."""
