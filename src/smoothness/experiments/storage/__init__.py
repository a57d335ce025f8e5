"""Where results are kept: the SQLite results store (store, opening, storefile), its records as tables (records),
which store a grid may write (claim), copying a damaged store (salvage), `train --save` files (modelfile) and the
snapshots of models still training (snapshots)."""
