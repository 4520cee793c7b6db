"""Stage 1, data: the download (Kaggle or synthetic), the real NIH metadata, expert labels and boxes, manifests, HDF5 shards, tf.data pipelines and the adversarial-array cache format."""
