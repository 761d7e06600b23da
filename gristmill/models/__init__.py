"""JAX model zoo (T5, Llama, BERT), checkpoint readers and tokenizers used by the scorers and the trainer."""
