"""RM Studio engine: backbones, feature cache, heads, trainer, metrics, registry, scoring, worker, CLI.

Importing this package is cheap: torch and transformers load only where a model is needed.
This package never imports streamlit.
"""
