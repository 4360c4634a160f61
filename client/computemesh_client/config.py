"""Where the command keeps its login: `config.toml` in the user's config folder
(`$XDG_CONFIG_HOME/computemesh`, i.e. ~/.config/computemesh on Linux), written with 0600
permissions. COMPUTEMESH_URL and COMPUTEMESH_TOKEN override what it holds."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click

DEFAULT_URL = "http://127.0.0.1:8000"


def config_dir() -> Path:
    return Path(os.environ.get("COMPUTEMESH_CONFIG_DIR") or click.get_app_dir("computemesh"))


def config_path() -> Path:
    return config_dir() / "config.toml"


@dataclass
class Settings:
    url: str = DEFAULT_URL
    token: str | None = None
    username: str | None = None
    url_from: str = "default"
    token_from: str = "none"


def load(url: str | None = None) -> Settings:
    saved: dict[str, str] = {}
    path = config_path()
    if path.exists():
        try:
            saved = {k: v for k, v in tomllib.loads(path.read_text()).items() if isinstance(v, str)}
        except (OSError, tomllib.TOMLDecodeError):
            saved = {}
    s = Settings()
    if saved.get("url"):
        s.url, s.url_from = saved["url"], str(path)
    if os.environ.get("COMPUTEMESH_URL"):
        s.url, s.url_from = os.environ["COMPUTEMESH_URL"], "COMPUTEMESH_URL"
    if url:
        s.url, s.url_from = url, "--url"
    # A saved token belongs to the server it was issued by.
    if saved.get("token") and saved.get("url", DEFAULT_URL).rstrip("/") == s.url.rstrip("/"):
        s.token, s.token_from, s.username = saved["token"], str(path), saved.get("username")
    if os.environ.get("COMPUTEMESH_TOKEN"):
        s.token, s.token_from, s.username = os.environ["COMPUTEMESH_TOKEN"], "COMPUTEMESH_TOKEN", None
    return s


def save(*, url: str, token: str, username: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in
                   (("url", url.rstrip("/")), ("username", username), ("token", token)))
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)  # an older file may have had other permissions
    os.replace(tmp, path)
    return path


def forget() -> bool:
    path = config_path()
    if path.exists():
        path.unlink()
        return True
    return False
