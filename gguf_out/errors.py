"""Errors the converter raises; the CLI prints each as one line."""


class ConvertError(Exception):
    """A problem with the conversion inputs (map, config, tokenizer, options) or output."""
