"""`vggfeat.utils.hashing`: the background sha256, started early or late, is the file's sha256."""
import hashlib
import os

from vggfeat.utils.hashing import _started, sha256_future, sha256_of, start_sha256


def _write(path, data: bytes, mtime_ns: int):
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_late_and_early_hash_are_the_files(tmp_path):
    path = tmp_path / "w.pth"
    _write(path, b"weights" * 100_000, 10**18)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_of(path) == expected
    assert sha256_future(path).result(timeout=60) == expected
    start_sha256(str(path))
    assert len(_started) == 1  # only the latest: one a failed command left is dropped
    assert sha256_future(path).result(timeout=60) == expected
    assert not _started  # taken: a later load hashes again


def test_a_file_rewritten_after_the_start_is_hashed_again(tmp_path):
    path = tmp_path / "w.pth"
    _write(path, b"old" * 1000, 10**18)
    start_sha256(path)
    _write(path, b"new" * 1000, 2 * 10**18)
    assert sha256_future(path).result(timeout=60) == hashlib.sha256(b"new" * 1000).hexdigest()
    _started.clear()


def test_names_and_folders_are_left_to_the_loader(tmp_path):
    _started.clear()
    start_sha256("vgg16")
    start_sha256(tmp_path)
    start_sha256(tmp_path / "missing.pth")
    assert not _started
