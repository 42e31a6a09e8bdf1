"""Sample sources for the converter: Hugging Face datasets (``hf``) and seeded synthetic data."""
