import io
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.errors import FetchError
from pipeline.core.files import write_json
from pipeline.core.sources import DEFAULT_COUNTS, SYNTHETIC
from pipeline.fetch.archive import extract
from pipeline.fetch.dataset import build_manifest, fetch_dataset
from pipeline.fetch.download import DownloadError, download
from pipeline.split.layouts import find_inventory
from tests.helpers.datasets import make_dataset
from tests.helpers.httpserver import FileServer, closed_port_url
from tests.helpers.project import PROJECT_ROOT

MANIFEST = PROJECT_ROOT / "manifests" / "human-segmentation.json"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_download_writes_the_exact_bytes(tmp_path: Path):
    with FileServer() as server:
        server.add("/f.bin", PAYLOAD)
        download(server.url("/f.bin"), tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()


def test_cut_connection_is_resumed_with_a_range_request(tmp_path: Path):
    with FileServer() as server:
        route = server.add("/f.bin", PAYLOAD, cut_after=300_000, cut_times=2)
        download(server.url("/f.bin"), tmp_path / "f.bin", backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    ranges = [request.get("Range") for request in route.requests]
    assert len(ranges) == 3 and ranges[0] is None
    offsets = [int(value.removeprefix("bytes=").rstrip("-")) for value in ranges[1:]]
    assert 0 < offsets[0] <= 300_000 < offsets[1] <= 600_000


def test_leftover_partial_file_is_resumed(tmp_path: Path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    with FileServer() as server:
        route = server.add("/f.bin", PAYLOAD)
        download(server.url("/f.bin"), tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert route.requests[0]["Range"] == "bytes=1000-"


def test_transient_server_errors_are_retried_then_reported(tmp_path: Path):
    with FileServer() as server:
        route = server.add("/f.bin", PAYLOAD, status=503)
        with pytest.raises(DownloadError, match=r"HTTP 503 \(gave up after 3 attempts\)"):
            download(server.url("/f.bin"), tmp_path / "f.bin", retries=3, backoff=0)
    assert len(route.requests) == 3
    assert not (tmp_path / "f.bin").exists()


def test_not_found_is_not_retried(tmp_path: Path):
    with FileServer() as server:
        route = server.add("/f.bin", PAYLOAD, status=404)
        with pytest.raises(DownloadError, match="HTTP 404"):
            download(server.url("/f.bin"), tmp_path / "f.bin", backoff=0)
    assert len(route.requests) == 1


def test_unreachable_source_says_how_to_use_a_local_copy(tmp_path: Path):
    with pytest.raises(FetchError) as caught:
        fetch_dataset(closed_port_url(), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    message = str(caught.value)
    assert "could not download data.source" in message and "cannot connect" in message
    assert "dvc exp run -S data.source=" in message
    assert "-S data.source=synthetic -S data.manifest=null" in message and "make demo" in message
    assert not (tmp_path / "raw").exists()


def test_reference_zip_over_http_verifies_against_the_committed_manifest(tmp_path: Path, shared_zip: Path):
    with FileServer() as server:
        server.add("/master.zip", shared_zip.read_bytes())
        fetch_dataset(
            server.url("/master.zip"), tmp_path / "raw", manifest=MANIFEST, cache_dir=tmp_path / "cache", classes=2
        )
    raw = tmp_path / "raw"
    assert len(list((raw / "Training_Images").glob("*.jpg"))) == 290
    assert len(list((raw / "Ground_Truth").glob("*.png"))) == 290
    assert not list(raw.rglob(".DS_Store"))


def test_repacked_archive_of_the_same_files_passes_and_a_changed_file_fails(tmp_path: Path, shared_zip: Path):
    repacked, tampered = tmp_path / "repacked.tar.gz", tmp_path / "tampered.zip"
    with (
        zipfile.ZipFile(shared_zip) as source,
        tarfile.open(repacked, "w:gz") as tar,
        zipfile.ZipFile(tampered, "w") as bad,
    ):
        for info in source.infolist():
            data = source.read(info) if not info.is_dir() else b""
            if info.is_dir():
                continue
            entry = tarfile.TarInfo("renamed-top/" + info.filename.split("/", 1)[1])
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
            bad.writestr(info, data + b"x" if info.filename.endswith("Ground_Truth/7.png") else data)
    fetch_dataset(str(repacked), tmp_path / "ok", manifest=MANIFEST, cache_dir=tmp_path / "cache", classes=2)
    with pytest.raises(FetchError, match=r"content differs \(1\): Ground_Truth/7.png"):
        fetch_dataset(str(tampered), tmp_path / "bad", manifest=MANIFEST, cache_dir=tmp_path / "cache", classes=2)
    assert not (tmp_path / "bad").exists()


def test_wrong_bytes_from_the_server_fail_and_are_not_cached(tmp_path: Path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("top/Training_Images/1.jpg", b"x")
    with FileServer() as server:
        route = server.add("/master.zip", archive.read_bytes())
        for _ in range(2):
            with pytest.raises(FetchError, match="does not match the manifest"):
                fetch_dataset(
                    server.url("/master.zip"),
                    tmp_path / "raw",
                    manifest=MANIFEST,
                    cache_dir=tmp_path / "cache",
                    classes=2,
                )
    assert len(route.requests) == 2  # the bad download was dropped, not reused
    assert not (tmp_path / "raw").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_local_folder_source_and_missing_path(tmp_path: Path):
    make_dataset(tmp_path / "mine", count=3)
    fetch_dataset(str(tmp_path / "mine"), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    assert build_manifest(tmp_path / "raw") == build_manifest(tmp_path / "mine")
    with pytest.raises(FetchError, match="does not exist"):
        fetch_dataset(
            str(tmp_path / "absent"), tmp_path / "raw2", manifest=None, cache_dir=tmp_path / "cache", classes=2
        )


def test_refetch_replaces_the_previous_content(tmp_path: Path):
    make_dataset(tmp_path / "a", count=3)
    make_dataset(tmp_path / "b", count=2)
    fetch_dataset(str(tmp_path / "a"), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    fetch_dataset(str(tmp_path / "b"), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    assert len(list((tmp_path / "raw" / "images").iterdir())) == 2


def test_manifest_lists_missing_and_unexpected_files(tmp_path: Path):
    make_dataset(tmp_path / "mine", count=2)
    manifest = build_manifest(tmp_path / "mine")
    manifest["images/999.jpg"] = manifest.pop("images/001.jpg")
    write_json(tmp_path / "m.json", {"files": manifest})
    with pytest.raises(FetchError) as caught:
        fetch_dataset(
            str(tmp_path / "mine"), tmp_path / "raw", manifest=tmp_path / "m.json", cache_dir=tmp_path / "c", classes=2
        )
    assert "missing (1): images/999.jpg" in str(caught.value)
    assert "unexpected (1): images/001.jpg" in str(caught.value)


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_archive_entries_escaping_the_target_are_refused(tmp_path: Path, name: str):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(zipfile.ZipInfo(name), b"pwned")
    with pytest.raises(FetchError, match="outside the target folder"):
        fetch_dataset(str(archive), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "raw").exists()


def test_links_in_archives_are_refused(tmp_path: Path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(FetchError, match="link or special file"):
        fetch_dataset(str(archive), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    zipped = tmp_path / "link.zip"
    with zipfile.ZipFile(zipped, "w") as bundle:
        info = zipfile.ZipInfo("data/passwd")
        info.external_attr = 0o120777 << 16
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(FetchError, match="symbolic link"):
        extract_and_wrap(zipped, tmp_path)


def extract_and_wrap(archive: Path, tmp_path: Path) -> None:
    fetch_dataset(str(archive), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def test_corrupt_archive_is_named(tmp_path: Path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(FetchError, match="broken.zip: cannot read archive"):
        fetch_dataset(str(bad), tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def test_plain_extract_keeps_nested_folders(tmp_path: Path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        entry = tarfile.TarInfo("top/sub/file.txt")
        entry.size = 2
        tar.addfile(entry, io.BytesIO(b"hi"))
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "sub" / "file.txt").read_bytes() == b"hi"


def test_synthetic_source_is_generated_offline_and_identical_every_time(tmp_path: Path):
    fetch_dataset("synthetic:12", tmp_path / "a", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    fetch_dataset("synthetic:12", tmp_path / "b", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    fetch_dataset("synthetic:5", tmp_path / "c", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    first = build_manifest(tmp_path / "a")
    assert len(first) == 24 and first == build_manifest(tmp_path / "b")
    assert build_manifest(tmp_path / "c") == {name: digest for name, digest in first.items() if name[-8:-4] < "0005"}
    assert len(find_inventory(tmp_path / "a", "auto").pairs) == 12
    assert not (tmp_path / "cache").exists()


def test_plain_synthetic_has_the_default_size(tmp_path: Path):
    fetch_dataset("synthetic", tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)
    assert len(list((tmp_path / "raw" / "masks").glob("*.png"))) == DEFAULT_COUNTS[SYNTHETIC]


@pytest.mark.parametrize("source", ["synthetic:0", "synthetic:ten", "synthetic:", "synthetic:²", "synthetic:100001"])
def test_malformed_synthetic_source_is_named(tmp_path: Path, source: str):
    with pytest.raises(FetchError, match=f"data.source: '{source}': write synthetic or synthetic:N"):
        fetch_dataset(source, tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=2)


def test_synthetic_source_with_a_manifest_says_to_drop_it(tmp_path: Path):
    with pytest.raises(FetchError, match="set data.manifest: null"):
        fetch_dataset("synthetic:4", tmp_path / "raw", manifest=MANIFEST, cache_dir=tmp_path / "cache", classes=2)
    assert not (tmp_path / "raw").exists()


def test_synthetic_source_draws_one_shape_kind_per_listed_class(tmp_path: Path):
    fetch_dataset("synthetic:24", tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=4)
    masks = [cv2.imread(str(path), cv2.IMREAD_UNCHANGED) for path in sorted((tmp_path / "raw" / "masks").glob("*.png"))]
    assert len(masks) == 24 and all(mask.ndim == 2 for mask in masks)
    # Index masks: every class id appears somewhere, and nothing beyond the last class.
    assert set(np.unique(np.stack(masks)).tolist()) == {0, 1, 2, 3}
    # Class 2 is always a rectangle: in an image holding only that class, its pixels fill their bounding box.
    only_rectangles = [mask for mask in masks if set(np.unique(mask).tolist()) == {0, 2}]
    for mask in only_rectangles:
        rows, columns = np.nonzero(mask)
        box = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        assert (box == 2).mean() > 0.5


def test_synthetic_source_names_the_class_limit(tmp_path: Path):
    with pytest.raises(FetchError, match="data.classes: the synthetic source .* 2 to 6 classes"):
        fetch_dataset("synthetic:2", tmp_path / "raw", manifest=None, cache_dir=tmp_path / "cache", classes=9)
