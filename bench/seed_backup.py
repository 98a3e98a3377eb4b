"""The seed's Python design, as a benchmark baseline: tarfile -> aws-encryption-sdk -> boto3.

Written for `npm run bench` from the seed charm's backup API (../shared/seed): a generator
that tars the selected files with `tarfile` (mode "w|", one yield per file), the SDK's
`stream(mode="e")` over a file-like view of that generator (the SDK's default 4 KiB frames,
suite AES_256_GCM_HKDF_SHA512_COMMIT_KEY, raw key "static-random"/"master_key" wrapping with
SHA-256 of the passphrase), and a boto3 multipart upload fed part by part from the
encrypted stream. Restore is the reverse: get_object -> decrypt-unsigned stream -> tarfile
"r|" extraction. One thread, as in the seed.

Usage (credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, passphrase in
SYNAPSE_BACKUP_PASSPHRASE):
  python seed_backup.py create  --endpoint URL --bucket B --key K --data-dir DIR
  python seed_backup.py restore --endpoint URL --bucket B --key K --data-dir DIR
"""

import argparse
import hashlib
import io
import os
import sys
import tarfile
from typing import Iterable, Iterator, List

import boto3
from aws_encryption_sdk import EncryptionSDKClient
from aws_encryption_sdk.identifiers import (
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from botocore.config import Config

# What the seed backs up, relative to the data dir (the same selection as the engine's).
SELECTED_GLOBS = (".key", ".yaml", ".yml", ".log.config")
SELECTED_DIRS = ("media_store/local_content", "media_store/local_thumbnails")
PART_SIZE = 8 * 1024 * 1024  # boto3's default multipart chunk size


class PassphraseKeyProvider(RawMasterKeyProvider):
    """The seed's static-random provider: one key, master_key, = SHA-256 of the passphrase."""

    provider_id = "static-random"

    def __init__(self, **_kwargs):  # pylint: disable=super-init-not-called
        self._wrapping_key = b""

    @classmethod
    def for_passphrase(cls, passphrase: str) -> "PassphraseKeyProvider":
        provider = cls()
        provider._wrapping_key = hashlib.sha256(passphrase.encode("utf-8")).digest()
        provider.add_master_key(b"master_key")
        return provider

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self._wrapping_key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


class IterableReader(io.RawIOBase):
    """A file-like object reading from an iterator of byte strings."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 20
        while len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out


def selected_files(data_dir: str) -> List[str]:
    names = sorted(n for n in os.listdir(data_dir) if n.endswith(SELECTED_GLOBS))
    if os.path.isfile(os.path.join(data_dir, "homeserver.db")):
        names.append("homeserver.db")
    for top in SELECTED_DIRS:
        for root, dirs, files in os.walk(os.path.join(data_dir, top)):
            dirs.sort()
            rel = os.path.relpath(root, data_dir)
            names.append(rel)
            names.extend(os.path.join(rel, f) for f in sorted(files))
    return names


def tar_generator(names: List[str], base_dir: str) -> Iterator[bytes]:
    """The seed's tar_file_generator: tarfile into a buffer, drained after every member."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for name in names:
            path = os.path.join(base_dir, name)
            info = tar.gettarinfo(name=path, arcname=name)
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate(0)
    if buffer.getvalue():
        yield buffer.getvalue()


def encrypt_generator(chunks: Iterable[bytes], passphrase: str) -> Iterator[bytes]:
    client = EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    with client.stream(
        mode="e",
        source=IterableReader(chunks),
        key_provider=PassphraseKeyProvider.for_passphrase(passphrase),
        algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
    ) as encryptor:
        yield from encryptor


def decrypt_generator(chunks: Iterable[bytes], passphrase: str) -> Iterator[bytes]:
    client = EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    with client.stream(
        mode="decrypt-unsigned",
        source=IterableReader(chunks),
        key_provider=PassphraseKeyProvider.for_passphrase(passphrase),
    ) as decryptor:
        yield from decryptor


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def stream_to_object(s3, bucket: str, key: str, chunks: Iterable[bytes]) -> None:
    """Multipart upload of an iterable, one part at a time, aborted on any failure."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    try:
        pending = bytearray()

        def send(data: bytes) -> None:
            number = len(parts) + 1
            out = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            parts.append({"PartNumber": number, "ETag": out["ETag"]})

        for chunk in chunks:
            pending += chunk
            while len(pending) >= PART_SIZE:
                send(bytes(pending[:PART_SIZE]))
                del pending[:PART_SIZE]
        if pending or not parts:
            send(bytes(pending))
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["create", "restore"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args()
    passphrase = os.environ["SYNAPSE_BACKUP_PASSPHRASE"]
    s3 = s3_client(args.endpoint)
    if args.command == "create":
        names = selected_files(args.data_dir)
        stream_to_object(
            s3,
            args.bucket,
            args.key,
            encrypt_generator(tar_generator(names, args.data_dir), passphrase),
        )
    else:
        body = s3.get_object(Bucket=args.bucket, Key=args.key)["Body"]
        plain = decrypt_generator(body.iter_chunks(1 << 20), passphrase)
        with tarfile.open(fileobj=IterableReader(plain), mode="r|") as tar:
            if hasattr(tarfile, "fully_trusted_filter"):
                tar.extractall(args.data_dir, filter="fully_trusted")
            else:
                tar.extractall(args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
