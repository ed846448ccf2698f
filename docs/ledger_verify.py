#!/usr/bin/env python3
"""Independent verifier for a Rollcall ledger export (`rollcall-cloud ledger export --out DIR`).

Standard tools only: Python 3 and the `cryptography` package. Checks, for every entry:
its position (`index`), the hash chain (`prev`), the device envelope's SHA-256, the device's
Ed25519 signature over the DSSE pre-authentication encoding, and that the signed transaction
names the entry's tx_id and device; then recomputes the RFC 6962 Merkle tree and checks every
checkpoint's signature (cloud key) and root.

Usage: python3 ledger_verify.py DIR
Prints {"ok": true, "entries": N, "root": "<hex>"} and exits 0, or
{"ok": false, "first_bad_index": i, "problem": "..."} and exits 1.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TX_TYPE = "application/vnd.rollcall.transaction.v1+json"
CHECKPOINT_TYPE = "application/vnd.rollcall.checkpoint.v1+json"


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def verify_dsse(envelope: dict, expected_type: str, key: Ed25519PublicKey) -> bytes:
    if envelope["payloadType"] != expected_type:
        raise ValueError("payload type %r" % envelope["payloadType"])
    body = base64.b64decode(envelope["payload"])
    for s in envelope["signatures"]:
        try:
            key.verify(base64.b64decode(s["sig"]), pae(envelope["payloadType"], body))
            return body
        except Exception:
            continue
    raise ValueError("no signature verifies")


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The right edge of an RFC 6962 tree: roots of its perfect subtrees, largest first."""

    def __init__(self):
        self.size = 0
        self.nodes = []  # (height, hash)

    def push(self, leaf: bytes):
        h, node = 0, leaf
        while self.nodes and self.nodes[-1][0] == h:
            _, left = self.nodes.pop()
            node = node_hash(left, node)
            h += 1
        self.nodes.append((h, node))
        self.size += 1

    def root(self) -> bytes:
        if not self.nodes:
            return hashlib.sha256(b"").digest()
        r = self.nodes[-1][1]
        for _, left in reversed(self.nodes[:-1]):
            r = node_hash(left, r)
        return r


def main(d: str) -> int:
    keys = json.load(open(d + "/keys.json"))
    cloud = Ed25519PublicKey.from_public_bytes(base64.b64decode(keys["cloud"]))
    devices = {
        k: Ed25519PublicKey.from_public_bytes(base64.b64decode(v))
        for k, v in keys["devices"].items()
    }
    checkpoints = {}
    for line in open(d + "/checkpoints.jsonl"):
        body = json.loads(verify_dsse(json.loads(line), CHECKPOINT_TYPE, cloud))
        checkpoints[body["tree_size"]] = bytes.fromhex(body["root"])

    def bad(i, problem):
        print(json.dumps({"ok": False, "first_bad_index": i, "problem": problem}))
        return 1

    tree = CompactRange()
    prev = bytes(32)
    for pos, line in enumerate(open(d + "/entries.jsonl")):
        row = json.loads(line)
        raw = base64.b64decode(row["entry_b64"])
        e = json.loads(raw)
        if e["index"] != pos:
            return bad(pos, "entry says it is %d" % e["index"])
        if bytes.fromhex(e["prev"]) != prev:
            return bad(max(pos - 1, 0), "prev hash does not match the entry before")
        if e["kind"] == "decision":
            env_bytes = base64.b64decode(row["envelope_b64"])
            if hashlib.sha256(env_bytes).hexdigest() != e["envelope_sha256"]:
                return bad(pos, "envelope does not match envelope_sha256")
            try:
                tx = json.loads(
                    verify_dsse(json.loads(env_bytes), TX_TYPE, devices[e["device_id"]])
                )
            except Exception as err:
                return bad(pos, "device signature: %s" % err)
            if tx["tx_id"] != e["tx_id"] or tx["device_id"] != e["device_id"]:
                return bad(pos, "signed transaction names another tx or device")
        elif row.get("envelope_b64") is not None:
            return bad(pos, "status entry with an envelope")
        prev = leaf_hash(raw)
        tree.push(prev)
        if tree.size in checkpoints and checkpoints[tree.size] != tree.root():
            return bad(pos, "root differs from the signed checkpoint at size %d" % tree.size)
    if tree.size != max(checkpoints, default=0):
        return bad(tree.size, "the entries and the latest checkpoint disagree on the size")
    print(json.dumps({"ok": True, "entries": tree.size, "root": tree.root().hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
