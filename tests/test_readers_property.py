"""Property tests: generated user files never give a traceback (issue 15, item 20).

Readers covered: recipes (``load_recipe``), export profiles (``read_profile``), bench suites
(``load_suite``), weights/checkpoint files (``load_weights_file``/``load_checkpoint``: random
bytes and real files with flipped or cut bytes) and stream list files (``parse_sources``).  Each
generated input must be accepted or refused with :class:`CitysegError` — one line naming the
file — and nothing else.  With ``-s`` the module prints how many inputs were tried and refused.
"""
from __future__ import annotations

import sys
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityseg_deploy.bench.suite import load_suite
from cityseg_deploy.cli.export import PROFILE_KEYS, read_profile
from cityseg_deploy.errors import CitysegError
from cityseg_deploy.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from cityseg_deploy.models.safe_load import load_weights_file
from cityseg_deploy.training.recipe import Recipe, load_recipe
from cityseg_deploy.video.sources import parse_sources

COUNTS: Counter = Counter()
SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    for reader in sorted({k.split(":")[0] for k in COUNTS}):
        print(f"\n[bad inputs] {reader}: {COUNTS[reader + ':tried']} tried, "
              f"{COUNTS[reader + ':refused']} clear errors, {COUNTS[reader + ':accepted']} accepted",
              file=sys.stderr)


def _outcome(reader: str, fn, *args):
    """Run a reader on a generated input: accepted, or refused with a one-line CitysegError."""
    COUNTS[f"{reader}:tried"] += 1
    try:
        result = fn(*args)
    except CitysegError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip() and "Traceback" not in message, message
        COUNTS[f"{reader}:refused"] += 1
        return None
    COUNTS[f"{reader}:accepted"] += 1
    return result


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10))
_value = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def _doc(keys: list[str]):
    """YAML documents: mappings over the reader's own keys (plus strangers), or any YAML value."""
    mapping = st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6), st.integers(0, 3)),
                              _value, max_size=6)
    return st.one_of(mapping, _value)


def _as_text(doc, raw: str | None) -> str:
    return raw if raw is not None else yaml.safe_dump(doc, allow_unicode=True)


_raw_text = st.one_of(st.none(), st.none(), st.text(max_size=40),
                      st.sampled_from(["{a: [1, 2", "- - -\n  :", "key: !!python/object:os.system x",
                                       "\t\tbad: indent\n x", "&a [*a]", "?: [", "%YAML 9.9\n---\n{}"]))

RECIPE_KEYS = [f.name for f in Recipe.__dataclass_fields__.values()] + ["augment.scale", "description"]


@SETTINGS
@given(doc=_doc(RECIPE_KEYS), raw=_raw_text,
       base=st.sampled_from([{}, {"model": "unet_small", "epochs": 1, "batch_size": 2, "lr": 0.01}]))
def test_generated_recipes(tmp_path, doc, raw, base):
    data = {**base, **doc} if isinstance(doc, dict) else doc
    path = tmp_path / "r.yaml"
    path.write_text(_as_text(data, raw))
    recipe = _outcome("recipe", load_recipe, path)
    if recipe is not None:
        assert recipe.epochs >= 1 and recipe.batch_size >= 1


PROFILE_KEY_LIST = sorted(PROFILE_KEYS) + ["exports", "description"]


@SETTINGS
@given(doc=_doc(PROFILE_KEY_LIST), raw=_raw_text,
       entries=st.one_of(st.none(), _value, st.lists(st.dictionaries(st.sampled_from(PROFILE_KEY_LIST), _value,
                                                                      max_size=3), max_size=3)))
def test_generated_profiles(tmp_path, doc, raw, entries):
    if isinstance(doc, dict) and entries is not None:
        doc = {**doc, "exports": entries}
    path = tmp_path / "p.yaml"
    path.write_text(_as_text(doc, raw))
    jobs = _outcome("profile", read_profile, str(path))
    if jobs is not None:
        assert all(isinstance(j, dict) and set(j) <= PROFILE_KEYS for j in jobs)


SUITE_KEYS = ["name", "title", "model", "calib", "artifacts", "settings", "reference", "rows", "targets",
              "work", "results", "notes"]
GOOD_SUITE = {"name": "tiny", "model": {"arch": "unet_small", "size": [32, 64]},
              "artifacts": {"onnx": {"format": "onnx"}}, "rows": [{"label": "t", "artifact": "checkpoint"}],
              "targets": [{"row": "t", "min_ratio": 1.0}]}


@SETTINGS
@given(doc=_doc(SUITE_KEYS), raw=_raw_text, start=st.sampled_from([{}, GOOD_SUITE]),
       nested=st.sampled_from(["model", "artifacts", "rows", "targets", "settings", "calib"]), value=_value)
def test_generated_suites(tmp_path, doc, raw, start, nested, value):
    data = {**start, **doc} if isinstance(doc, dict) else doc
    if isinstance(data, dict) and start:
        data = {**data, nested: value}
    path = tmp_path / "s.yaml"
    path.write_text(_as_text(data, raw))
    suite = _outcome("suite", load_suite, path)
    if suite is not None:
        assert isinstance(suite["name"], str) and isinstance(suite["rows"], list)


def test_good_suite_is_accepted(tmp_path):
    """The generator's starting point is a valid suite: the checks refuse bad input, not all input."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD_SUITE))
    assert load_suite(path)["name"] == "tiny"


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(path, build_model("unet_small", base_width=4), ModelMeta.for_arch("unet_small", base_width=4))
    return path.read_bytes()


@SETTINGS
@given(blob=st.binary(max_size=300))
def test_generated_weights_bytes(tmp_path, blob):
    path = tmp_path / "w.pth"
    path.write_bytes(blob)
    _outcome("weights", load_weights_file, path)


@SETTINGS
@given(data=st.data())
def test_damaged_real_checkpoints(tmp_path, real_checkpoint, data):
    blob = bytearray(real_checkpoint)
    kind = data.draw(st.sampled_from(["cut", "flip", "zero-run"]))
    if kind == "cut":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(blob) - 1))
            blob[at: at + (1 if kind == "flip" else 64)] = (bytes([blob[at] ^ 0xFF]) if kind == "flip"
                                                            else bytes(min(64, len(blob) - at)))
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(blob))
    _outcome("checkpoint", load_checkpoint, path)


@SETTINGS
@given(lines=st.lists(st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=20),
    st.sampled_from(["", "# c", "..", "sub/..", "../x", "/", "0", "99999999999999999999", "rtsp://u:p@h/x",
                     "*.png", "[", "~", "img/*.png", "f.png"])), max_size=5))
def test_generated_list_files(tmp_path, lines):
    (tmp_path / "img").mkdir(exist_ok=True)
    from cityseg_deploy.fileio import write_png
    import numpy as np

    write_png(tmp_path / "img" / "f.png", np.zeros((8, 8, 3), np.uint8), rgb=True)
    write_png(tmp_path / "f.png", np.zeros((8, 8, 3), np.uint8), rgb=True)
    path = tmp_path / "l.txt"
    path.write_text("\n".join(lines))
    sources = _outcome("list file", parse_sources, str(path))
    if sources is not None:
        assert len(sources) >= 1 and all(s.stem for s in sources)
