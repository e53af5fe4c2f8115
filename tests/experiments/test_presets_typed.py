"""Typed presets: identities unchanged from before the types, defaults declared once, errors that
name the bad key, overrides, and job configs that fit the row schema."""

from __future__ import annotations

import hashlib

import pytest

from intertwiner.errors import InvalidOptionError
from intertwiner.experiments import presets
from intertwiner.experiments.absorb import AbsorbConfig
from intertwiner.experiments.base import stored_config
from intertwiner.experiments.pipeline import check_options
from intertwiner.experiments.settings import Preset, PresetError, override
from intertwiner.rows import is_merge, schemas_of
from intertwiner.store import canonical_json, config_key

# Computed on main at 51e0c61, before presets were typed (sha256 of the canonical JSON, first 16
# hex digits): the stored preset configuration (a run folder's identity), the sorted job keys of
# build_plan(check_data=False) with their count, and shrink(PRESETS[name]). Equal values mean that
# existing run folders resume without a conflict and without re-running a job. The many-model merge
# jobs the alignment stage gained after 51e0c61 are new jobs (a resumed folder runs just those):
# they are counted apart, in MERGE_JOBS.
EXPECTED = {
    "test": ("00a5af2af0845552", "034b5a0501095d8f", 18, "3264a855b49154fa"),
    "quick": ("6faf115e3d2fdd63", "7d172ff28fe13b9c", 193, "072ab8f8a029dbd9"),
    "full": ("052bbdb4ac8aa2d6", "6da3086bdf1a99b4", 414, "15ff3e036cee081a"),
    "paper": ("ef36f3555616ab0b", "1e831e41f30d7e05", 7149, "4356f06da2fa9b53"),
}
#: K = 3 merges to the mean and to the first, per architecture with three distinct models.
MERGE_JOBS = {"test": 0, "quick": 6, "full": 6, "paper": 0}


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_identity_jobs_and_shrink_are_those_of_the_untyped_presets(name):
    config, keys_hash, n_jobs, shrunk = EXPECTED[name]
    typed = presets.get(name)
    assert _h(canonical_json(typed.to_json())) == config
    assert _h(canonical_json(presets.PRESETS[name])) == config
    plan = presets.build_plan(name, check_data=False)
    configs = [c for st in plan for c in st.configs]
    keys = sorted(config_key(stored_config(c)) for c in configs if not is_merge(c))
    assert (len(keys), _h(",".join(keys))) == (n_jobs, keys_hash)
    assert sum(map(is_merge, configs)) == MERGE_JOBS[name]
    assert _h(canonical_json(presets.shrink(presets.PRESETS[name]))) == shrunk
    assert presets.shrink(typed).to_json() == presets.shrink(presets.PRESETS[name])


@pytest.mark.parametrize("name", list(EXPECTED))
def test_presets_round_trip_and_every_job_config_fits_its_row_schema(name):
    p = presets.get(name)
    assert Preset.from_json(p.to_json()) == p and Preset.from_json(p.to_json()).to_json() == (
        p.to_json()
    )
    for st in presets.build_plan(name, check_data=False):
        for c in st.configs[:50] + [c for c in st.configs if is_merge(c)]:
            job_cls = schemas_of(st.kind, c)[0]
            assert job_cls.from_json(c).to_json() == c


def test_defaults_are_declared_once_and_not_stored():
    full = presets.get("full")
    absorb = full.sanity.absorb
    assert absorb.max_rows == AbsorbConfig.max_rows and not absorb.given("max_rows")
    assert "max_rows" not in presets.PRESETS["full"]["sanity"]["absorb"]
    quick = presets.get("quick")
    assert quick.sanity.absorb.max_rows == 50_000 and quick.sanity.absorb.given("max_rows")
    assert quick.sanity.kinds == ["G_ReLU", "orthogonal"] and not quick.sanity.given("kinds")
    assert quick.train_for("resnet20").epochs == 6 and quick.train_for("mlp").epochs == 4
    assert presets.get("test").grounding[0].measures == ["cka", "group_cka"]


def _quick() -> dict:
    return presets.get("quick").to_json()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["stitch"].update(epochz=3), r"unknown key stitch\.epochz"),
        (lambda c: c["sanity"]["absorb"].update(max_row=1), r"unknown key sanity\.absorb\.max_row"),
        (lambda c: c["sanity"].pop("repeats"), r"key sanity\.repeats is missing"),
        (lambda c: c["stitch"].update(epochs="3"), r"stitch\.epochs: expected int, got str"),
        (lambda c: c.update(grounding=[{"seeds": 2}]), r"key grounding\[0\]\.zoo is missing"),
        (lambda c: c["dissection"].update(layers=[1, "2"]), r"dissection\.layers\[1\]: expected"),
        (lambda c: c.update(train=[1]), r"train: expected a table of settings"),
        (
            lambda c: c["train_overrides"]["resnet20"].update(epoch=1),
            r"unknown key train_overrides\.resnet20\.epoch",
        ),
    ],
)
def test_a_bad_key_or_value_is_named(edit, message):
    c = _quick()
    edit(c)
    with pytest.raises(PresetError, match=message):
        Preset.from_json(c)


def test_a_bad_preset_entry_is_refused_before_anything_runs(monkeypatch):
    c = _quick()
    c["metrics"]["n_sample"] = 3
    monkeypatch.setitem(presets.PRESETS, "broken", c)
    with pytest.raises(PresetError, match=r"unknown key metrics\.n_sample"):
        check_options("broken", "local", None)
    with pytest.raises(InvalidOptionError, match="unknown preset 'nope'; choose one of quick"):
        presets.get("nope")


def test_overrides_parse_into_the_typed_preset_and_name_bad_keys():
    quick = presets.get("quick")
    p = override(quick, ["stitch.epochs=3", "sanity.absorb.max_rows=100", "alignment=null",
                         "sanity.schedule=cosine"])  # fmt: skip
    assert p.stitch.epochs == 3 and p.sanity.absorb.max_rows == 100 and p.alignment is None
    assert p.sanity.schedule == "cosine" and p.seeds == quick.seeds
    assert override(quick, {"seeds": 5}).to_json() == {**quick.to_json(), "seeds": 5}
    with pytest.raises(PresetError, match=r"unknown key stitch\.epoch\b"):
        override(quick, ["stitch.epoch=3"])
    with pytest.raises(PresetError, match=r"sanity is null in this preset"):
        override(presets.get("test"), ["sanity.repeats=2"])
    with pytest.raises(PresetError, match="expected KEY=VALUE"):
        override(quick, ["stitch.epochs"])
    with pytest.raises(PresetError, match=r"pairs: expected int, got str"):
        override(quick, ["pairs=two"])


def test_cli_set_changes_the_plan_and_names_a_bad_key(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from intertwiner.cli import app

    monkeypatch.chdir(tmp_path)
    base = CliRunner().invoke(app, ["reproduce", "--preset", "test", "--dry-run"])
    res = CliRunner().invoke(app, ["reproduce", "--preset", "test", "--dry-run",
                                   "--set", "stitch.epochs=3", "--set", "alignment=null"])  # fmt: skip
    assert base.exit_code == 0 and res.exit_code == 0, res.output
    assert "epochs=1" in base.output and "== alignment" in base.output
    assert "epochs=3" in res.output and "== alignment" not in res.output
    bad = CliRunner().invoke(app, ["reproduce", "--preset", "test", "--dry-run",
                                   "--set", "stitch.epoch=3"])  # fmt: skip
    assert bad.exit_code == 2 and "unknown key stitch.epoch" in bad.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_override_is_part_of_the_run_identity(test_run):
    from intertwiner.experiments.pipeline import reproduce
    from intertwiner.experiments.runfolder import RunConflictError

    out, _ = test_run
    with pytest.raises(RunConflictError, match=r"config\.stitch\.epochs: 1 -> 2"):
        reproduce(out, preset="test", workers=1, progress=False, overrides=["stitch.epochs=2"])
