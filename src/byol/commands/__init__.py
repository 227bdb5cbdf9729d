"""The `byol` subcommands: each command's parser sits next to its handler, which calls the library."""

from byol.commands.curation import add_clusters, add_duplicates, add_search, add_select
from byol.commands.data import add_prepare
from byol.commands.evaluation import add_embed, add_export, add_finetune, add_knn, add_linear, add_report, add_segment
from byol.commands.training import add_ablate, add_bench, add_demo, add_pretrain

# Each adds its subcommand's parser to argparse's subparsers, with ``handler`` set; the order of `byol --help`.
PARSERS = (
    add_pretrain, add_prepare, add_bench, add_knn, add_linear, add_finetune, add_segment, add_demo, add_ablate,
    add_export, add_embed, add_search, add_duplicates, add_select, add_clusters, add_report,
)  # fmt: skip

__all__ = ["PARSERS"]
