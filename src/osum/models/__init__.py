"""Models: the Whisper encoder, adapters, and the speech LLM that joins them to a causal LM."""
