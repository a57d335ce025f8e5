"""The keys of the committed stores (results/*.sqlite) are the keys the code gives their models' configurations now.
A stored model's key is the hash of its configuration (config_key): were the hashing to change, or a field to be
added to RunConfig without its earlier value in ADDED_FIELDS, resuming a grid would train every stored model again.
Every model row of every committed store is checked (a few hundred rows: well under a second)."""
from dataclasses import fields

from conftest import ROOT
from smoothness.errors import SmoothnessError
from smoothness.experiments.configuration.config import ADDED_FIELDS, RunConfig, config_key
from smoothness.experiments.storage.store import Store

STORES = sorted((ROOT / "results").glob("*.sqlite"))


def stored_configuration(rec: dict) -> RunConfig:
    """The configuration of a stored record: its RunConfig fields, and those added after it was stored at the value
    they had then (ADDED_FIELDS). A KeyError for a field that is neither."""
    names = [f.name for f in fields(RunConfig)]
    missing = [n for n in names if n not in rec and n not in ADDED_FIELDS]
    if missing:
        raise KeyError(f"the record has no {', '.join(missing)}")
    return RunConfig(**{n: rec[n] if n in rec else ADDED_FIELDS[n] for n in names})


def test_every_committed_store_key_is_the_config_key_of_its_stored_configuration():
    assert STORES, f"no committed stores under {ROOT / 'results'}"
    checked, wrong = 0, []
    for path in STORES:
        with Store(path, create=False) as st:
            recs = st.records()
            assert not st.skipped and len(recs) == len(st) > 0, path.name   # every row read
        for rec in recs:
            try:
                key = config_key(stored_configuration(rec))
            except (KeyError, TypeError, ValueError, SmoothnessError) as e:   # not a configuration now
                key = f"none ({e})"
            if key != rec["key"]:
                wrong.append(f"{path.name}: stored {rec['key']}, rebuilt {key}")
            checked += 1
    assert not wrong, f"{len(wrong)} of {checked} keys differ:\n" + "\n".join(wrong[:10])
