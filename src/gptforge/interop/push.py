"""`export --push-to-hub REPO`: an exported folder uploaded to the Hugging Face Hub through huggingface_hub.

The Hub client does the work, so what users have set up applies: the token of `hf auth login` or HF_TOKEN,
HF_ENDPOINT. The repository is created when missing (private with --private); the folder goes up in one commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gptforge.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo: str) -> None:
    """Fail before any work for a name the Hub would refuse."""
    if not REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise UserError(f"--push-to-hub {repo!r}: expected OWNER/NAME (letters, digits, '-', '_', '.'), "
                        "e.g. your-name/my-gpt")


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Create `repo` (a model repository) if needed and upload `folder` to it; return the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder),
                                   commit_message=f"gptforge export of {Path(folder).name}")
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN to a token with write access)" if status in (
            401, 403) else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--push-to-hub {repo}: {first}{hint}; the export stays in {folder}") from None
    return str(commit)
