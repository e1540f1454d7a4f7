"""
Lexicons: loading the schema documents and validating XRPC parameters,
bodies and records against them.
"""

from leafpds.lexicon.schema import LexiconError, Lexicons, parse_lexicon_document
from leafpds.lexicon.validate import (
    ValidationError,
    grapheme_count,
    validate_input,
    validate_output,
    validate_params,
    validate_record,
)

__all__ = [
    "LexiconError",
    "Lexicons",
    "ValidationError",
    "grapheme_count",
    "parse_lexicon_document",
    "validate_input",
    "validate_output",
    "validate_params",
    "validate_record",
]
