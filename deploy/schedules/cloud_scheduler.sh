#!/usr/bin/env bash
# Daily curation on Google Cloud: Cloud Scheduler starts a Cloud Run job that runs `gristmill curate`
# with the Dataflow runner, so every step of curation.json is a Dataflow job (workers from the
# gristmill worker image). curate waits for each job before the next, hence a Cloud Run job (hours of
# task timeout) rather than a request handler. See docs/curate.md. Set PROJECT, REGION, BUCKET, REPO.
# Executions cannot overlap: the task timeout (20 h) is shorter than the daily period and a failed
# execution is not retried into the next one (the next night resumes it); curate's lease on the work
# directory refuses an overlapping run anyway.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${BUCKET:?}" "${REPO:?}"
SA="gristmill@${PROJECT}.iam.gserviceaccount.com"

gsutil cp examples/curation.json "gs://${BUCKET}/curation/daily-c4.json"

gcloud run jobs create gristmill-curate --region "${REGION}" --image "${REPO}/gristmill-launcher:0.1.0" \
  --task-timeout 20h --max-retries 0 --service-account "${SA}" --command gristmill \
  --args "curate,--config=gs://${BUCKET}/curation/daily-c4.json,--runner=DataflowRunner,--project=${PROJECT},--region=${REGION},--temp_location=gs://${BUCKET}/tmp,--sdk_container_image=${REPO}/gristmill-worker:0.1.0"

gcloud scheduler jobs create http gristmill-curate-daily --location "${REGION}" --schedule "15 1 * * *" \
  --uri "https://run.googleapis.com/v2/projects/${PROJECT}/locations/${REGION}/jobs/gristmill-curate:run" \
  --http-method POST --oauth-service-account-email "${SA}"
