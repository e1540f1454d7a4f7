"""
The Merkle Search Tree that maps repo paths to record CIDs (repository
format v3, atproto.com/specs/repository).

A key's layer is the number of leading zero bits of SHA-256(key), counted in
pairs (fanout 4).  A node holds the keys of one layer, in byte order, each
with its value and the subtree one layer down that sorts after it (``t``);
``l`` is the subtree before the first key.  Empty nodes are pruned from the
top and the bottom of the tree, and empty intermediate nodes are kept, so the
shape, and hence the root CID, depends only on the key->CID mapping.

Trees are persistent: ``add``, ``update`` and ``delete`` return a new
:class:`MST` and leave the old one as it was, sharing every untouched node.
Nodes are read from a :class:`BlockSource` only when a path needs them;
subtrees off the changed paths stay CIDs and are never loaded, and only the
new nodes on the changed paths are encoded, once, when a root CID is asked
for.  Decoded nodes are kept in a :class:`NodeCache` keyed by CID: a node
never changes under its CID, so one cache can serve every repo and write.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Protocol, Union

from leafpds.ipld.cid import CID, DAG_CBOR_PREFIX
from leafpds.ipld.codec import DecodeError, decode, encode_with_cid

__all__ = [
    "BlockSource",
    "MemoryBlockSource",
    "NodeCache",
    "shared_cache",
    "MST",
    "MSTDiff",
    "apply_ops",
    "invert_ops",
    "proof_for_key",
    "key_layer",
    "common_prefix_length",
    "validate_key",
    "MissingBlock",
    "InvalidMSTKey",
    "InvalidMSTNode",
    "KeyExists",
    "KeyNotFound",
    "ProofError",
]

MAX_KEY_LENGTH = 1024

# The reference implementation's rule: one "/" between two non-empty
# segments of A-Za-z0-9 and "_~-:.".  Collections need not be NSIDs here.
_KEY_SEGMENT = rb"[A-Za-z0-9_~:.\-]+"
_KEY_RE = re.compile(_KEY_SEGMENT + rb"/" + _KEY_SEGMENT)


class MissingBlock(KeyError):
    """A node block the tree needs is not in the block source."""


class InvalidMSTKey(ValueError):
    """A key that may not be stored in a repository MST."""


class InvalidMSTNode(ValueError):
    """A node block that is not a canonical, correctly placed MST node."""


class KeyExists(KeyError):
    """``add`` of a key that is already in the tree."""


class KeyNotFound(KeyError):
    """``update`` or ``delete`` of a key that is not in the tree."""


class ProofError(ValueError):
    """The blocks of a commit do not show what its operations claim."""


class BlockSource(Protocol):
    """Where node blocks come from, synchronously (e.g. one SQLite connection)."""

    def get_block(self, cid: CID) -> bytes:
        """The block's bytes; raise ``KeyError`` (or ``MissingBlock``) if absent."""


class MemoryBlockSource(dict):
    """A dict of CID -> bytes that is a :class:`BlockSource`."""

    def get_block(self, cid: CID) -> bytes:
        return self[cid]


def key_layer(key: str | bytes) -> int:
    """The MST layer of a key: leading zero bits of its SHA-256, halved."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    digest = int.from_bytes(sha256(key).digest(), "big")
    return (256 - digest.bit_length()) // 2


def common_prefix_length(a: bytes, b: bytes) -> int:
    """How many leading bytes ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    # The highest differing bit of the two prefixes, read as integers, lies in
    # the first differing byte: no per-byte loop in Python.
    diff = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    if not diff:
        return n
    return n - 1 - (diff.bit_length() - 1) // 8


def validate_key(key: str) -> bytes:
    """Check a repo path against the spec's MST key rules; return its bytes."""
    raw = key.encode("utf-8")
    if len(raw) > MAX_KEY_LENGTH or _KEY_RE.fullmatch(raw) is None:
        raise InvalidMSTKey(f"not a valid MST key: {key!r}")
    collection, rkey = raw.split(b"/")
    if collection in (b".", b"..") or rkey in (b".", b".."):
        raise InvalidMSTKey(f"not a valid MST key: {key!r}")
    return raw


class _Node:
    """
    One tree node, immutable once built.  ``keys`` are full keys; a subtree
    reference (``left``, each of ``rights``) is None, a CID (not loaded), or a
    _Node.  ``cid`` and ``data`` are set once the node is encoded or loaded.

    ``heads`` memoizes, per entry, the encoding of what depends only on the
    key and the one before it (see :func:`_entry_head`), so that re-encoding
    a node whose links changed costs no prefix computations; an item, or the
    whole list, is None until it is needed.  A list is shared only between
    nodes with the same keys.
    """

    __slots__ = ("layer", "left", "keys", "values", "rights", "cid", "data", "heads")

    def __init__(
        self,
        layer: int,
        left: _Ref,
        keys: list[bytes],
        values: list[CID],
        rights: list[_Ref],
        cid: CID | None = None,
        data: bytes | None = None,
        heads: list[bytes | None] | None = None,
    ) -> None:
        self.layer = layer
        self.left = left
        self.keys = keys
        self.values = values
        self.rights = rights
        self.cid = cid
        self.data = data
        self.heads = heads

    def gap(self, i: int) -> _Ref:
        """The subtree between key ``i - 1`` and key ``i``."""
        return self.left if i == 0 else self.rights[i - 1]

    def subtrees(self) -> list[_Ref]:
        """The subtrees this node links to, in key order."""
        return [ref for ref in (self.left, *self.rights) if ref is not None]

    def with_gap(self, i: int, ref: _Ref) -> _Node:
        """A copy with gap ``i`` replaced by ``ref``."""
        if i == 0:
            return _Node(self.layer, ref, self.keys, self.values, self.rights, heads=self.heads)
        rights = self.rights.copy()
        rights[i - 1] = ref
        return _Node(self.layer, self.left, self.keys, self.values, rights, heads=self.heads)


_Ref = Union[None, CID, _Node]


def _is_node_link(ref: object) -> bool:
    """Links between nodes must be the blessed CID kind (or absent)."""
    return ref is None or isinstance(ref, CID) and ref.is_cidv1_dag_cbor_sha256_32()


def _decode(cid: CID, data: bytes, layer: int | None) -> _Node:
    """
    Decode and check a node.  ``layer`` is where its parent puts it, or None
    for a root, whose layer its first key gives.
    """
    try:
        obj = decode(data)
    except DecodeError as e:
        raise InvalidMSTNode(f"MST node {cid.encode()}: {e}") from None
    if not isinstance(obj, dict) or obj.keys() != {"e", "l"} or not isinstance(obj["e"], list):
        raise InvalidMSTNode(f"MST node {cid.encode()} is not {{l, e}}")
    left = obj["l"]
    keys: list[bytes] = []
    values: list[CID] = []
    rights: list[_Ref] = []
    prev = b""
    for entry in obj["e"]:
        if not isinstance(entry, dict) or entry.keys() != {"p", "k", "v", "t"}:
            raise InvalidMSTNode(f"MST node {cid.encode()} has a malformed entry")
        p, suffix, value, right = entry["p"], entry["k"], entry["v"], entry["t"]
        if not (
            type(p) is int
            and 0 <= p <= len(prev)
            and isinstance(suffix, bytes)
            and isinstance(value, CID)
            and _is_node_link(right)
        ):
            raise InvalidMSTNode(f"MST node {cid.encode()} has a malformed entry")
        key = prev[:p] + suffix
        # Keys are non-empty and ascending; canonical compression shares the
        # longest possible prefix.
        if key <= prev or common_prefix_length(prev, key) != p:
            raise InvalidMSTNode(f"MST node {cid.encode()}: keys out of order or not canonical")
        keys.append(key)
        values.append(value)
        rights.append(right)
        prev = key
    if not _is_node_link(left):
        raise InvalidMSTNode(f"MST node {cid.encode()} has a malformed left link")
    if layer is None:
        layer = key_layer(keys[0]) if keys else 0
        if not keys and left is not None:
            raise InvalidMSTNode(f"MST root {cid.encode()} is an empty node over a subtree")
    elif not keys and left is None:
        raise InvalidMSTNode(f"MST node {cid.encode()} is empty")
    if any(key_layer(key) != layer for key in keys):
        raise InvalidMSTNode(f"MST node {cid.encode()} holds a key of another layer")
    if layer == 0 and (left is not None or any(r is not None for r in rights)):
        raise InvalidMSTNode(f"MST node {cid.encode()} links below layer 0")
    return _Node(layer, left, keys, values, rights, cid, data)


class NodeCache:
    """
    A bounded LRU of decoded nodes by CID (about 1.2 kB each), shared by the
    reactor and the database writer.  It needs no lock: each OrderedDict
    method runs whole under the GIL (the keys are bytes, so no Python code
    runs inside one), and the one race between two of them, another thread
    evicting the entry in between, only means a node is not cached.
    """

    def __init__(self, max_nodes: int = 50_000) -> None:
        self.max_nodes = max_nodes
        # Keyed by the CID's bytes: cbrrr's CID hashes in Python, bytes in C.
        # An OrderedDict, not a dict: evicting the oldest entry of a dict
        # that has had many deletions scans past them all.
        self._nodes: OrderedDict[bytes, _Node] = OrderedDict()

    def get(self, cid: CID) -> _Node | None:
        key = cid.cid_bytes
        node = self._nodes.get(key)
        if node is not None:
            try:
                self._nodes.move_to_end(key)  # most recently used goes last
            except KeyError:
                pass  # evicted meanwhile
        return node

    def put(self, node: _Node) -> None:
        key = node.cid.cid_bytes
        nodes = self._nodes
        nodes[key] = node
        try:
            nodes.move_to_end(key)
            if len(nodes) > self.max_nodes:
                nodes.popitem(last=False)
        except KeyError:
            pass  # another thread evicted it, or emptied the cache, meanwhile

    def discard(self, cids: Iterable[CID]) -> None:
        """
        Forget nodes that are no longer in any tree (a commit replaced them):
        freed at once, their memory is what the next nodes are built in,
        still warm, rather than ageing out of the cache after tens of
        thousands of others.  (A node another repo also holds is only loaded
        again.)
        """
        nodes = self._nodes
        for cid in cids:
            nodes.pop(cid.cid_bytes, None)

    def __len__(self) -> int:
        return len(self._nodes)


#: The cache trees use unless given another one.
shared_cache = NodeCache()


class MST:
    """
    An immutable view of one tree.  Build it with :meth:`empty` or
    :meth:`load`; every change returns a new MST.
    """

    __slots__ = ("_source", "_cache", "_root", "_layer")

    def __init__(
        self, source: BlockSource, cache: NodeCache, root: _Ref, layer: int | None
    ) -> None:
        # ``root`` None is the empty tree; ``layer`` None means "not loaded yet".
        self._source = source
        self._cache = cache
        self._root = root
        self._layer = layer

    @classmethod
    def empty(cls, source: BlockSource, cache: NodeCache | None = None) -> MST:
        return cls(source, shared_cache if cache is None else cache, None, 0)

    @classmethod
    def load(cls, source: BlockSource, root: CID, cache: NodeCache | None = None) -> MST:
        """The tree whose root node is ``root``; nothing is read until needed."""
        return cls(source, shared_cache if cache is None else cache, root, None)

    # -- reading ------------------------------------------------------------

    def _load(self, ref: CID | _Node, layer: int) -> _Node:
        if isinstance(ref, _Node):
            return ref
        node = self._cache.get(ref)
        if node is None:
            node = _decode(ref, self._fetch(ref), layer)
            self._cache.put(node)
        elif node.layer != layer or not node.keys and node.left is None:
            raise InvalidMSTNode(f"MST node {ref.encode()} is out of place")
        return node

    def _fetch(self, cid: CID) -> bytes:
        try:
            return self._source.get_block(cid)
        except KeyError:
            raise MissingBlock(cid) from None

    def _top(self) -> tuple[_Ref, int]:
        """The root reference and its layer, loading the root if needed."""
        if self._layer is None:
            cid = self._root
            node = self._cache.get(cid)
            if node is None:
                node = _decode(cid, self._fetch(cid), None)
                self._cache.put(node)
            if not node.keys:
                if node.left is not None:
                    raise InvalidMSTNode(f"MST root {cid.encode()} is an empty node over a tree")
                self._root, self._layer = None, 0
            else:
                self._layer = node.layer
        return self._root, self._layer

    @property
    def layer(self) -> int:
        """The layer of the root node (0 for the empty tree)."""
        return self._top()[1]

    def root_cid(self) -> CID:
        """The root CID, encoding any new nodes first."""
        root, _ = self._top()
        if root is None:
            return _empty_root().cid
        if isinstance(root, _Node):
            _seal(root, self._cache)
            return root.cid
        return root

    def get(self, key: str) -> CID | None:
        """The value of ``key``, or None."""
        raw = key.encode("utf-8")
        ref, layer = self._top()
        while ref is not None:
            node = self._load(ref, layer)
            i = bisect_left(node.keys, raw)
            if i < len(node.keys) and node.keys[i] == raw:
                return node.values[i]
            ref, layer = node.gap(i), layer - 1
        return None

    def list(
        self, start: str | None = None, limit: int | None = None, reverse: bool = False
    ) -> Iterator[tuple[str, CID]]:
        """
        Leaves in key order (descending with ``reverse``) from ``start``
        inclusive: keys >= start, or with ``reverse`` keys <= start.
        """
        ref, layer = self._top()
        if ref is None or limit is not None and limit <= 0:
            return
        bound = None if start is None else start.encode("utf-8")
        iterate = self._iter_desc if reverse else self._iter_asc
        leaves = iterate(ref, layer, bound)
        for count, (key, value) in enumerate(leaves, 1):
            yield key.decode("utf-8"), value
            if count == limit:
                return

    def walk(self) -> Iterator[tuple[str, CID]]:
        """Every leaf in key order."""
        return self.list()

    def _iter_asc(self, ref: _Ref, layer: int, low: bytes | None) -> Iterator[tuple[bytes, CID]]:
        node = self._load(ref, layer)
        i = 0 if low is None else bisect_left(node.keys, low)
        gap = node.gap(i)
        if gap is not None:
            yield from self._iter_asc(gap, layer - 1, low)
        for j in range(i, len(node.keys)):
            yield node.keys[j], node.values[j]
            if node.rights[j] is not None:
                yield from self._iter_asc(node.rights[j], layer - 1, None)

    def _iter_desc(self, ref: _Ref, layer: int, high: bytes | None) -> Iterator[tuple[bytes, CID]]:
        node = self._load(ref, layer)
        i = len(node.keys) if high is None else bisect_right(node.keys, high)
        gap = node.gap(i)
        if gap is not None:
            yield from self._iter_desc(gap, layer - 1, high)
        for j in range(i - 1, -1, -1):
            yield node.keys[j], node.values[j]
            if node.gap(j) is not None:
                yield from self._iter_desc(node.gap(j), layer - 1, None)

    def verify(self) -> None:
        """
        Read the whole tree and raise :class:`InvalidMSTNode` unless it is the
        canonical MST of its contents.  Reading checks each node's form, key
        layers and pruning; what is left is that keys ascend across nodes.
        """
        root, layer = self._top()
        if root is None:
            return
        prev = b""
        for key, _ in self._iter_asc(root, layer, None):
            if key <= prev:
                raise InvalidMSTNode(f"MST keys out of order at {key!r}")
            prev = key

    def node_cids(self) -> Iterator[CID]:
        """Every node block of the tree, parents before children."""
        for node in self._nodes():
            yield node.cid

    def _nodes(self) -> Iterator[_Node]:
        self.root_cid()
        root, layer = self._top()
        if root is None:
            yield _empty_root()
            return
        stack = [(root, layer)]
        while stack:
            ref, layer = stack.pop()
            node = self._load(ref, layer)
            yield node
            for sub in reversed([node.left, *node.rights]):
                if sub is not None:
                    stack.append((sub, layer - 1))

    def blocks(self) -> Iterator[tuple[CID, bytes]]:
        """Every node block with its bytes (for export)."""
        for node in self._nodes():
            yield node.cid, node.data

    # -- writing ------------------------------------------------------------

    def add(self, key: str, value: CID) -> MST:
        """A tree with ``key`` added; ``KeyExists`` if it is there already."""
        raw = validate_key(key)
        klayer = key_layer(raw)
        root, layer = self._top()
        if klayer > layer:
            # The new key goes above the current root: split the whole tree
            # around it and hang both halves under it at the right depth.
            low, high = self._split(root, layer, raw)
            node = _Node(klayer, _lift(low, layer, klayer - 1), [raw], [value],
                         [_lift(high, layer, klayer - 1)])
            return MST(self._source, self._cache, node, klayer)
        return MST(self._source, self._cache, self._insert(root, layer, raw, klayer, value), layer)

    def update(self, key: str, value: CID) -> MST:
        """A tree with ``key`` set to ``value``; ``KeyNotFound`` if it is absent."""
        return self._update(key, value)[0]

    def delete(self, key: str) -> MST:
        """A tree without ``key``; ``KeyNotFound`` if it is absent."""
        return self._delete(key)[0]

    def _update(self, key: str, value: CID) -> tuple[MST, CID]:
        raw = key.encode("utf-8")
        root, layer = self._top()
        path = []  # (node, gap index) from the root down
        ref = root
        while ref is not None:
            node = self._load(ref, layer)
            i = bisect_left(node.keys, raw)
            if i < len(node.keys) and node.keys[i] == raw:
                old = node.values[i]
                values = node.values.copy()
                values[i] = value
                new = _Node(node.layer, node.left, node.keys, values, node.rights,
                            heads=node.heads)
                for parent, j in reversed(path):
                    new = parent.with_gap(j, new)
                return MST(self._source, self._cache, new, self._layer), old
            path.append((node, i))
            ref, layer = node.gap(i), layer - 1
        raise KeyNotFound(key)

    def _delete(self, key: str) -> tuple[MST, CID]:
        raw = key.encode("utf-8")
        klayer = key_layer(raw)
        root, layer = self._top()
        if klayer > layer:
            raise KeyNotFound(key)
        ref, old = self._remove(root, layer, raw, klayer)
        # Prune empty nodes from the top: the root must hold keys.
        while ref is not None:
            node = self._load(ref, layer)
            if node.keys:
                break
            ref, layer = node.left, layer - 1
        if ref is None:
            layer = 0
        return MST(self._source, self._cache, ref, layer), old

    def _insert(self, ref: _Ref, layer: int, key: bytes, klayer: int, value: CID) -> _Node:
        if ref is None:
            if klayer == layer:
                return _Node(layer, None, [key], [value], [None])
            return _Node(layer, self._insert(None, layer - 1, key, klayer, value), [], [], [])
        node = self._load(ref, layer)
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            raise KeyExists(key.decode("utf-8"))
        if klayer < layer:
            return node.with_gap(i, self._insert(node.gap(i), layer - 1, key, klayer, value))
        low, high = self._split(node.gap(i), layer - 1, key)
        new = node.with_gap(i, low)
        return _Node(
            layer,
            new.left,
            [*node.keys[:i], key, *node.keys[i:]],
            [*node.values[:i], value, *node.values[i:]],
            [*new.rights[:i], high, *new.rights[i:]],
            heads=_replaced(node.heads, i, i, 1),
        )

    def _split(self, ref: _Ref, layer: int, key: bytes) -> tuple[_Ref, _Ref]:
        """The subtree's keys below ``key`` and above it, as two subtrees of ``layer``."""
        if ref is None:
            return None, None
        node = self._load(ref, layer)
        i = bisect_left(node.keys, key)
        gap = node.gap(i)
        low, high = self._split(gap, layer - 1, key)
        n = len(node.keys)
        if i == n and high is None:
            return ref, None
        if i == 0 and low is None:
            return None, ref
        if i == 0:
            left_part = _Node(layer, low, [], [], [])
        else:
            left_part = _Node(layer, node.left, node.keys[:i], node.values[:i],
                              [*node.rights[: i - 1], low], heads=_replaced(node.heads, i, n, 0))
        if i == n:
            right_part = None if high is None else _Node(layer, high, [], [], [])
        else:
            right_part = _Node(layer, high, node.keys[i:], node.values[i:], node.rights[i:],
                               heads=_replaced(node.heads, 0, i, 0))
        return left_part, right_part

    def _remove(self, ref: _Ref, layer: int, key: bytes, klayer: int) -> tuple[_Ref, CID]:
        if ref is None:
            raise KeyNotFound(key.decode("utf-8"))
        node = self._load(ref, layer)
        i = bisect_left(node.keys, key)
        if klayer < layer:
            sub, old = self._remove(node.gap(i), layer - 1, key, klayer)
            new = node.with_gap(i, sub)
        else:
            if i == len(node.keys) or node.keys[i] != key:
                raise KeyNotFound(key.decode("utf-8"))
            old = node.values[i]
            merged = self._merge(node.gap(i), node.rights[i], layer - 1)
            new = _Node(layer, node.left, node.keys[:i] + node.keys[i + 1:],
                        node.values[:i] + node.values[i + 1:],
                        node.rights[:i] + node.rights[i + 1:],
                        heads=_replaced(node.heads, i, i + 1, 0)).with_gap(i, merged)
        if not new.keys and new.left is None:
            return None, old
        return new, old

    def _merge(self, a: _Ref, b: _Ref, layer: int) -> _Ref:
        """Two adjacent subtrees of ``layer`` (all of ``a`` before ``b``) as one."""
        if a is None:
            return b
        if b is None:
            return a
        na, nb = self._load(a, layer), self._load(b, layer)
        seam = self._merge(na.gap(len(na.keys)), nb.left, layer - 1)
        if not na.keys:
            return _Node(layer, seam, nb.keys, nb.values, nb.rights, heads=nb.heads)
        heads = None
        if na.heads is not None and nb.heads is not None:
            # nb's first key now follows na's last.
            heads = na.heads + _replaced(nb.heads, 0, 0, 0)
        return _Node(layer, na.left, na.keys + nb.keys, na.values + nb.values,
                     [*na.rights[:-1], seam, *nb.rights], heads=heads)

    # -- proofs -------------------------------------------------------------

    def _covering(self, key: bytes, out: dict[CID, bytes]) -> None:
        """
        Add the nodes on the path to ``key`` (down to where it is, or to where
        its absence shows) and, when it is present, on the paths to its two
        neighbours: what undoing a change to ``key`` reads.
        """
        ref, layer = self._top()
        if ref is None:
            out[_empty_root().cid] = _empty_root().data
        while ref is not None:
            node = self._load(ref, layer)
            out[node.cid] = node.data
            i = bisect_left(node.keys, key)
            if i < len(node.keys) and node.keys[i] == key:
                self._spine(node.gap(i), layer - 1, True, out)
                self._spine(node.rights[i], layer - 1, False, out)
                return
            ref, layer = node.gap(i), layer - 1

    def _spine(self, ref: _Ref, layer: int, rightmost: bool, out: dict[CID, bytes]) -> None:
        while ref is not None:
            node = self._load(ref, layer)
            out[node.cid] = node.data
            ref, layer = (node.gap(len(node.keys)) if rightmost else node.left), layer - 1


def _lift(ref: _Ref, layer: int, target: int) -> _Ref:
    """Put a subtree of ``layer`` under empty nodes until it is at ``target``."""
    if ref is None:
        return None
    while layer < target:
        layer += 1
        ref = _Node(layer, ref, [], [], [])
    return ref


@functools.cache
def _empty_root() -> _Node:
    """The one node of the empty tree: ``{e: [], l: null}``."""
    cid, data = encode_with_cid({"e": [], "l": None})
    return _Node(0, None, [], [], [], cid, data)


def _replaced(
    heads: list[bytes | None] | None, start: int, stop: int, added: int
) -> list[bytes | None] | None:
    """
    A node's entry heads once its keys ``start:stop`` are replaced by
    ``added`` others: theirs are unknown, and so is the head of the key after
    them, which has a new predecessor.
    """
    if heads is None:
        return None
    tail = [None, *heads[stop + 1:]] if stop < len(heads) else []
    return [*heads[:start], *[None] * added, *tail]


# The node encoding is assembled here rather than by cbrrr, from the memoized
# entry heads: a node on a write's path changes one link, and re-encoding it
# whole (prefixes, dicts, map-key sorting) was most of a write's cost.  The
# layout is DAG-CBOR's canonical form of {"e": [{"k", "p", "t", "v"}...],
# "l"}: map keys sorted by length then bytes, minimal-length heads, links as
# tag 42 over a byte string of 0x00 and the binary CID.  tests/test_mst.py
# checks it byte for byte against cbrrr.


def _cbor_head(major: int, n: int) -> bytes:
    """The minimal CBOR head of major type ``major`` (shifted) with argument ``n``."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    return bytes((major | 26,)) + n.to_bytes(4, "big")


_NULL = b"\xf6"
# Tag 42, a 37-byte string, the identity multibase prefix: what precedes a
# 36-byte CID, the only kind that links nodes (and the usual kind of value).
_LINK_36 = b"\xd8\x2a\x58\x25\x00"
_V_LINK_36 = b"\x61v" + _LINK_36
_L_NULL = b"\x61l" + _NULL
_L_LINK_36 = b"\x61l" + _LINK_36
# A node map's head, its "e" key and the head of an array of n entries.
_NODE_HEADS = [b"\xa2\x61e" + _cbor_head(0x80, n) for n in range(24)]


def _link(cid: CID | None) -> bytes:
    """A link, or null."""
    if cid is None:
        return _NULL
    raw = cid.cid_bytes
    if len(raw) == 36:
        return _LINK_36 + raw
    return b"\xd8\x2a" + _cbor_head(0x40, len(raw) + 1) + b"\x00" + raw


def _entry_head(prev: bytes, key: bytes) -> bytes:
    """An entry's map head, its "k" and "p", and the "t" key its link follows."""
    p = common_prefix_length(prev, key)
    suffix = key[p:]
    return (
        b"\xa4\x61k" + _cbor_head(0x40, len(suffix)) + suffix
        + b"\x61p" + _cbor_head(0, p) + b"\x61t"
    )


def _encode_node(
    values: list[CID], left: CID | None, rights: list[CID | None], heads: list[bytes]
) -> bytes:
    """A node's block, given its links as CIDs and its entry heads."""
    n = len(heads)
    parts = [_NODE_HEADS[n] if n < 24 else b"\xa2\x61e" + _cbor_head(0x80, n)]
    # Node links are always 36-byte CIDs (decoding checks it); values need not be.
    for head, right, value in zip(heads, rights, values):
        raw = value.cid_bytes
        parts += (
            head,
            _NULL if right is None else _LINK_36 + right.cid_bytes,
            _V_LINK_36 + raw if len(raw) == 36 else b"\x61v" + _link(value),
        )
    parts.append(_L_NULL if left is None else _L_LINK_36 + left.cid_bytes)
    return b"".join(parts)


def _seal(node: _Node, cache: NodeCache, new: list[_Node] | None = None) -> CID:
    """
    Encode the nodes under ``node`` that are not encoded yet, children
    first; cache each, and list its cached copy in ``new``.  (The hottest
    code of a write.)
    """
    if node.cid is not None:
        return node.cid
    left = node.left
    if type(left) is _Node:
        left = _seal(left, cache, new)
    rights = [_seal(r, cache, new) if type(r) is _Node else r for r in node.rights]
    keys = node.keys
    heads = node.heads
    if heads is None or None in heads:
        heads = [
            _entry_head(keys[i - 1] if i else b"", key) if heads is None or heads[i] is None
            else heads[i]
            for i, key in enumerate(keys)
        ]
        node.heads = heads
    data = _encode_node(node.values, left, rights, heads)
    node.cid = cid = CID(DAG_CBOR_PREFIX + sha256(data).digest())
    node.data = data
    # The cached copy links by CID, as a decoded node does: it must not keep
    # this tree's other nodes alive, and later writes that start from it must
    # see only their own new nodes as objects.
    stored = _Node(node.layer, left, keys, node.values, rights, cid, data, heads)
    cache.put(stored)
    if new is not None:
        new.append(stored)
    return cid


def _fresh(node: _Node, old: set[bytes], out: dict[CID, bytes]) -> None:
    """The blocks of in-memory nodes under ``node`` that are not in ``old``."""
    if node.cid.cid_bytes in old:
        return  # built again as it was, and so was everything under it
    out[node.cid] = node.data
    for sub in node.subtrees():
        if isinstance(sub, _Node):
            _fresh(sub, old, out)


def _diff(
    before: MST, old_root: CID | None, after: MST
) -> tuple[CID, dict[CID, bytes], set[CID]]:
    """
    Seal ``after`` and return its root CID, the node blocks it has that
    ``before`` (rooted at ``old_root``, or nothing) lacks, and the CIDs of
    ``before``'s nodes that it lacks.  Sets hold CID bytes: cbrrr's CID
    hashes in Python, bytes in C.
    """
    # The new tree's frontier: the nodes built in memory (as sealed, linking
    # by CID), and the stored subtrees they link to.
    top, _ = after._top()
    sealed: list[_Node] = []
    if top is None:
        new_root = _empty_root().cid
        sealed.append(_empty_root())
    elif type(top) is _Node:
        new_root = _seal(top, after._cache, sealed)
    else:
        new_root = top
    made = {node.cid.cid_bytes for node in sealed}
    frontier = {new_root.cid_bytes, *made}
    for node in sealed:
        if node.left is not None:
            frontier.add(node.left.cid_bytes)
        for right in node.rights:
            if right is not None:
                frontier.add(right.cid_bytes)

    # Walk the old tree from its root: a node the new tree has is shared with
    # all below it; any other is gone, and only its children need a look.
    # The gone nodes are the ones the operations read: this reads nothing new.
    removed: set[CID] = set()
    rebuilt: set[bytes] = set()  # old nodes that were built again as they were
    old_top, old_layer = before._top()
    stack = []
    if old_root is not None:
        if old_root.cid_bytes in frontier:
            if old_root.cid_bytes in made:
                rebuilt.add(old_root.cid_bytes)
        else:
            stack.append((old_root, old_layer))
    while stack:
        cid, layer = stack.pop()
        removed.add(cid)
        if old_top is None:
            break  # the empty tree's root links to nothing
        node = before._load(cid, layer)
        for sub in (node.left, *node.rights):
            if sub is not None:
                key = sub.cid_bytes
                if key not in frontier:
                    stack.append((sub, layer - 1))
                elif key in made:
                    rebuilt.add(key)

    if not rebuilt:
        return new_root, {node.cid: node.data for node in sealed}, removed
    # A node built in memory can equal an old one (a split undone by a merge):
    # then it, and all below it, are old blocks.
    new_blocks: dict[CID, bytes] = {}
    if type(top) is _Node:
        _fresh(top, rebuilt, new_blocks)
    return new_root, new_blocks, removed


@dataclass
class MSTDiff:
    """What one commit's operations did to the tree."""

    root: CID
    #: Node blocks that were not in the old tree.
    new_blocks: dict[CID, bytes]
    #: Node CIDs of the old tree that are not in the new one.
    removed: set[CID]
    #: The new-tree node blocks a relay needs (with ``new_blocks``) to check
    #: and invert the operations: sync v1.1's covering proof of every key.
    proof_blocks: dict[CID, bytes] = field(repr=False)
    #: Each operation's previous value (None for a create), in order.
    prevs: list[CID | None]

    @property
    def proof(self) -> set[CID]:
        """The CIDs of ``proof_blocks``."""
        return set(self.proof_blocks)


def apply_ops(
    source: BlockSource,
    root: CID | None,
    ops: Sequence[tuple[str, str, CID | None]],
    cache: NodeCache | None = None,
) -> MSTDiff:
    """
    Apply one commit's ``(action, key, cid)`` operations, ``action`` being
    "create", "update" or "delete" (cid None), to the tree at ``root`` (None:
    no tree yet, start from the empty one).
    """
    before = MST.empty(source, cache) if root is None else MST.load(source, root, cache)
    tree = before
    prevs: list[CID | None] = []
    for action, key, cid in ops:
        if action == "create":
            tree = tree.add(key, cid)
            prevs.append(None)
        elif action == "update":
            tree, old = tree._update(key, cid)
            prevs.append(old)
        elif action == "delete":
            tree, old = tree._delete(key)
            prevs.append(old)
        else:
            raise ValueError(f"unknown MST operation {action!r}")
    new_root, new_blocks, removed = _diff(before, root, tree)
    proof_blocks: dict[CID, bytes] = {}
    for _, key, _ in ops:
        tree._covering(key.encode("utf-8"), proof_blocks)
    return MSTDiff(
        root=new_root,
        new_blocks=new_blocks,
        removed=removed,
        proof_blocks=proof_blocks,
        prevs=prevs,
    )


def invert_ops(
    source: BlockSource,
    root: CID,
    ops: Sequence[tuple[str, str, CID | None, CID | None]],
) -> CID:
    """
    Undo one commit's ``(action, key, cid, prev)`` operations on the tree at
    ``root``, last first, reading only ``source`` (no shared cache), and
    return the root before the commit.  Raises :class:`ProofError` if the
    tree does not hold what an operation says it wrote, and
    :class:`MissingBlock` if ``source`` lacks a node this needs: how a relay
    checks a sync v1.1 commit.
    """
    tree = MST.load(source, root, NodeCache())
    for action, key, cid, prev in reversed(ops):
        if tree.get(key) != cid:
            raise ProofError(f"{action} of {key!r}: the tree does not hold {cid}")
        if action == "create":
            tree = tree.delete(key)
        elif action == "update":
            tree = tree.update(key, prev)
        elif action == "delete":
            tree = tree.add(key, prev)
        else:
            raise ValueError(f"unknown MST operation {action!r}")
    return tree.root_cid()


def proof_for_key(source: BlockSource, root: CID, key: str) -> list[tuple[CID, bytes]]:
    """
    The node blocks on the path from ``root`` to ``key``: a proof that the
    tree holds the key's value, or that it does not hold the key.
    """
    tree = MST.load(source, root)
    raw = key.encode("utf-8")
    ref, layer = tree._top()
    if ref is None:
        empty = _empty_root()
        return [(empty.cid, empty.data)]
    path = []
    while ref is not None:
        node = tree._load(ref, layer)
        path.append((node.cid, node.data))
        i = bisect_left(node.keys, raw)
        if i < len(node.keys) and node.keys[i] == raw:
            break
        ref, layer = node.gap(i), layer - 1
    return path

