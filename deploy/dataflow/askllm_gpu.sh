#!/usr/bin/env bash
# Ask-LLM over C4 on Dataflow, submitted from this machine (the flex template route is in docs/deploy.md).
# The model step runs on L4 GPU workers (the --accelerator resource hint), reading and writing on
# ordinary workers. Needs the `dataflow` extra locally and the image of deploy/dataflow/worker.Dockerfile.
# Rerunning the same command resumes; a glob matching more files scores only the new ones.
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket IMAGE=us-central1-docker.pkg.dev/... \
#     deploy/dataflow/askllm_gpu.sh [--dry_run=True]
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${IMAGE:?}"
gristmill score askllm \
  --input "gs://${BUCKET}/c4/en/c4-train.*.json.gz" \
  --output "gs://${BUCKET}/scores/askllm-flan-t5-xl" \
  --model "gs://${BUCKET}/models/flan-t5-xl" --model_name flan-t5-xl \
  --dtype bfloat16 --batch_size 64 --share_model \
  --accelerator "type:nvidia-l4;count:1;install-nvidia-driver" \
  --runner DataflowRunner --project "${PROJECT}" --region "${REGION}" \
  --temp_location "gs://${BUCKET}/tmp" --sdk_container_image "${IMAGE}" \
  --max_num_workers 64 "$@"
