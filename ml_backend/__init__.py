"""od-annotation: AI-assisted object-detection annotation for Label Studio."""

__version__ = "0.1.0"
