"""Train a Transformer language model: python train.py [group=option ...] [key=value ...]

Examples:
    python train.py mode=debug                        # tiny model, a few batches, < 1 minute on a CPU
    python train.py attention=longformer              # the real run with Longformer attention (on a machine
                                                      # without a GPU: experiment=shakespeare_cpu, ~12 min)
    python train.py -m attention=full,flash,sparse,longformer mode=debug   # a sweep, one job each

The same as ``attnlab train ...``: the command is ``attnlab.train.main``.
"""
from attnlab.train import main

if __name__ == "__main__":
    main()
