"""The scores evaluate computes: text (perplexity, bits per byte, BLEU/ROUGE), images (FID, KID, IS, precision/recall), memorization and diversity."""
