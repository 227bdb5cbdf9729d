"""Where a command may write: every output path is checked against the command's other outputs and its inputs
before the first byte is written.

A path the user named for an output may be replaced (that is what naming it means). A path the package derives
from it (the architecture file beside an export, the labels beside features) may replace only a file that the
package itself wrote there before. No output may land on one of the command's inputs, or on the files of any run
directory (its config, logs, checkpoints, results, report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from byol.errors import ConfigError
from byol.rundir import RUN_ENTRIES, is_run_dir


@dataclass(frozen=True)
class Output:
    """One path a command writes: ``what`` names it in messages; ``folder``: a directory rather than a file;
    ``ours``: for a derived path, whether an existing file there is one the package wrote (None: the user named
    this path, so an existing file may be replaced)."""

    path: Path
    what: str
    folder: bool = False
    ours: Callable[[Path], bool] | None = None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs(outputs: Sequence[Output], inputs: Sequence[Path]) -> None:
    """Refuses (one line, exit status 2) before anything is written: two outputs on one path, an output on an
    input or on a run directory's own files, a file where a folder goes or a folder where a file goes, and a
    derived path that holds a file the package did not write."""
    seen: dict[Path, str] = {}
    for output in outputs:
        path = output.path.resolve()
        if path in seen:
            raise ConfigError(f"{output.what} {output.path} is also {seen[path]}; name another path")
        seen[path] = f"{output.what}"
        for source in inputs:
            source = source.resolve()
            if path == source or (output.folder and _inside(source, path)):
                raise ConfigError(f"{output.what} {output.path} would overwrite {source}, which this command reads")
        for run in path.parents:  # any run directory above the output, read by this command or not
            if is_run_dir(run) and path.relative_to(run).parts[0] in RUN_ENTRIES:
                raise ConfigError(
                    f"{output.what} {output.path} would overwrite {path.relative_to(run)} of the run {run}; "
                    "name a path outside the run's own files"
                )
        if output.folder and path.is_file():
            raise ConfigError(f"{output.what} {output.path} is a file; name a folder for this format")
        if not output.folder and path.is_dir():
            raise ConfigError(f"{output.what} {output.path} is a directory; name a file")
        if output.ours is not None and path.exists() and not output.ours(path):
            raise ConfigError(
                f"{output.what} {output.path} exists and was not written by byol; move it or name another --out"
            )
