"""Config checks made when a config is built, before any model work."""

import pytest

from recoverlm.config import DataConfig
from recoverlm.errors import RecoverLMError


def test_written_prompts_need_the_chat_template(prompt_file):
    """Refused when the config is built, before any model work."""
    with pytest.raises(RecoverLMError, match="teacher_prompts needs the chat template"):
        DataConfig(prompts=prompt_file, n_heldout=4, teacher_prompts=2, use_chat_template=False)
