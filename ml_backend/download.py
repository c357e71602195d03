"""Download model weights into the Hugging Face cache (used to bake them into the Docker image).

python -m ml_backend.download grounding_dino sam2      # or: all
"""

from __future__ import annotations

import argparse

from ml_backend.config import MODEL_NAMES, settings


def download(families: list[str]) -> None:
    from huggingface_hub import snapshot_download

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    for family in families:
        model_id = settings.model_id(family)  # type: ignore[arg-type]
        path = snapshot_download(model_id, token=token)
        print(f"{family}: {model_id} -> {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", choices=[*MODEL_NAMES, "all"])
    args = parser.parse_args(argv)
    families = list(MODEL_NAMES) if "all" in args.models else list(dict.fromkeys(args.models))
    download(families)


if __name__ == "__main__":
    main()
