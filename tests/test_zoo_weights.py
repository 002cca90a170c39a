"""Published teachers (`zoo:<source>/<name>`): each source's files written in their exact
on-disk layout and converted onto kdrun's architectures with the same outputs as the source's
own networks; the download path end to end against a local HTTP server; the one-line errors;
a whole run through the CLI with a file put into the cache by hand (the offline route)."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_sources import randomised, source_network

from kdrun.errors import ConfigError
from kdrun.models import MODELS, build_model
from kdrun.validate import validate
from kdrun.weights import (
    ACCURACY_TOLERANCE,
    DownloadError,
    converted_path,
    obtain,
    weight_files,
)
from kdrun.weights.convert import LAYOUTS, ConversionError, convert
from kdrun.weights.download import PART_SUFFIX, download

from conftest import TINY, compose_config, read_results
from test_cli import kdrun

X = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def published_state_dict(entry, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The source's network for `entry` with random weights, and its state dict as the
    source's file holds it (RepDistiller's files predate BN's num_batches_tracked)."""
    net = randomised(source_network(entry.arch, entry.layout, entry.num_classes), seed)
    state = net.state_dict()
    if entry.source == "mdistiller":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return net, state


def repdistiller_file(state: dict) -> bytes:
    """RepDistiller train_teacher.py's ckpt_epoch_240.pth: {epoch, model, accuracy (a tensor),
    optimizer (SGD state, lr a numpy float64)}, in the pre-1.6 (non-zip) format."""
    buffer = io.BytesIO()
    ids = list(range(len(state)))
    torch.save({"epoch": 240, "model": state, "accuracy": torch.tensor(72.34),
                "optimizer": {"state": {i: {"momentum_buffer": torch.zeros(1)} for i in ids},
                              "param_groups": [{"lr": np.float64(0.05) * 0.1 ** np.int64(3),
                                                "momentum": 0.9, "dampening": 0,
                                                "weight_decay": 5e-4, "nesterov": False,
                                                "params": ids}]}},
               buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def bare_file(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Server:
    """A local HTTP server of in-memory files that honours Range requests; `cut_at` makes it
    send the full Content-Length but close the connection after that many bytes."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_at: int | None = None
        self.requests: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_at is not None:
                    body, server.cut_at = body[:server.cut_at], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def served(entry, server: Server, path: str, sha: str | None):
    """`entry` pointing at the local server."""
    return dataclasses.replace(entry, url=f"{server.url}{path}", sha256=sha)


def test_every_registered_file_converts_onto_kdrun_with_the_sources_outputs():
    for name, entry in weight_files().items():
        assert entry.arch in MODELS.names() and entry.layout in LAYOUTS, name
        net, state = published_state_dict(entry)
        model = build_model(entry.arch, entry.num_classes, [0.0] * 3, [1.0] * 3).eval()
        model.net.load_state_dict(convert(state, entry.layout, model.net.state_dict(), name))
        with torch.no_grad():
            expected = net(X)
            assert torch.allclose(model(X), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def test_torchdistills_wrn_needs_its_own_shortcut_and_the_layouts_refuse_what_does_not_fit():
    entry = weight_files()["torchdistill/cifar10-wide_resnet16_8"]
    net, state = published_state_dict(entry)
    plain = build_model("wrn_16_8", 10, [0.0] * 3, [1.0] * 3).eval()
    plain.net.load_state_dict(convert(state, entry.layout, plain.net.state_dict(), "f"))
    with torch.no_grad():  # same keys, other wiring: the shortcut variant is what makes it equal
        assert not torch.allclose(plain(X), net(X), atol=1e-3)

    target = build_model("resnet20", 10, [0.0] * 3, [1.0] * 3).net.state_dict()
    good = published_state_dict(weight_files()["torchdistill/cifar10-resnet20"])[1]
    with pytest.raises(ConversionError, match="its key extra.weight .* has no place"):
        convert({**good, "extra.weight": torch.zeros(1)}, "resnet", target, "f")
    with pytest.raises(ConversionError, match="nothing in it maps to kdrun's fc.bias"):
        convert({k: v for k, v in good.items() if k != "fc.bias"}, "resnet", target, "f")
    with pytest.raises(ConversionError, match=r"fc.weight has shape \(10, 64\), kdrun's fc."
                                              r"weight \(100, 64\)"):
        convert(good, "resnet", build_model("resnet20", 100, [0.0] * 3, [1.0] * 3)
                .net.state_dict(), "f")


def test_a_repdistiller_teacher_is_read_out_of_the_archive_converted_and_cached(tmp_path,
                                                                                 server):
    entry = weight_files()["mdistiller/resnet56"]
    net, state = published_state_dict(entry)
    member = repdistiller_file(state)
    other = repdistiller_file(published_state_dict(weight_files()["mdistiller/wrn_40_2"])[1])
    server.files["/cifar_teachers.tar"] = tar_of({
        "cifar_teachers/wrn_40_2_vanilla/ckpt_epoch_240.pth": other, entry.member: member})
    local = served(entry, server, "/cifar_teachers.tar", sha256_of(member))

    path = obtain(local, tmp_path, progress=False)
    stored = torch.load(path, weights_only=True)
    assert stored["arch"] == "resnet56" and stored["meta"]["zoo"] == "mdistiller/resnet56"
    assert stored["meta"]["source_sha256"] == sha256_of(member)
    from kdrun.models.files import load_classifier

    model, meta = load_classifier(path, 100, [0.5] * 3, [0.5] * 3)  # the run's would differ
    assert meta["normalization"]["std"] == [0.2675, 0.2565, 0.2761]
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():  # RepDistiller normalises with its own mean/std; so does the teacher
        assert torch.allclose(model.eval()(X), net((X - mean) / std), atol=1e-4)
    assert (tmp_path / "zoo/files/mdistiller" / entry.member).is_file()
    requests = len(server.requests)
    assert obtain(local, tmp_path, progress=False) == path and len(server.requests) == requests

    missing = dataclasses.replace(local, file="cifar_teachers/vgg8_vanilla/ckpt_epoch_240.pth",
                                  name="mdistiller/vgg8")
    with pytest.raises(DownloadError, match="holds no cifar_teachers/vgg8_vanilla/.* its weight "
                                            "files are cifar_teachers/wrn_40_2_vanilla"):
        obtain(missing, tmp_path, progress=False)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_named_by_its_hash_prefix_is_checked_and_a_wrong_one_is_refused(tmp_path, server):
    entry = weight_files()["chenyaofo/cifar10_resnet20"]
    data = bare_file(published_state_dict(entry)[1])
    server.files["/w.pt"] = data
    good = served(entry, server, "/w.pt", sha256_of(data)[:8])
    assert torch.load(obtain(good, tmp_path / "a", progress=False))["meta"]["source_sha256"] \
        == sha256_of(data)

    wrong = served(entry, server, "/w.pt", "0123abcd")
    with pytest.raises(DownloadError, match=f"has SHA-256 {sha256_of(data)}, not 0123abcd"):
        obtain(wrong, tmp_path / "b", progress=False)
    assert not (tmp_path / "b/zoo/files/chenyaofo" / entry.file_name).exists()  # removed


def test_a_broken_off_transfer_is_kept_and_resumed_then_verified(tmp_path, server):
    data = bytes(range(256)) * 4000
    server.files["/big.pt"] = data
    server.cut_at = 300_000
    dest = tmp_path / "big.pt"
    with pytest.raises(DownloadError, match="run again to resume it"):
        download(f"{server.url}/big.pt", dest, sha256_of(data), "the test", progress=False)
    part = dest.with_name(dest.name + PART_SUFFIX)
    assert part.stat().st_size == 300_000 and not dest.exists()
    assert download(f"{server.url}/big.pt", dest, sha256_of(data), "the test",
                    progress=False) == sha256_of(data)
    assert server.requests[-1] == "bytes=300000-" and dest.read_bytes() == data


def test_without_a_hash_the_first_download_pins_one_and_later_damage_is_found(tmp_path, server):
    entry = weight_files()["torchdistill/cifar10-resnet20"]
    data = bare_file(published_state_dict(entry)[1])
    server.files["/t.pt"] = data
    local = served(entry, server, "/t.pt", None)
    obtain(local, tmp_path, progress=False)
    published = tmp_path / "zoo/files/torchdistill" / entry.file_name
    assert published.with_name(published.name + ".sha256").read_text().split()[0] \
        == sha256_of(data)
    published.write_bytes(data[:-10])  # damaged after the download
    converted_path(local, tmp_path).unlink()
    with pytest.raises(DownloadError, match=f"not {sha256_of(data)} as .*cifar10-resnet20.pt"
                                            r".sha256, recorded at its first use"):
        obtain(local, tmp_path, progress=False)


def test_no_network_says_the_url_and_where_to_put_the_file(tmp_path, server):
    entry = served(weight_files()["torchdistill/cifar10-resnet20"], server, "/absent.pt", None)
    with pytest.raises(DownloadError, match=r"absent.pt answered HTTP 404 .* if you have it, "
                                            rf"put it at {tmp_path}/zoo/files/torchdistill/"):
        obtain(entry, tmp_path, progress=False)
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(DownloadError, match=rf"cannot download http://127.0.0.1:{port}/absent.pt"
                                            r" \(.*\): on a machine without network"):
        obtain(entry, tmp_path, progress=False)


@pytest.mark.parametrize("overrides, message", [
    (["teacher.checkpoint=zoo:nobody/resnet8"],
     "teacher.checkpoint=zoo:nobody/resnet8 is no weight file kdrun knows: use one of "
     "zoo:mdistiller/resnet56,"),
    (["teacher.checkpoint=zoo:mdistiller/resnet56", "teacher=resnet56"],
     "was trained on cifar100 \\(100 classes\\), not on this run's synthetic \\(4 classes\\): "
     "set dataset=cifar100"),
    (["teacher.checkpoint=zoo:chenyaofo/cifar10_resnet20", "dataset=cifar10"],
     "is a resnet20, not a resnet8: set teacher=resnet20"),
    (["mode=eval", "checkpoint=zoo:chenyaofo/cifar100_resnet20", "dataset=cifar10"],
     "checkpoint=zoo:chenyaofo/cifar100_resnet20 was trained on cifar100"),
])
def test_a_zoo_name_that_does_not_fit_is_one_line_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(*overrides))


def cifar10_with_a_teacher_put_by_hand(tmp_path: Path, cli_env: dict):
    """Tiny CIFAR-10 pickles, and zoo:torchdistill/cifar10-resnet20 (random weights) where the
    offline error says to put it; the CLI overrides that use them."""
    from test_data import write_cifar

    write_cifar(tmp_path / "data", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "labels", "batches.meta", "label_names",
                [f"c{i}" for i in range(10)], per_file=20)
    entry = weight_files()["torchdistill/cifar10-resnet20"]
    data = bare_file(published_state_dict(entry)[1])
    by_hand = Path(cli_env["KDRUN_CACHE"]) / "teachers/zoo/files/torchdistill" / entry.file_name
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(data)
    cifar = ["dataset=cifar10", f"dataset.root={tmp_path}/data",
             *[o for o in TINY if not o.startswith(("dataset=", "teacher="))]]
    return cifar, by_hand, data


@pytest.mark.slow
def test_a_run_distils_from_a_file_put_in_the_cache_by_hand(tmp_path, cli_env):
    """The offline route: the published file where the error message says; the run converts
    it, measures it before training, warns that it is far from the reported accuracy, and
    records the published file's SHA-256; mode=eval reads it by name, on its data set."""
    cifar, by_hand, data = cifar10_with_a_teacher_put_by_hand(tmp_path, cli_env)
    proc = kdrun(*cifar, "teacher=resnet20", "method=kd",
                 "teacher.checkpoint=zoo:torchdistill/cifar10-resnet20",
                 f"hydra.run.dir={tmp_path}/run", env=cli_env, cwd=tmp_path)
    results = read_results(tmp_path / "run")
    assert results["meta/teacher_sha256"] == sha256_of(data)
    assert results["meta/teacher_source"] == "zoo:torchdistill/cifar10-resnet20"
    assert results["meta/teacher_reported_acc"] == 91.92
    assert "measures 10.00 %" in proc.stdout and "points from the 91.92 %" in proc.stdout
    assert f"more than {ACCURACY_TOLERANCE} points apart" in proc.stdout
    measured = json.loads(next(by_hand.parents[2].glob("torchdistill/*.measured.json"))
                          .read_text())
    assert measured == {"cifar10 test split, 20 images": pytest.approx(
        results["teacher/test/acc"], abs=1e-6)}

    kdrun(*[o for o in cifar if o != "dataset=cifar10"], "mode=eval",
          "checkpoint=zoo:torchdistill/cifar10-resnet20", f"hydra.run.dir={tmp_path}/eval",
          env=cli_env, cwd=tmp_path)
    evaluated = read_results(tmp_path / "eval")
    assert evaluated["test/acc"] == pytest.approx(results["teacher/test/acc"])
    assert evaluated["meta/model_sha256"] == sha256_of(data)
    assert evaluated["meta/model_reported_acc"] == 91.92


def test_pickled_code_in_a_published_file_is_still_refused(tmp_path, server):
    entry = weight_files()["torchdistill/cifar10-resnet20"]
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1), "hook": pickle.loads}, buffer)
    server.files["/evil.pt"] = buffer.getvalue()
    from kdrun.errors import CheckpointError

    with pytest.raises(CheckpointError, match="holds Python objects besides weights"):
        obtain(served(entry, server, "/evil.pt", None), tmp_path, progress=False)


def test_a_changed_entry_is_converted_again_and_a_bad_unpinned_file_is_fetched_anew(tmp_path,
                                                                                   server):
    entry = weight_files()["torchdistill/cifar10-resnet20"]
    data = bare_file(published_state_dict(entry)[1])
    server.files["/t.pt"] = b"<html>not found</html>"  # what a proxy's error page looks like
    local = served(entry, server, "/t.pt", None)
    with pytest.raises(Exception, match=r"not a PyTorch checkpoint.* \(removed; run again"):
        obtain(local, tmp_path, progress=False)
    published = tmp_path / "zoo/files/torchdistill" / entry.file_name
    assert not published.exists()  # neither kept nor pinned
    server.files["/t.pt"] = data
    path = obtain(local, tmp_path, progress=False)
    renormalised = dataclasses.replace(local, std=[0.2, 0.2, 0.2])
    again = obtain(renormalised, tmp_path, progress=False)
    assert again != path and torch.load(again)["meta"]["normalization"]["std"] == [0.2] * 3
    assert torch.load(path)["meta"]["normalization"]["std"] == entry.std


def test_a_whole_part_is_kept_and_one_the_server_will_not_resume_is_dropped(tmp_path, server):
    data = bytes(range(250)) * 4
    server.files["/f.pt"] = data
    whole = tmp_path / "whole.pt"  # killed between the last byte and the rename
    whole.with_name("whole.pt" + PART_SUFFIX).write_bytes(data)
    assert download(f"{server.url}/f.pt", whole, sha256_of(data), "the test",
                    progress=False) == sha256_of(data)
    dest = tmp_path / "f.pt"
    dest.with_name("f.pt" + PART_SUFFIX).write_bytes(bytes(2000))  # longer than the file
    with pytest.raises(DownloadError, match="refused to resume .* removed; run again"):
        download(f"{server.url}/f.pt", dest, None, "the test", progress=False)
    assert download(f"{server.url}/f.pt", dest, None, "the test", progress=False) \
        == sha256_of(data)


def test_a_malformed_registry_entry_is_one_line(tmp_path):
    import yaml

    from kdrun.weights.registry import REGISTRY

    registry = yaml.safe_load(REGISTRY.read_text())
    registry["weights"]["chenyaofo/cifar10_resnet20"]["layout"] = "densenet"
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    with pytest.raises(ConfigError, match="weight file chenyaofo/cifar10_resnet20 has layout "
                                          "densenet: use one of resnet, wrn"):
        weight_files(tmp_path / "registry.yaml")


@pytest.mark.slow
def test_under_torchrun_every_rank_measures_its_share_and_uses_the_files_normalisation(
        tmp_path, cli_env):
    from test_scale_out import torchrun

    cifar, by_hand, _ = cifar10_with_a_teacher_put_by_hand(tmp_path, cli_env)
    torchrun(*cifar, "teacher=resnet20", "method=kd",
             "teacher.checkpoint=zoo:torchdistill/cifar10-resnet20",
             f"hydra.run.dir={tmp_path}/run", env=cli_env, cwd=tmp_path)
    results = read_results(tmp_path / "run")
    measured = json.loads(next(by_hand.parents[2].glob("torchdistill/*.measured.json"))
                          .read_text())
    assert measured == {"cifar10 test split, 20 images": pytest.approx(
        results["teacher/test/acc"], abs=1e-6)}  # the early, sharded figure is the final one
    assert results["meta/teacher_source"] == "zoo:torchdistill/cifar10-resnet20"

    torch.multiprocessing.spawn(copy_on_two_ranks, args=(str(tmp_path),), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("mean", "std", "fc"):
        assert torch.equal(rank0[key], rank1[key]), key
    assert rank1["std"].flatten().tolist() == pytest.approx([0.2023, 0.1994, 0.2010])


def copy_on_two_ranks(rank: int, folder: str) -> None:
    """Rank 0 loads a file with its own normalisation, as a published teacher's does; after
    copy_from_main rank 1 holds the same weights and mean/std (non-persistent buffers)."""
    import torch.distributed as dist

    from kdrun.runtime import distributed

    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank,
                            world_size=2)
    model = build_model("resnet8", 10, [0.5] * 3, [0.25] * 3)
    if rank == 0:
        model.std.copy_(torch.tensor([0.2023, 0.1994, 0.2010]).view_as(model.std))
        model.mean.fill_(0.45)
        torch.nn.init.normal_(model.net.fc.weight)
    distributed.copy_from_main(model)
    torch.save({"mean": model.mean, "std": model.std, "fc": model.net.fc.weight.detach()},
               Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()
