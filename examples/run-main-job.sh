#!/usr/bin/env bash
# The main job: the example ML pipeline end to end on the embedded Postgres and the local executor.
#   prepare a dataset -> train a 4-point learning-rate sweep (a checkpoint per epoch)
#   -> the eval policy evaluates every checkpoint -> a report stage picks the best.
# Needs `labctl` on PATH. Everything lives under $LABCTL_HOME (default ~/.labctl).
set -euo pipefail

examples="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${LABCTL_HOME:-$HOME/.labctl}"
mkdir -p "$home"
cluster="$home/examples-cluster.toml"
# Outputs go to a fresh directory per invocation: an output whose marker exists is never overwritten,
# and a run from another checkout of this repo (another commit) is not a cache hit of this one's.
outputs="$home/outputs/$(date -u +%Y%m%dT%H%M%S)-$$"

# A cluster config like the built-in local profile, plus the examples repo and its eval policies.
cat > "$cluster" <<TOML
name = "examples"

[filesystem]
runs_base = "$home"

[filesystem.artifact_roots]
checkpoint = "$home/artifacts/checkpoint"
dataset = "$home/artifacts/dataset"
eval_result = "$home/artifacts/eval_result"
model = "$home/artifacts/model"
external = "$home/artifacts/external"

[filesystem.output_roots]
checkpoint_stream = "$outputs/checkpoint_stream"
checkpoint = "$outputs/checkpoint"
dataset = "$outputs/dataset"
eval_result = "$outputs/eval_result"
model = "$outputs/model"

[repos]
examples = "$examples"

[dispatch]
policies_dir = "$examples/ml/policies"
evald_interval_secs = 5
TOML

export LABCTL_CLUSTER="$cluster"
started=$(date +%s)

echo "== run the pipeline (prepare -> train sweep -> report); evals start as checkpoints appear"
out=$(labctl run-pipeline "$examples/ml/pipeline.toml" --wait | tee /dev/stderr)
pipeline=$(echo "$out" | python3 -c 'import json,sys; print(json.JSONDecoder().raw_decode(sys.stdin.read())[0]["pipeline_id"])')

echo "== finish the remaining evals"
labctl agent --drain > /dev/null

echo
labctl pipeline-show "$pipeline"
echo
echo "== eval metrics by step (eval policy ml-eval-every-epoch)"
labctl eval ls
report_run=$(labctl pipeline-show "$pipeline" --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print([s for s in v["stages"] if s["stage_name"]=="report"][0]["run_id"])')
report_dir=$(labctl show "$report_run" | python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["path"])')
echo
echo "== report ($report_dir/report.md)"
cat "$report_dir/report.md"
train_runs=$(labctl pipeline-show "$pipeline" --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(" ".join(s["run_id"] for s in v["stages"] if s["stage_name"]=="train"))')
echo
echo "== the sweep's points side by side (metrics each logged per epoch with labctl.log; * = differs)"
labctl compare $train_runs --diff
echo
echo "== validation accuracy by epoch, one curve per learning rate"
labctl metrics $train_runs --metric val_accuracy --plot
echo
echo "done in $(( $(date +%s) - started ))s"
echo "  pipeline:   labctl --cluster $cluster pipeline-show $pipeline"
echo "  report:     $report_dir/report.md  (best: $report_dir/best.json)"
echo "  runs:       $home/runs/$(id -un)/"
echo "  history:    labctl --cluster $cluster history $report_run"
echo "  metrics:    labctl --cluster $cluster metrics $train_runs --metric val_accuracy --plot curves.svg"
echo "  audit:      labctl --cluster $cluster audit verify"
