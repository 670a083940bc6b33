"""ml_collections configs of sdjax (`--config=configs/NAME.py`)."""
