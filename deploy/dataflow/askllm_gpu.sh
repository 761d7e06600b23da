#!/usr/bin/env bash
# Ask-LLM over C4 on Dataflow GPU workers (one L4 per worker, FLAN-T5-XL weights on GCS).
# Requires the `dataflow` extra locally and the container from deploy/dataflow/Dockerfile.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${IMAGE:?}"
gristmill score askllm \
  --input "gs://${BUCKET}/c4/en/c4-train.*.json.gz" \
  --output "gs://${BUCKET}/scores/askllm-flan-t5-xl" \
  --model "gs://${BUCKET}/models/flan-t5-xl" --model_name flan-t5-xl \
  --dtype bfloat16 --batch_size 64 --share_model --num_shards 1024 \
  --runner DataflowRunner --project "${PROJECT}" --region "${REGION}" \
  --temp_location "gs://${BUCKET}/tmp" --sdk_container_image "${IMAGE}" \
  --experiments use_runner_v2 \
  --dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \
  --machine_type g2-standard-8 --max_num_workers 64
