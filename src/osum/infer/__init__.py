"""Using trained models: decoding and scoring."""
