"""Turn MindSpore checkpoints into GGUF: maps, transforms, vocabulary, quantization, writing, the CLI."""
