"""Keep library chatter out of job logs and the terminal.

diffusers/transformers print loading progress bars (with ``\\r`` redraws) and advisory
warnings that say nothing about the user's run; they would bury the lines that matter in a
job log. Real errors still raise.
"""

from __future__ import annotations

import logging
import os


def quiet_libraries(*, loaded: bool = False) -> None:
    """Set the libraries' own switches. The environment variables cost nothing and act when
    the libraries are imported; ``loaded=True`` (where diffusers is being imported anyway, as
    in model loading) also turns off the progress bars they draw while loading weights."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # bitsandbytes warns on import, on CPU machines, about an optional 4-bit kernel we never use.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not loaded:
        return
    try:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
    except Exception:  # an older diffusers without these: only cosmetic
        pass
    try:
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except Exception:
        pass
