"""The held-out split a recovered model is scored on must be the one its recovery held out: with
other prompts, another count or another seed, the "held-out" prompts include some it trained on,
and every figure measured on them flatters it."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig, updated
from ..data import heldout_hash, load_prompts
from ..errors import RecoverLMError
from ..io import read_json
from ..runs import RECOVERY_FILE, side_file

SPLIT_KEYS = ("prompts", "n_heldout", "split_seed")  # what decides which prompts are held out


def _split(data: dict) -> dict:
    return {k: None if data.get(k) is None else str(data[k]) for k in SPLIT_KEYS}


def recovery_split(folder: Path) -> dict | None:
    """The split settings the recovery of `folder` used, with the hash of the prompts it held out
    where it recorded one; None for a model recoverlm did not recover."""
    record = side_file(Path(folder), RECOVERY_FILE)
    if not record.is_file():
        return None
    try:
        made = read_json(record)
    except (ValueError, OSError) as exc:
        raise RecoverLMError(f"{record} cannot be read ({exc})") from exc
    data = made.get("data") if isinstance(made, dict) else None
    return {**_split(data), "heldout_hash": made.get("heldout_hash")} if isinstance(data, dict) else None


def _same_prompts(folder: Path, trained: dict, data_cfg: DataConfig) -> None:
    """The settings alone do not decide the split: the prompts file under the same name may have
    changed since, and with one prompt more or less the shuffle holds out others."""
    if not trained.get("heldout_hash"):
        return  # recorded before the hash was kept
    now = heldout_hash(load_prompts(data_cfg.prompts), data_cfg.n_heldout, data_cfg.split_seed)
    if now != trained["heldout_hash"]:
        source = data_cfg.prompts or "the built-in prompt set"
        raise RecoverLMError(f"{folder} was recovered around other held-out prompts than {source} gives now (the "
                             "prompts changed since): they would include some it trained on; score it with the "
                             "prompts file of its recovery")


def matching_split(data_cfg: DataConfig, folders, given: bool, log=print) -> DataConfig:
    """`data_cfg` with the split the recovered models among `folders` were held out from. Without a
    config of the user's (`given` False) their recorded split is taken, and said; a config that
    asks for another split is refused in one line."""
    for folder in folders:
        trained = recovery_split(folder)
        if trained is None:
            continue
        asked = _split(data_cfg.model_dump(mode="json"))
        differ = [k for k in SPLIT_KEYS if trained[k] != asked[k]]
        if not differ:
            _same_prompts(folder, trained, data_cfg)
            continue
        if given:
            k = differ[0]
            raise RecoverLMError(f"{folder} was recovered with data.{k} = {trained[k]}, the config asks {asked[k]}: "
                                 "its held-out prompts would include some it trained on; use the data settings "
                                 "of its recovery")
        data_cfg = updated(data_cfg, f"the recovery of {folder}", **{k: trained[k] for k in differ})
        _same_prompts(folder, trained, data_cfg)
        log(f"held-out prompts: the split {folder} was recovered around "
            f"({', '.join(f'{k} = {trained[k]}' for k in differ)})")
        given = True  # a second recovered model must agree with the first
    return data_cfg
