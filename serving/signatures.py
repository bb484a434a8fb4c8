"""What a registered model declares to its consumers: the pyfunc signatures and pip requirements."""

from __future__ import annotations

from models.registry import Declaration


def text_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("string", "prompt"),
        ColSpec("long", "max_new_tokens", required=False),
        ColSpec("double", "temperature", required=False),
        ColSpec("long", "top_k", required=False),
        ColSpec("long", "seed", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "text")]))


def image_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([
        ColSpec("long", "n"),
        ColSpec("long", "seed", required=False),
        ColSpec("long", "class_label", required=False),
        ColSpec("long", "steps", required=False),
        ColSpec("long", "scale", required=False),
    ])
    outputs = Schema([ColSpec("string", "image"), ColSpec("long", "index"), ColSpec("long", "class_label"),
                      ColSpec("long", "seed")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements(decl: Declaration, with_peft: bool = False) -> list[str]:
    """Return the pinned pip requirements of a logged model: its modality's, its generator's own, and peft for
    LoRA adapters logged apart from their base."""
    from importlib.metadata import version

    packages = [*decl.modality.requirements, *decl.requirements] + ["peft"] * with_peft
    return [f"{p}=={version(p)}" for p in packages]
