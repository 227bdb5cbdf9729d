"""`byol search`, `duplicates`, `select` and `clusters`: the encoder's features (a `byol embed` .npz) put to work
before any label exists. Each prints a short table and writes a JSON file with the images' paths (``--out``, or
``<EMBEDDINGS>.<command>.json`` beside the .npz, which may replace only a file these commands wrote)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byol.choices import SELECT_METHODS, SELECT_SPACES
from byol.commands.common import number, positive_int, seed
from byol.errors import ConfigError

similarity = number(float, -1.0, 1.0, "a cosine similarity in [-1, 1]")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("embeddings", type=Path, help="features from `byol embed ENCODER --out FILE.npz`")
    p.add_argument("--out", type=Path, help="JSON result (default: beside EMBEDDINGS, <name>.<command>.json)")


def add_search(sub: Any) -> None:
    p = sub.add_parser("search", help="images most like a query image, by cosine similarity of their features",
                       description="Exact nearest neighbours, read in chunks (memory stays flat). The query is a "
                       "row number of the .npz, one of its image paths, or any image file, which is embedded with "
                       "the encoder the .npz records.")  # fmt: skip
    _common(p)
    p.add_argument("--query", required=True, help="a row number, or an image path")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours to list (default: 10)")
    p.set_defaults(handler=search)


def add_duplicates(sub: Any) -> None:
    p = sub.add_parser("duplicates", help="groups of near-duplicate images (and exact ones), or leaks into another set",
                       description="Exact duplicates share a content hash; near-duplicates have features whose "
                       "cosine similarity reaches --threshold. With --against, the images of EMBEDDINGS that have a "
                       "near-twin in OTHER (a train/test leak).")  # fmt: skip
    _common(p)
    p.add_argument("--against", type=Path, help="another .npz (e.g. the test split): report twins across the two")
    p.add_argument("--threshold", type=similarity, default=None,
                   help="cosine similarity from which two images are near-duplicates (default: "
                   "byol.curate.DUPLICATE_THRESHOLD, or COPY_THRESHOLD where embed added --copy-crops; "
                   "docs/curation.md says how they were chosen)")  # fmt: skip
    p.set_defaults(handler=duplicates)


def add_select(sub: Any) -> None:
    p = sub.add_parser("select", help="which images to label first (TypiClust typical, k-center diverse, random)")
    _common(p)
    p.add_argument("--count", type=positive_int, required=True, help="how many images to choose")
    p.add_argument("--method", choices=SELECT_METHODS, default="typical", help="(default: typical)")
    p.add_argument("--seed", type=seed, default=0, help="k-means and random seed (default: 0)")
    p.add_argument("--space", choices=SELECT_SPACES,
                   help="where to cluster: head, the projector's output (the default where the .npz has it: embed "
                   "of a run or checkpoint), or features, the encoder's (docs/curation.md)")  # fmt: skip
    p.set_defaults(handler=select)


def add_clusters(sub: Any) -> None:
    p = sub.add_parser("clusters", help="k-means groups of a collection, outliers, and a contact sheet per group")
    _common(p)
    p.add_argument("--k", type=positive_int, required=True, help="number of clusters")
    p.add_argument("--seed", type=seed, default=0, help="k-means seed (default: 0)")
    p.add_argument("--sheets", type=positive_int, default=16, help="images per contact sheet (default: 16)")
    p.set_defaults(handler=clusters)


def _checked_out(args: argparse.Namespace, command: str, inputs: Sequence[Path], sheets: bool = False) -> Path:
    """Where the JSON result goes, checked before anything is computed or written: --out, or the derived path
    beside the .npz, which may replace only a result of the same command (and, for clusters, its folder of
    contact sheets, which may hold only sheets)."""
    from byol.outputs import Output, check_outputs

    def ours(path: Path) -> bool:
        try:
            return json.loads(path.read_text()).get("byol") == command
        except (OSError, ValueError, AttributeError):
            return False

    def sheets_only(folder: Path) -> bool:
        return all(p.name.startswith("cluster-") and p.suffix == ".png" for p in folder.iterdir())

    out = args.out or args.embeddings.with_name(f"{args.embeddings.stem}.{command}.json")
    outputs = [Output(out, "--out", ours=None if args.out else ours)]
    if sheets:
        outputs.append(Output(out.with_suffix(""), "the contact sheets' folder", folder=True, ours=sheets_only))
    check_outputs(outputs, inputs=inputs)
    return out


def _write(out: Path, args: argparse.Namespace, command: str, result: dict[str, Any]) -> None:
    from byol.files import write_json

    write_json(out, {"byol": command, "embeddings": str(args.embeddings), **result})
    print(f"written to {out}")


def search(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.curate import embed_image, nearest, read_embeddings

    e = read_embeddings(args.embeddings)
    out = _checked_out(args, "search", [args.embeddings])
    query, row = args.query, None
    if query.isdigit():
        row = int(query)
        if row >= len(e):
            raise ConfigError(f"--query {row}: the set has rows 0 to {len(e) - 1}")
    elif query in e.names:
        row = e.names.index(query)
    elif not Path(query).is_file():
        raise ConfigError(f"--query {query!r} is neither a row number, a path in the set nor an image file")
    vector = e.features[row] if row is not None else embed_image(e, Path(query))
    sims, rows = nearest(e.features, vector, args.k + (row is not None), e.norms)
    hits = [(int(i), float(s)) for i, s in zip(rows[0], sims[0], strict=True) if i != row][: args.k]
    print(f"{'rank':>4}  {'similarity':>10}  image")
    for rank, (i, s) in enumerate(hits, 1):
        print(f"{rank:>4}  {s:>10.4f}  {e.names[i]}")
    query_name = e.names[row] if row is not None else str(Path(query).resolve())
    result = {"query": query_name, "neighbours": [{"row": i, "path": e.names[i], "similarity": s} for i, s in hits]}
    _write(out, args, "search", result)
    return 0


def duplicates(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.curate import COPY_THRESHOLD, DUPLICATE_THRESHOLD, find_duplicates, read_embeddings

    e = read_embeddings(args.embeddings)
    other = read_embeddings(args.against) if args.against else None
    out = _checked_out(args, "duplicates", [args.embeddings, *([args.against] if args.against else [])])
    default = (
        COPY_THRESHOLD if e.crops is not None and (other is None or other.crops is not None) else DUPLICATE_THRESHOLD
    )
    threshold = default if args.threshold is None else args.threshold
    result = find_duplicates(e, other, threshold)
    if other is None:
        print(f"{len(result['groups'])} group(s) of near-duplicates at similarity >= {threshold:g} "
              f"({result['exact']} of them exact), {result['images']} images in them")  # fmt: skip
        for group in result["groups"][:10]:
            print(f"  {len(group['paths'])} images{' (exact)' if group['exact'] else ''}: "
                  f"{', '.join(group['paths'][:4])}{' ...' if len(group['paths']) > 4 else ''}")  # fmt: skip
    else:
        print(f"{len(result['twins'])} image(s) of {args.embeddings} have a near-twin in {args.against} "
              f"(similarity >= {threshold:g})")  # fmt: skip
        for twin in result["twins"][:10]:
            print(f"  {twin['similarity']:.4f}  {twin['path']}  ~  {twin['other']}")
    _write(out, args, "duplicates", {"threshold": threshold, **result})
    return 0


def select(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.curate import read_embeddings, selection_space
    from byol.curate import select as choose

    e = read_embeddings(args.embeddings)
    out = _checked_out(args, "select", [args.embeddings])
    space, rows_of = selection_space(e, args.space)
    rows = choose(rows_of, args.count, args.method, args.seed)
    print(f"{len(rows)} image(s) to label first ({args.method} in the {space} space, seed {args.seed}):")
    for i in rows[:10]:
        print(f"  {e.names[i]}")
    if len(rows) > 10:
        print(f"  ... and {len(rows) - 10} more")
    chosen = [{"row": i, "path": e.names[i]} for i in rows]
    result = {"method": args.method, "space": space, "seed": args.seed, "count": len(rows), "selected": chosen}
    _write(out, args, "select", result)
    return 0


def clusters(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.curate import cluster_collection, read_embeddings

    e = read_embeddings(args.embeddings)
    out = _checked_out(args, "clusters", [args.embeddings], sheets=True)
    result = cluster_collection(e, args.k, args.seed, out.with_suffix(""), per_sheet=args.sheets)
    print(f"{'cluster':>7}  {'images':>6}  {'mean distance':>13}  contact sheet")
    for c in result["clusters"][:20]:
        print(f"{c['cluster']:>7}  {c['size']:>6}  {c['mean_distance']:>13.4f}  {c.get('sheet', '-')}")
    _write(out, args, "clusters", result)
    return 0
