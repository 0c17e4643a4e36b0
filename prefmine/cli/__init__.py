"""The `prefmine` command line, the one door above every room: `main.py` parses (contract in docs/design.md),
`demo.py` runs the main job end to end, `gen_protos.py` builds `prefmine/v1/` from `protos/`.

This package is the only part of `prefmine/` that reaches into `cluster/` and `serve/`, and only at call time
(each command imports what it runs), so the library below it stays Ray-free and `prefmine --help` stays quick.
"""
