"""
The files the system reads and writes, each format with its checks, apart from
the story (read these after model.py ... explain.py):

    files.py     UserError and the shared checks (JSON, safetensors, names,
                 finite values); atomic writes and sha256
    hf.py        a Hugging Face model folder: config.json, safetensors shards, tokenizer.json
    adapters.py  PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors)
    routers.py   a router's router.json + router.safetensors
    clusters.py  cluster.py's output folder, read back
    embeddings.py  cluster.py's embedding cache (.npy files named by a hash)
    pictures.py  PNG heatmaps (matplotlib optional)
"""
