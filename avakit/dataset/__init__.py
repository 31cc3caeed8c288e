"""Sources -> shards, no torch: AVA.txt and photos in, WebDataset tars + manifest.json out.

Read in order: `ava` (release files, splits), `images` (decode any photo safely), `plan` (what to
write, resume state), `shards` (the writer and manifest builder), `manifest` (reader, verify),
`samples` (what makes a stored sample usable, and the accounting), `sources` (where a split is read
from), `synthetic` (learnable fake data for tests and the demo). Your own labels: `labels` (+ `label_cells`)
reads a CSV/parquet table, `presets` a dataset's release files, `keys` makes string keys and
hash-stable splits (read and tested; `shard` does not use them yet).
"""
