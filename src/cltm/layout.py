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

#: Inside a task's cltm folder (cltm@TASK's out, `metrics/<task>/`). dvc.yaml lists each of
#: CLTM_FILES among the stage's outs; a test holds the two equal.
MATRIX_FILE = "cltm.csv"
SE_FILE = "cltm_se.csv"
PERFORMANCE_FILE = "performance.csv"
UNDEFINED_FILE = "undefined.csv"
SELF_GAIN_FILE = "self_gain.csv"
OFFDIAG_FILE = "offdiag.csv"
DIAGNOSTICS_FILE = "diagnostics.json"
HEALTH_FILE = "run_health.json"
SIGNIFICANCE_FILE = "cltm_significance.csv"
CI_FILE = "diagnostics_ci.json"
FAMILY_FILE = "family_structure.json"
INFO_FILE = "stats_info.json"
DONORS_FILE = "donors.csv"
PROFILES_FILE = "profiles.csv"
GRAPH_FILE = "transfer_graph.json"
COCLUSTERING_FILE = "coclustering.csv"
CLTM_PLOTS = ("heatmap.png", "heatmap_highlight.png", "self_gain.png", "offdiag_hist.png",
              "donors.png", "profiles.png", "coclustering.png", "transfer_map.png")
CLTM_FILES = (MATRIX_FILE, SE_FILE, PERFORMANCE_FILE, UNDEFINED_FILE, SELF_GAIN_FILE,
              OFFDIAG_FILE, DIAGNOSTICS_FILE, HEALTH_FILE, SIGNIFICANCE_FILE, CI_FILE,
              FAMILY_FILE, INFO_FILE, DONORS_FILE, PROFILES_FILE, GRAPH_FILE,
              COCLUSTERING_FILE, *CLTM_PLOTS)

#: What the contrast stage reads of each task's cltm folder.
CONTRAST_READS = (DIAGNOSTICS_FILE, CI_FILE, INFO_FILE)
#: What the report reads of each task's cltm folder (its figures it only links).
REPORT_READS = (DIAGNOSTICS_FILE, CI_FILE, FAMILY_FILE, INFO_FILE, MATRIX_FILE, SE_FILE,
                PERFORMANCE_FILE, UNDEFINED_FILE, SELF_GAIN_FILE, OFFDIAG_FILE,
                SIGNIFICANCE_FILE, HEALTH_FILE, DONORS_FILE, GRAPH_FILE)
