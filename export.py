"""A run as a Hugging Face GPT-2 folder: python export.py run=<run folder, .ckpt or last> out=<folder>

Only runs Hugging Face's GPT-2 computes as they are (full or flash attention, learned positions, GPT-2's
shape); others are refused in one line naming what GPT-2 cannot represent.

The same as ``attnlab export ...``: the command is ``attnlab.export.main``.
"""
from attnlab.export import main

if __name__ == "__main__":
    main()
