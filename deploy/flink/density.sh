#!/usr/bin/env bash
# Density through Beam's portable runner on the Flink cluster of deploy/flink/docker-compose.yml
# (or any Flink cluster with a Beam Flink job server and a gristmill worker pool beside each task manager).
# The Python SDK workers are external: the worker pool on port 50000 of each task manager starts them.
# INPUT and OUTPUT must be paths the workers see under the same name (GRISTMILL_DATA, or gs://, s3://).
#   GRISTMILL_DATA=/srv/corpus deploy/flink/density.sh
set -euo pipefail
: "${GRISTMILL_DATA:?absolute path mounted into the worker pool}"
: "${INPUT:=${GRISTMILL_DATA}/c4/*.json.gz}" "${OUTPUT:=${GRISTMILL_DATA}/scores/density}"
: "${JOB_ENDPOINT:=localhost:8099}" "${PARALLELISM:=4}"
gristmill score density --input "${INPUT}" --output "${OUTPUT}" \
  --runner PortableRunner --job_endpoint "${JOB_ENDPOINT}" \
  --environment_type EXTERNAL --environment_config localhost:50000 \
  --parallelism "${PARALLELISM}" "$@"
