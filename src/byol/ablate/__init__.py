"""The paper's ablations: the tables (:mod:`byol.ablate.tables`) and the runner (:mod:`byol.ablate.runner`)."""

from byol.ablate.runner import RESULT_FILE, format_table, run_cell, run_table
from byol.ablate.tables import SCALES, TABLES, Row, Table, cpu_scale

__all__ = ["RESULT_FILE", "SCALES", "TABLES", "Row", "Table", "cpu_scale", "format_table", "run_cell", "run_table"]
