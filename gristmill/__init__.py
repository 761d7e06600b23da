"""gristmill: curate LLM pre-training data with Ask-LLM and Density scores on Apache Beam and JAX."""

import os as _os

# TensorFlow is only used for tf.train.Example and tf.data; keep its start-up chatter out of job logs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# gristmill runs no TensorFlow maths, so oneDNN buys nothing; disabling it also silences its banner.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
