"""The modeling code shipped inside every InternLM2-layout export (`trust_remote_code=True`).

These two files are copied verbatim next to `config.json` and named by its `auto_map`, as the released
InternLM2 checkpoints ship theirs; so they import only torch and transformers, never `ilm`.
"""

from pathlib import Path

FILES = ("configuration_internlm2.py", "modeling_internlm2.py")


def remote_code_files() -> dict[str, str]:
    """File name -> source text, for a checkpoint directory."""
    here = Path(__file__).parent
    return {name: (here / name).read_text() for name in FILES}
