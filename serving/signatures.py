"""What a registered model declares to its consumers: the pyfunc signatures and pip requirements."""

from __future__ import annotations

from models.registry import Declaration

# Request columns (type, name, required) and response columns (type, name) of each modality's pyfunc.
TEXT_INPUTS = [("string", "prompt", True), ("long", "max_new_tokens", False), ("double", "temperature", False),
               ("long", "top_k", False), ("long", "seed", False)]
TEXT_OUTPUTS = [("string", "text")]
IMAGE_INPUTS = [("long", "n", True), ("long", "seed", False), ("long", "class_label", False), ("long", "steps", False),
                ("long", "scale", False)]
IMAGE_OUTPUTS = [("string", "image"), ("long", "index"), ("long", "class_label"), ("long", "seed")]


def signature(inputs: list[tuple[str, str, bool]], outputs: list[tuple[str, str]]):
    """Return the MLflow signature with these request and response columns."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec(t, n, required=r) for t, n, r in inputs]),
                          outputs=Schema([ColSpec(t, n) for t, n in outputs]))


def text_signature():
    """The text pyfunc's signature: one prompt per row, optional generation settings; one text per row."""
    return signature(TEXT_INPUTS, TEXT_OUTPUTS)


def image_signature():
    """The image pyfunc's signature: n images per row, optional settings; one PNG (base64) per image."""
    return signature(IMAGE_INPUTS, IMAGE_OUTPUTS)


def requirements(decl: Declaration, with_peft: bool = False) -> list[str]:
    """Return the pinned pip requirements of a logged model: its modality's, its generator's own, and peft for
    LoRA adapters logged apart from their base."""
    from importlib.metadata import version

    packages = [*decl.modality.requirements, *decl.requirements] + ["peft"] * with_peft
    return [f"{p}=={version(p)}" for p in packages]
