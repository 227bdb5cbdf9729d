"""The paper's ablations: the tables (:mod:`byol.ablate.tables`) and the runner (:mod:`byol.ablate.runner`),
the runner imported on first use (the tables, which the command line lists, import no torch)."""

from typing import TYPE_CHECKING

from byol.ablate.tables import SCALES, TABLES, Row, Table, cpu_scale
from byol.lazy import lazy_attributes

_EXPORTS = dict.fromkeys(("RESULT_FILE", "format_table", "run_cell", "run_table"), "byol.ablate.runner")
__all__ = ["RESULT_FILE", "SCALES", "TABLES", "Row", "Table", "cpu_scale", "format_table", "run_cell", "run_table"]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:
    from byol.ablate.runner import RESULT_FILE, format_table, run_cell, run_table
