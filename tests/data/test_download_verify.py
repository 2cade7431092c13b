"""The SA-1B downloader against a loopback HTTP server (Range, dropped connections, expired links), shard
verification, and the demo data config."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import pytest

from data.download import DownloadError, check_tar, download_split, read_links, read_split
from data.verify import verify_shards


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    drops: dict[str, int] = {}  # path -> how many more responses to cut short
    ranges: list[str | None] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        data = self.files.get(self.path)
        if data is None:
            self.send_error(403)  # what an expired CDN link answers
            return
        rng = self.headers.get("Range")
        self.ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.drops.get(self.path, 0) > 0:
            self.drops[self.path] -= 1
            self.wfile.write(body[: len(body) // 3])  # then the connection dies
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_resumes_with_range_and_checks_tars(server: str, sa1b_tars: list[Path], tmp_path: Path) -> None:
    _Handler.files = {f"/{p.name}": p.read_bytes() for p in sa1b_tars}
    _Handler.drops = {f"/{sa1b_tars[0].name}": 2}
    _Handler.ranges = []
    links = tmp_path / "links.txt"
    links.write_text("file_name\tcdn_link\n" + "".join(f"{p.name}\t{server}/{p.name}\n" for p in sa1b_tars))
    assert read_links(links) == {p.name: f"{server}/{p.name}" for p in sa1b_tars}
    out = tmp_path / "dl"
    paths = download_split(links, [p.name for p in sa1b_tars], out, progress=False)
    for got, want in zip(paths, sa1b_tars):
        assert got.read_bytes() == want.read_bytes() and check_tar(got) == 12
    assert sum(r is not None and r != "bytes=0-" for r in _Handler.ranges) >= 2  # two resumes from an offset
    assert not list(out.glob("*.part"))
    _Handler.ranges = []
    download_split(links, [sa1b_tars[0].name], out, progress=False)  # complete: not fetched again
    assert _Handler.ranges == []


def test_expired_link_and_truncated_tar_are_reported(server: str, sa1b_tars: list[Path], tmp_path: Path) -> None:
    _Handler.files, _Handler.drops = {}, {}
    links = tmp_path / "links.txt"
    links.write_text(f"file_name\tcdn_link\nsa_000000.tar\t{server}/gone.tar\n")
    with pytest.raises(DownloadError, match="HTTP 403.*links expire"):
        download_split(links, ["sa_000000.tar"], tmp_path / "dl", progress=False)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(sa1b_tars[0].read_bytes()[:5000])
    with pytest.raises(DownloadError, match="truncated"):
        check_tar(cut)
    assert read_split("sa1b_train_1pct") == [f"sa_{i:06d}.tar" for i in range(10)]
    assert read_split("sa1b_val") == ["sa_000999.tar"] and not set(read_split("sa1b_val")) & set(
        read_split("sa1b_train_1pct")
    )


def test_verify_passes_good_shards_and_catches_damage(shards: Path, tmp_path: Path) -> None:
    assert verify_shards(shards) == {"shards": 4, "samples": 12, "errors": [], "ok": True}
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    victim = bad / "shard-r000-000001.tar"
    # past the tar's end padding (up to 10 KiB of zeros) and the last small member, into the last sample's data
    victim.write_bytes(victim.read_bytes()[:-12000])
    report = verify_shards(bad)
    assert not report["ok"] and any("shard-r000-000001.tar" in e for e in report["errors"])


def test_demo_data_config_builds_its_shards_and_yields_batches(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose(config_name="data/demo", overrides=[f"data.root={tmp_path / 'demo'}", "data.synthesize.n_tars=2"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 256, 256) and "masks" not in batch  # encoder distillation: none
    val = next(iter(dm.val_dataloader()))
    assert val["masks"].shape[1:] == (4, 64, 64)  # the validation metric's masks
    assert verify_shards(tmp_path / "demo")["ok"]


def test_flipped_embedding_bytes_are_caught_and_named(shards: Path, tmp_path: Path) -> None:
    from data.stream import raw_samples

    bad = tmp_path / "rot"
    shutil.copytree(shards, bad)
    victim = bad / "shard-r000-000000.tar"
    sample = next(raw_samples(str(victim)))
    emb = sample["emb.npy"]
    data = bytearray(victim.read_bytes())
    data[emb.offset + emb.size // 2] ^= 0xFF  # one byte inside the stored embedding: the tar stays well-formed
    victim.write_bytes(bytes(data))
    errors = verify_shards(bad, decode=True)["errors"]
    assert any("shard-r000-000000.tar: its bytes changed" in e for e in errors)
    assert any(f"sample {sample['__key__']} changed since it was written" in e for e in errors)
    assert len(errors) == 2  # nothing else is wrong


def test_a_shard_cut_at_a_member_boundary_is_refused_by_the_loader(shards: Path, tmp_path: Path) -> None:
    import tarfile

    from data.codec import ShardFormatError
    from data.datamodule import ShardDataModule

    bad = tmp_path / "cut"
    shutil.copytree(shards, bad)
    victim = bad / "shard-r000-000000.tar"
    with tarfile.open(victim) as tf:
        members = tf.getmembers()
    keep = [m for m in members if not m.name.startswith(members[-1].name.split(".")[0])]  # drop the last sample
    with tarfile.open(victim) as src, tarfile.open(tmp_path / "short.tar", "w") as dst:
        for m in keep:
            dst.addfile(m, src.extractfile(m))
    shutil.move(tmp_path / "short.tar", victim)
    dm = ShardDataModule(bad, batch_size=2, num_workers=0, val_fraction=0.0)
    dm.setup("fit")
    with pytest.raises(ShardFormatError, match=r"shard-r000-000000.tar holds \d+ samples but dataset.json says 3"):
        for _ in range(4):  # two epochs over 12 samples: the cut shard is read to its end
            for _ in dm.train_dataloader():
                pass
