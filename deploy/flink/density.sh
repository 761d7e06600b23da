#!/usr/bin/env bash
# Density over a corpus on a Flink cluster through Beam's portable runner.
# Start a Beam Flink job server next to the cluster first, e.g.
#   docker run --net=host apache/beam_flink1.18_job_server:2.77.0 --flink-master=FLINK_HOST:8081
# Workers need gristmill installed (the container of deploy/dataflow works as the SDK harness image).
set -euo pipefail
: "${JOB_ENDPOINT:=localhost:8099}" "${INPUT:?}" "${OUTPUT:?}"
gristmill score density --input "${INPUT}" --output "${OUTPUT}" --num_shards 256 \
  --runner PortableRunner --job_endpoint "${JOB_ENDPOINT}" \
  --environment_type DOCKER --environment_config "${IMAGE:-gristmill:0.1.0}"
