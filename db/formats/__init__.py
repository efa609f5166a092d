"""File formats for import and export, one module per format.

``parse_file`` reads any supported file (detecting its format unless told) into ``ImportRecord``s and
``RowError``s; ``detect_format`` names a file's format. Formats: ``hh-rlhf``, ``trl``, ``comparisons``,
``rankings``, ``unlabeled``, ``mapped``, and ``mixed`` (a native file holding comparison, ranking and unlabeled
lines, each read by its fields: what export writes); containers: JSON lines, a JSON array, CSV/TSV, Parquet, each plain or
gzip-compressed. This package never touches the database.
"""
from db.formats.base import FormatError, ImportRecord, Options, RowError, RowProblem
from db.formats.mapped import parse_mapping, parse_winner_scale, parse_winner_values
from db.formats.reader import FORMATS, MIXED, NATIVE, Detected, detect, detect_format, parse_file, shape_of

__all__ = [
    "FORMATS",
    "MIXED",
    "NATIVE",
    "Detected",
    "FormatError",
    "ImportRecord",
    "Options",
    "RowError",
    "RowProblem",
    "detect",
    "detect_format",
    "parse_file",
    "parse_mapping",
    "parse_winner_scale",
    "parse_winner_values",
    "shape_of",
]
