"""Datasets -> WebDataset shards + manifest -> streaming multi-crop batches (see shards/README.md).

Kept import-light on purpose: `import shards` pulls in nothing heavy; import the submodules
(`shards.write`, `shards.pipeline`, `shards.augment`, ...) you need.
"""
