"""What a CLTM measures: one module per task, named by the `module` key of its params block.

`base.py` holds the interface and the loader; `gender.py` and `speaker.py` are the paper's two
tasks. A task module defines `TASK`, a `base.Task`. Adding a task means writing its module and
its block under `tasks:` in the params file; the stages iterate over whatever that block names.
"""
