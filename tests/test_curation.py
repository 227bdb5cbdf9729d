"""Search, duplicates, selection and clusters on `byol embed` features: each against a brute-force computation on
generated features, then the commands end to end on a folder of images made here, and their bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance

from byol.cli import main
from byol.curate import _unit, best_match, copy_views, groups, near_pairs, nearest, read_embeddings, select, typicality
from byol.data.decode import LUMA_WEIGHTS, NORMAL_LUMA, PIXEL_SIDE, colour_normalised, pixel_descriptors

FEATURES = st.tuples(st.integers(1, 120), st.integers(1, 12), st.integers(0, 2**31 - 1)).map(
    lambda t: np.random.default_rng(t[2]).standard_normal((t[0], t[1])).astype(np.float32) * 3
)


@settings(max_examples=40, deadline=None)
@given(features=FEATURES, k=st.integers(1, 20), chunk=st.integers(1, 50), data=st.data())
def test_search_is_exact_whatever_the_chunk(features, k, chunk, data):
    queries = data.draw(FEATURES.filter(lambda q: q.shape[1] == features.shape[1]) | st.just(features[:3]))
    sims, rows = nearest(features, queries, k, chunk=chunk)
    cosine = _unit(queries) @ _unit(features).T  # (Q, N), the brute force
    k = min(k, len(features))
    assert sims.shape == rows.shape == (len(queries), k)
    for q in range(len(queries)):
        assert np.allclose(np.sort(cosine[q])[::-1][:k], sims[q], atol=1e-5)  # the k best scores, in order
        assert np.allclose(cosine[q, rows[q]], sims[q], atol=1e-5)  # and the rows that have them


@settings(max_examples=30, deadline=None)
@given(features=FEATURES, threshold=st.floats(-1.0, 1.0), chunk=st.integers(1, 40))
def test_near_pairs_and_groups_match_the_brute_force(features, threshold, chunk):
    found = {(i, j) for i, j, _ in near_pairs(features, None, threshold, chunk=chunk)}
    cosine = _unit(features) @ _unit(features).T
    n = len(features)
    # float32 rounding may tip a pair sitting exactly on the threshold: those are left out of the comparison
    sure = {(i, j) for i in range(n) for j in range(i + 1, n) if cosine[i, j] >= threshold + 1e-5}
    unsure = {(i, j) for i in range(n) for j in range(i + 1, n) if abs(cosine[i, j] - threshold) < 1e-5}
    assert sure <= found <= sure | unsure
    components = groups(n, sorted(found))
    assert sorted(i for g in components for i in g) == sorted({i for pair in found for i in pair})
    where = {i: c for c, g in enumerate(components) for i in g}
    assert all(where[i] == where[j] for i, j in found)  # a pair never spans two groups


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40), m=st.integers(1, 30), k=st.integers(1, 5),
       threshold=st.floats(-1.0, 1.0), chunk=st.integers(1, 40))  # fmt: skip
def test_near_pairs_with_copy_views_average_the_best_plain_normalised_and_pixel_matches(seed, n, m, k, threshold,
                                                                                        chunk):  # fmt: skip
    rng = np.random.default_rng(seed)
    shapes = ((n, 6), (n, k, 6), (n, k + 1, 6), (n, k + 1, 5))
    a, a_crops, a_normal, a_pixels = (rng.standard_normal(shape) for shape in shapes)
    b, b_crops, b_normal, b_pixels = (rng.standard_normal((m, *shape[1:])) for shape in shapes)
    b[0] = a_crops[n - 1, k - 1] * 2  # a copy cropped out of a: its whole image is one of a's crops,
    b_normal[0, 0] = a_normal[n - 1, k] * 3  # and so is its colour-normalised whole image
    b_pixels[0, 0] = a_pixels[n - 1, k] * 4  # and its pixel descriptor

    def best(whole_a, whole_b, crops_a, crops_b):  # the best of whole · whole, whole · crop, crop · whole
        wa, wb, ca, cb = _unit(whole_a), _unit(whole_b), _unit(crops_a), _unit(crops_b)
        views = [wa @ wb.T, *[wa @ cb[:, c].T for c in range(k)], *[ca[:, c] @ wb.T for c in range(k)]]
        return np.maximum.reduce(views)

    def expected(x, x_crops, x_normal, x_pixels, y, y_crops, y_normal, y_pixels):
        plain = best(x, y, x_crops, y_crops)
        normal = best(x_normal[:, 0], y_normal[:, 0], x_normal[:, 1:], y_normal[:, 1:])
        return (plain + normal + best(x_pixels[:, 0], y_pixels[:, 0], x_pixels[:, 1:], y_pixels[:, 1:])) / 3

    views_a, views_b = (a_crops, a_normal, a_pixels), (b_crops, b_normal, b_pixels)
    score = expected(a, *views_a, b, *views_b)
    found = {(i, j): s for i, j, s in near_pairs(a, b, threshold, chunk, views_a, views_b)}
    sure = {(i, j) for i in range(n) for j in range(m) if score[i, j] >= threshold + 1e-5}
    unsure = {(i, j) for i in range(n) for j in range(m) if abs(score[i, j] - threshold) < 1e-5}
    assert sure <= set(found) <= sure | unsure
    assert all(abs(s - score[i, j]) < 1e-5 for (i, j), s in found.items())
    assert score[n - 1, 0] == pytest.approx(1.0, abs=1e-5)  # the cropped copy meets its crop, both ways of looking
    within = {(i, j) for i, j, _ in near_pairs(a, None, threshold, chunk, views_a)}
    square = expected(a, *views_a, a, *views_a)
    assert {(i, j) for i in range(n) for j in range(i + 1, n) if square[i, j] >= threshold + 1e-5} <= within
    assert all(square[i, j] >= threshold - 1e-5 for i, j in within)


@settings(max_examples=20, deadline=None)
@given(features=FEATURES, chunk=st.integers(1, 64))
def test_typicality_is_the_inverse_mean_squared_distance_to_the_20_nearest_whatever_the_chunk(features, chunk):
    """TypiClust's, as its authors' code computes it: squared Euclidean distances (faiss's IndexFlatL2) to the 20
    nearest, or to half the cluster where it has fewer than 40 images."""
    x = _unit(features)
    if len(x) < 2:
        return
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(squared, np.inf)
    k = max(1, min(20, len(x) // 2))
    expected = 1 / (np.sort(squared, axis=1)[:, :k].mean(axis=1) + 1e-12)
    assert np.allclose(typicality(x, chunk=chunk), expected, rtol=1e-4)


def test_typical_takes_the_densest_point_of_each_cluster_and_diverse_the_farthest():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8)) * 10
    features = np.concatenate([c + rng.standard_normal((50, 8)) for c in centres]).astype(np.float32)
    chosen = select(features, 4, "typical", seed=0)
    assert sorted(i // 50 for i in chosen) == [0, 1, 2, 3]  # one per blob
    x = _unit(features)
    for i in chosen:  # and, in its blob, the row with the highest typicality
        blob = np.arange(i // 50 * 50, i // 50 * 50 + 50)
        assert i == blob[np.argmax(typicality(x[blob]))]
    diverse = select(features, 6, "diverse", seed=0)
    for n in range(1, 6):  # k-center greedy: each next row is the one farthest from those already chosen
        distance = np.min(np.sqrt(np.maximum(2 - 2 * x @ x[diverse[:n]].T, 0)), axis=1)
        assert np.isclose(distance[diverse[n]], distance.max())
    assert select(features, 7, "random", 3) == select(features, 7, "random", 3) != select(features, 7, "random", 4)
    assert len(set(select(features, 200, "random", 0))) == 200


def test_typical_passes_over_small_clusters_until_the_larger_ones_have_given_one_each():
    """TypiClust's rounds: clusters of 5 images or fewer (outlying groups) are passed over while larger ones have
    images left: the budget goes round the larger clusters again, each time to the most typical image left."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((5, 8)) * 10
    sizes = (50, 50, 50, 4, 4)  # the last two blobs: 4 images each
    features = np.concatenate([c + rng.standard_normal((n, 8)) for c, n in zip(centres, sizes, strict=True)])
    blob = np.repeat(np.arange(5), sizes)
    chosen = select(features.astype(np.float32), 5, "typical", seed=0)  # 5 clusters: the 5 blobs
    assert len(set(chosen)) == 5 and sorted(blob[chosen[:3]]) == [0, 1, 2] and set(blob[chosen[3:]]) <= {0, 1, 2}
    assert blob[chosen[3]] != blob[chosen[4]]
    x = _unit(features)
    for n, i in enumerate(chosen):  # each the most typical of what its cluster has left
        same = [j for j in np.flatnonzero(blob == blob[i]) if j not in chosen[:n]]
        assert i == same[int(np.argmax(typicality(x[same])))]


@pytest.fixture
def photos(tmp_path):
    """A folder of 24 distinct images, one of them twice (the same bytes) and one saved again as a JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        pixels = (rng.random((3, 3, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(folder / f"p{i:02d}.png")
    shutil.copy(folder / "p00.png", folder / "copy.png")
    Image.open(folder / "p01.png").save(folder / "p01-again.jpg", quality=95)
    return folder


@pytest.fixture
def embedded(finished_run, photos, tmp_path):
    out = tmp_path / "features.npz"
    encoder = str(finished_run.parent / "enc.safetensors")
    args = ["embed", encoder, "--dataset", "imagefolder", "--data-dir", str(photos), "--split", "train", "--quiet"]
    assert main([*args, "--out", str(out)]) == 0
    return out


def test_an_embed_file_is_memory_mapped_and_records_its_encoder_and_digests(embedded, photos, finished_run):
    e = read_embeddings(embedded)
    assert isinstance(e.features, np.memmap) and len(e) == 26
    assert e.source["encoder"] == str((finished_run.parent / "enc.safetensors").resolve())
    by_name = dict(zip([n.rsplit("/", 1)[-1] for n in e.names], e.digests, strict=True))
    assert by_name["copy.png"] == by_name["p00.png"] != by_name["p01.png"]
    with np.load(embedded) as arrays:
        assert np.array_equal(arrays["features"], np.asarray(e.features))


def test_search_by_row_by_path_and_by_a_new_image(embedded, photos, tmp_path, capsys):
    e = read_embeddings(embedded)
    row = [n.endswith("p05.png") for n in e.names].index(True)
    assert main(["search", str(embedded), "--query", str(row), "--k", "3"]) == 0
    by_row = json.loads(embedded.with_name("features.search.json").read_text())
    assert len(by_row["neighbours"]) == 3 and all(n["row"] != row for n in by_row["neighbours"])
    assert main(["search", str(embedded), "--query", e.names[row], "--k", "3", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["neighbours"] == by_row["neighbours"]
    outside = tmp_path / "outside.png"
    shutil.copy(photos / "p05.png", outside)  # not in the set: embedded with the encoder the .npz names
    assert main(["search", str(embedded), "--query", str(outside), "--k", "1", "--out", str(tmp_path / "o.json")]) == 0
    (best,) = json.loads((tmp_path / "o.json").read_text())["neighbours"]
    assert best["row"] == row and best["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert "similarity" in capsys.readouterr().out


def test_embed_copy_crops_finds_a_cropped_copy_that_whole_images_miss(finished_run, photos, tmp_path):
    big = np.asarray(Image.open(photos / "p03.png")).repeat(4, 0).repeat(4, 1)  # 96 px: a crop keeps its detail
    Image.fromarray(big).save(photos / "p03.png")
    Image.fromarray(big[4:90, 6:92]).resize((96, 96), Image.Resampling.BICUBIC).save(photos / "p03-cropped.png")
    recoloured = ImageEnhance.Color(ImageEnhance.Brightness(Image.fromarray(big)).enhance(0.8)).enhance(1.25)
    recoloured.save(photos / "p03-recoloured.png")
    encoder, out = str(finished_run.parent / "enc.safetensors"), tmp_path / "crops.npz"
    assert main(["embed", encoder, "--dataset", "imagefolder", "--data-dir", str(photos), "--split", "train",
                 "--out", str(out), "--quiet", "--copy-crops"]) == 0  # fmt: skip
    e = read_embeddings(out)
    assert e.crops is not None and e.crops.shape == (len(e), 49, e.features.shape[1])
    assert e.normalised is not None and e.normalised.shape == (len(e), 50, e.features.shape[1])
    assert e.pixels is not None and e.pixels.shape == (len(e), 50, 3 * PIXEL_SIDE**2)
    names = [n.rsplit("/", 1)[-1] for n in e.names]
    rows = [names.index(f) for f in ("p03.png", "p03-cropped.png", "p03-recoloured.png")]
    unit = _unit(np.asarray(e.features))
    whole = float(unit[rows[0]] @ unit[rows[1]])
    ((_, _, with_crops),) = [p for p in near_pairs(np.asarray(e.features), None, -1.0, None, copy_views(e))
                             if sorted(p[:2]) == sorted(rows[:2])]  # fmt: skip
    plain = best_match(unit, unit, _unit(e.crops), _unit(e.crops))
    assert with_crops > whole and plain[rows[0], rows[1]] > whole  # a crop of the photo is closer than the photo
    # darkened and made more colourful, the copy's normalised image is its original's, up to clipping and rounding
    normal = _unit(np.asarray(e.normalised[:, 0]))
    assert float(normal[rows[0]] @ normal[rows[2]]) > max(float(unit[rows[0]] @ unit[rows[2]]), 0.99), (
        float(normal[rows[0]] @ normal[rows[2]]),
        float(unit[rows[0]] @ unit[rows[2]]),
    )
    # the features are of whole images (a copy cropped to 90% would not fit the 224/256 centre crop) and a query
    # from outside the set is embedded the same way: the photo's own row, at similarity 1
    assert e.source["view"] == "whole"
    centre = tmp_path / "centre.npz"
    assert main(["embed", encoder, "--dataset", "imagefolder", "--data-dir", str(photos), "--split", "train",
                 "--out", str(centre), "--quiet"]) == 0  # fmt: skip
    assert read_embeddings(centre).source["view"] == "centre"
    assert not np.allclose(read_embeddings(centre).features[rows[0]], e.features[rows[0]], atol=1e-4)
    outside = tmp_path / "query.png"
    shutil.copy(photos / "p03.png", outside)
    assert main(["search", str(out), "--query", str(outside), "--k", "1", "--out", str(tmp_path / "q.json")]) == 0
    (best,) = json.loads((tmp_path / "q.json").read_text())["neighbours"]
    assert best["row"] == rows[0] and best["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_duplicates_finds_the_copy_exactly_and_the_leak_across_sets(embedded, finished_run, photos, tmp_path):
    assert main(["duplicates", str(embedded), "--threshold", "0.9999"]) == 0
    found = json.loads(embedded.with_name("features.duplicates.json").read_text())
    exact = [g for g in found["groups"] if g["exact"]]
    assert len(exact) == 1 and sorted(p.rsplit("/", 1)[-1] for p in exact[0]["paths"]) == ["copy.png", "p00.png"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "p07.png", other / "leaked.png")
    Image.new("RGB", (24, 24), "white").save(other / "blank.png")
    encoder = str(finished_run.parent / "enc.safetensors")
    assert main(["embed", encoder, "--dataset", "imagefolder", "--data-dir", str(other), "--split", "train",
                 "--out", str(tmp_path / "other.npz"), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "leaks.json"
    assert main(["duplicates", str(embedded), "--against", str(tmp_path / "other.npz"), "--out", str(out)]) == 0
    twins = json.loads(out.read_text())["twins"]
    assert [t["path"].rsplit("/", 1)[-1] for t in twins if t["similarity"] == 1.0] == ["p07.png"]


def test_select_and_clusters_write_paths_and_contact_sheets(embedded, tmp_path):
    assert main(["select", str(embedded), "--count", "5", "--method", "diverse"]) == 0
    chosen = json.loads(embedded.with_name("features.select.json").read_text())["selected"]
    assert len({c["path"] for c in chosen}) == 5
    assert main(["clusters", str(embedded), "--k", "3", "--sheets", "4"]) == 0
    result = json.loads(embedded.with_name("features.clusters.json").read_text())
    assert sum(c["size"] for c in result["clusters"]) == 26 == len(result["images"])
    sheets = sorted(embedded.with_name("features.clusters").iterdir())
    assert len(sheets) == 3 and all(Image.open(s).size[0] > 100 for s in sheets)
    assert main(["clusters", str(embedded), "--k", "2"]) == 0  # its own earlier result and sheets are replaced


def test_embed_of_a_run_adds_the_projectors_output_and_select_chooses_in_it(finished_run, photos, tmp_path):
    """From a run, embed also writes z = g(y), the online projector (BN in inference mode) on each row's features,
    as the checkpoint's own online network computes it; select clusters there unless told otherwise, and an
    export, which has no projector, gives features only."""
    from byol.checkpoint import latest_checkpoint, load_checkpoint, run_config
    from byol.networks import build_online_network

    out = tmp_path / "run.npz"
    assert main(["embed", str(finished_run), "--dataset", "imagefolder", "--data-dir", str(photos), "--split",
                 "train", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    e = read_embeddings(out)
    payload = load_checkpoint(latest_checkpoint(finished_run))
    online = build_online_network(run_config(payload, finished_run).model, 3)
    online.load_state_dict(payload["state"]["online"])
    with torch.no_grad():
        z = online.eval().projector(torch.from_numpy(np.array(e.features))).numpy()
    assert e.head is not None and e.head.shape == z.shape and e.head.shape[1] != e.features.shape[1]
    np.testing.assert_allclose(e.head, z, rtol=1e-5, atol=1e-6)
    for space, rows in (("head", e.head), ("features", e.features)):
        result = tmp_path / f"{space}.json"
        flags = [] if space == "head" else ["--space", "features"]
        assert main(["select", str(out), "--count", "4", "--out", str(result), *flags]) == 0
        written = json.loads(result.read_text())
        assert written["space"] == space
        assert [c["row"] for c in written["selected"]] == select(np.asarray(rows), 4, "typical", 0)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["search", "{missing}", "--query", "0"], "does not exist"),
        (["search", "{notnpz}", "--query", "0"], "is not a readable .npz"),
        (["search", "{npz}", "--query", "9999"], "the set has rows 0 to 25"),
        (["search", "{npz}", "--query", "no/such.png"], "is neither a row number"),
        (["clusters", "{npz}", "--k", "500"], "--k must lie in [1, 26]"),
        (["select", "{npz}", "--count", "27"], "--count must lie in [1, 26]"),
        (["duplicates", "{npz}", "--threshold", "1.5"], "a cosine similarity in [-1, 1]"),
        (["duplicates", "{oldcopy}"], "holds copy crops without their colour-normalised views"),
        (["duplicates", "{oldcopy2}"], "or pixel descriptors"),
        (["select", "{npz}", "--count", "2", "--out", "{npz}"], "would overwrite"),
        (["select", "{npz}", "--count", "2"], "{derived}"),
        (["select", "{npz}", "--count", "2", "--space", "head"], "has no head features"),
        (["select", "{badhead}", "--count", "2"], "head (3, 8) float32 must be (N, P) floats for its 4 rows"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_anything_is_written(embedded, tmp_path, capsys, args, says):
    (tmp_path / "not.npz").write_text("hello")
    derived = embedded.with_name("features.select.json")
    if says == "{derived}":
        derived.write_text("a file of the user's")
        says = "features.select.json"
    features = np.ones((4, 8), dtype=np.float32)  # copy crops from before the colour-normalised views
    np.savez(tmp_path / "old.npz", features=features, copy_crops=np.ones((4, 49, 8), dtype=np.float32))
    np.savez(tmp_path / "old2.npz", features=features, copy_crops=np.ones((4, 49, 8), dtype=np.float32),
             copy_normalised=np.ones((4, 50, 8), dtype=np.float32))  # from before the pixel descriptors  # fmt: skip
    np.savez(tmp_path / "badhead.npz", features=features, head=np.ones((3, 8), dtype=np.float32))
    paths = {"missing": tmp_path / "none.npz", "notnpz": tmp_path / "not.npz", "npz": embedded,
             "oldcopy": tmp_path / "old.npz", "oldcopy2": tmp_path / "old2.npz",
             "badhead": tmp_path / "badhead.npz"}  # fmt: skip
    before = embedded.read_bytes()
    code = None
    try:
        code = main([a.format(**paths) for a in args])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]  # argparse's usage aside
    assert code == 2 and len(said) == 1 and says in said[0], err
    assert embedded.read_bytes() == before
    assert not derived.exists() or derived.read_text() == "a file of the user's"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), side=st.integers(4, 24), brightness=st.floats(0.8, 1.25),
       colour=st.floats(0.8, 1.25))  # fmt: skip
def test_colour_normalising_undoes_pils_brightness_and_colour_changes(seed, side, brightness, colour):
    """A copy made brighter or darker and more or less colourful by PIL (byol duplicates' recoloured copies) is
    normalised to its original's pixels, up to the rounding of the copy's own uint8 steps."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 200, size=(side, side, 3), dtype=np.uint8)
    copy = ImageEnhance.Color(ImageEnhance.Brightness(Image.fromarray(pixels)).enhance(brightness)).enhance(colour)
    copy_pixels = np.asarray(copy)
    assume(copy_pixels.min() > 0 and copy_pixels.max() < 255)  # nothing clipped: the change can be undone
    normal = colour_normalised(torch.from_numpy(pixels).permute(2, 0, 1)).int()
    normal_copy = colour_normalised(torch.from_numpy(copy_pixels.copy()).permute(2, 0, 1)).int()
    assert (normal - normal_copy).abs().float().mean() < 1.5  # rounding, amplified where the colour is faint
    luma = (normal.float() * torch.tensor(LUMA_WEIGHTS).view(3, 1, 1)).sum(0)
    assert abs(float(luma.mean()) - NORMAL_LUMA) < 1.0  # the level every image is brought to
    grey = colour_normalised(torch.from_numpy(pixels[..., :1].copy()).permute(2, 0, 1))  # one channel: no colour
    assert grey.shape == (1, side, side) and abs(float(grey.float().mean()) - NORMAL_LUMA) < 1.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), channels=st.sampled_from([1, 3]),
       side=st.integers(8, 48), gain=st.floats(0.25, 4.0), offset=st.floats(-50.0, 50.0))  # fmt: skip
def test_pixel_descriptors_are_unit_rows_of_8x8_blind_to_level_and_contrast(seed, n, channels, side, gain, offset):
    """Each view at 8 x 8, its mean taken off, unit length: a view and the same view brighter or of another
    contrast (a * x + b, a > 0) have one descriptor, and a view's descriptor is its 8 x 8 antialiased resize."""
    rng = np.random.default_rng(seed)
    views = torch.from_numpy(rng.uniform(0, 255, size=(n, 2, channels, side, side))).float()
    views[:, :, :, 0, 0] += 1.0  # never flat: a flat view has no direction
    found = pixel_descriptors(views)
    assert found.shape == (n, 2, channels * PIXEL_SIDE**2)
    assert torch.allclose(found.norm(dim=-1), torch.ones(n, 2), atol=1e-5)
    assert torch.allclose(found.mean(-1), torch.zeros(n, 2), atol=1e-6)
    assert torch.allclose(pixel_descriptors(views * gain + offset), found, atol=1e-4)
    small = torch.nn.functional.interpolate(views[0], size=(PIXEL_SIDE, PIXEL_SIDE), mode="bilinear",
                                            antialias=True, align_corners=False).flatten(1)  # fmt: skip
    small = small - small.mean(1, keepdim=True)
    assert torch.allclose(found[0], small / small.norm(dim=1, keepdim=True), atol=1e-5)
