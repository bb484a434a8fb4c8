"""Every file name that one stage writes and another (or a consumer) reads, declared once.

Directories come from params.yaml (`<stage>.out_dir`, `<stage>.metrics_path`, ...); the names here are the files
inside them. A module that needs one imports it from here, so renaming a file is one edit.
"""

from __future__ import annotations

# ingest.out_dir
CORPUS_FILE = "corpus.jsonl"  # text: one raw document per line, with its source
MANIFEST_FILE = "manifest.json"  # what was read, from where
PACK_BLOBS, PACK_INDEX, PACK_CLASSES = "images.bin", "index.jsonl", "classes.json"  # images: an undecoded pack
# (clean.out_dir holds a decoded image pack under the same names)

# clean.out_dir
CLEAN_FILE = "documents.jsonl"  # text: one cleaned document per line

# preprocess.out_dir
TOKENIZER_FILE = "tokenizer.json"  # text: the tokenizer trained on the train split (Hugging Face tokenizers JSON)
META_FILE = "meta.json"  # what the data fixes for the model: vocabulary, image size, channels, classes, split sizes


def split_file(split: str) -> str:
    """Return the memory-mappable array of `split` (tokens, or images) inside preprocess.out_dir."""
    return f"{split}.npy"


def labels_file(split: str) -> str:
    """Return the class labels of the images of `split` inside preprocess.out_dir."""
    return f"{split}_labels.npy"


# classifier.out_dir
SKIPPED_FILE = "skipped.json"  # text data: why the stage did nothing
TASK_FILE = "task.json"  # what the classifier predicts: class labels or rotations

# train.out_dir (beside the generator's own model.safetensors and generator.json, see models/base.py)
RUN_FILE = "run.json"  # the MLflow run the training was logged to

# evaluate.out_dir
SAMPLES_FILE = "samples.jsonl"  # text: seeded unconditional samples
CONTINUATIONS_FILE = "continuations.jsonl"  # text: continuations of held-out prompts
CLASS_ACCURACY_FILE = "class_accuracy.json"  # conditional generators: per-class accuracy of the samples
PROTOCOL_FILE = "protocol.json"  # what the metrics were measured on (evaluation/protocol.py)
DOCUMENT_SCORES_FILE = "document_scores.json"  # text: NLL, tokens and bytes of each test document
IMAGE_FEATURES_FILE = "features.npz"  # images: features of the real images and of the samples, samples' logits

# evaluate.plots_dir: the pictures DVC plots (`dvc plots show`, `dvc plots diff` between experiments)
GRID_FILE = "samples.png"  # images: the fixed-seed sample grid; text: the seeded samples, rendered
RECONSTRUCTIONS_FILE = "reconstructions.png"  # vae: real test images over their reconstructions
NEAREST_FILE = "nearest.png"  # images: the samples closest to a training image over that image

# the registered model's artifacts and its run's `cards/`
DATA_CARD_FILE, MODEL_CARD_FILE = "data_card.md", "model_card.md"
