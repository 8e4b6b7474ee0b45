"""The names the stages share, defined once: the tasks, and the files inside a stage's outputs.

The outputs themselves (folders and files) are named in `dvc.yaml` alone and reach the code as
command-line arguments; what lies inside an output is this module's to name.
"""

from __future__ import annotations

TASKS = ("gender", "speaker")

#: Speech encoders of the wav2vec 2.0 family (a CNN feature encoder and a transformer over its
#: frames) that `model.*` and `pretrain.architecture` may name, as Hugging Face model types.
ENCODER_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")

#: Inside a subsets folder (subsets@TASK, and a learning curve's data).
MANIFEST = "manifest.csv"
TRIALS = "trials.csv"
#: The manifest's `draw` of the rows every draw shares (evaluation). Here rather than in
#: data/subsets.py, which writes it: the grid reads it too, and importing subsets for one
#: constant put 879 lines into every run's hash.
ALL_DRAWS = -1

#: Inside a run store (grid@TASK, curve@TASK): one JSON record a line, and the embedding
#: probes, one .npz per run hash.
STORE_NAME = "runs.jsonl"
PROBES_DIR = "probes"

#: Inside a demo corpus: each locale's planted family (what the analyses group languages by).
FAMILIES = "families.csv"
