"""From sources to training data: reading sources, image decoding, cleaning, personal data, tokenization, splits."""
