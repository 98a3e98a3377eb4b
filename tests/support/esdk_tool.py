"""Encrypt or decrypt stdin to stdout exactly as the seed does (AWS Encryption SDK, Python).

Usage: SYNAPSE_BACKUP_PASSPHRASE=... python esdk_tool.py encrypt|decrypt [--frame-length N]
       [--context KEY=VALUE ...]
With --context, encrypt writes that encryption context; decrypt requires the
message's header to hold it (exit 1 before any output otherwise).
The passphrase comes from the environment only, never argv. Exit 1 on a crypto error, 2 on usage.
"""

import argparse
import logging
import os
import sys
from hashlib import sha256

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import (
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey


def master_key(passphrase: str) -> RawMasterKey:
    return RawMasterKey(
        provider_id="static-random",
        key_id=b"master_key",
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=sha256(passphrase.encode("utf-8")).digest(),
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["encrypt", "decrypt"])
    parser.add_argument("--frame-length", type=int, default=None)
    parser.add_argument("--context", action="append", default=[])
    args = parser.parse_args()
    passphrase = os.environ.get("SYNAPSE_BACKUP_PASSPHRASE")
    if not passphrase:
        parser.error("set SYNAPSE_BACKUP_PASSPHRASE")

    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    options = {"source": sys.stdin.buffer, "key_provider": master_key(passphrase)}
    context = dict(pair.split("=", 1) for pair in args.context)
    if args.command == "encrypt":
        options["encryption_context"] = context
        options.update(mode="e", algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY)
        if args.frame_length is not None:
            options["frame_length"] = args.frame_length
    else:
        options["mode"] = "decrypt-unsigned"

    # The SDK logs a traceback when a failed stream closes; our one-line error is enough.
    logging.getLogger("aws_encryption_sdk").addHandler(logging.NullHandler())
    out = sys.stdout.buffer
    try:
        with client.stream(**options) as stream:
            if args.command == "decrypt":
                found = stream.header.encryption_context
                missing = {k: v for k, v in context.items() if found.get(k) != v}
                if missing:
                    raise ValueError(f"encryption context {found} lacks {missing}")
            for chunk in stream:
                out.write(chunk)
        out.flush()
    except Exception as err:  # noqa: BLE001 - report any SDK failure as exit 1
        print(f"esdk_tool {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
