"""Weights: how they are stored, named, fetched, described, published and imported.

``checkpoint``  the file format (safetensors + JSON metadata), save and load, sha256
``registry``    weights.toml: the packaged registry merged with the personal one
``hub``         resolve a name, path or ``hf://`` URI to a verified local file (Hugging Face cache)
``card``        the model card written from a checkpoint's own metadata
``publish``     a checkpoint and its card to the Hugging Face Hub in one commit
``authors``     import of the paper authors' PyTorch checkpoints (``hermes weights import``)
"""
