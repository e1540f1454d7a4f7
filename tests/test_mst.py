"""
The Merkle Search Tree against the interop vectors, the reference
implementation's published roots, and properties that must hold for any
sequence of writes.
"""

import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leafpds.ipld.cid import CID, cid_for_cbor, parse_cid
from leafpds.ipld.codec import decode, encode, encode_with_cid
from leafpds.repo.mst import (
    MST,
    InvalidMSTKey,
    InvalidMSTNode,
    KeyExists,
    KeyNotFound,
    MemoryBlockSource,
    MissingBlock,
    NodeCache,
    ProofError,
    apply_ops,
    common_prefix_length,
    invert_ops,
    key_layer,
    proof_for_key,
    validate_key,
)
from leafpds.repo.mst import _encode_node, _entry_head
from tests.vectors import load_json, load_lines

# The leaf value the reference implementation's MST tests use.
LEAF = parse_cid("bafyreie5cvv4h45feadgeuwhbcutmh6t2ceseocckahdoe6uat64zmz454")
EMPTY_ROOT = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"

EXAMPLE_KEYS = load_lines("mst/example_keys.txt")
# Example keys reach layer 5; these add many layer-0/1 keys between them.
KEY_POOL = sorted(set(EXAMPLE_KEYS) | {f"com.example.record/{i:05d}" for i in range(200)})
VALUES = [cid_for_cbor(encode({"n": i})) for i in range(4)]


def value(i: int) -> CID:
    return VALUES[i % len(VALUES)]


def build(items, source=None, cache=None) -> MST:
    tree = MST.empty(MemoryBlockSource() if source is None else source, cache)
    for key, val in items:
        tree = tree.add(key, val)
    return tree


def stored(tree: MST) -> MemoryBlockSource:
    """A block source holding every node of ``tree``."""
    return MemoryBlockSource(tree.blocks())


class CountingSource(MemoryBlockSource):
    def __init__(self, blocks):
        super().__init__(blocks)
        self.reads = 0

    def get_block(self, cid):
        self.reads += 1
        return super().get_block(cid)


# -- vectors ----------------------------------------------------------------


@pytest.mark.parametrize("case", load_json("mst/key_heights.json"), ids=lambda c: c["key"])
def test_key_heights(case):
    assert key_layer(case["key"]) == case["height"]
    assert key_layer(case["key"].encode()) == case["height"]


def test_spec_key_depths():
    assert key_layer("app.bsky.feed.post/9adeb165882c") == 8


@pytest.mark.parametrize("case", load_json("mst/common_prefix.json"))
def test_common_prefix(case):
    left, right = case["left"].encode(), case["right"].encode()
    assert common_prefix_length(left, right) == case["len"]


def test_common_prefix_in_the_middle_of_long_keys():
    a = b"app.bsky.feed.post/3lxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxa"
    for i in range(len(a)):
        b = a[:i] + b"\xff" + a[i + 1:]
        assert common_prefix_length(a, b) == i
        assert common_prefix_length(a[: i + 1], a) == i + 1


def test_example_keys_have_their_named_height():
    # "C2/014073": the digit after the letter is the key's layer.
    assert len(EXAMPLE_KEYS) == 120
    for key in EXAMPLE_KEYS:
        assert key_layer(key) == int(key[1]), key


def commit_fixtures():
    return load_json("firehose/commit-proof-fixtures.json")


@pytest.mark.parametrize("fx", commit_fixtures(), ids=lambda fx: fx["comment"])
def test_commit_proof_fixture(fx):
    leaf = parse_cid(fx["leafValue"])
    before = build((key, leaf) for key in fx["keys"])
    assert before.root_cid().encode() == fx["rootBeforeCommit"]

    ops = [("create", k, leaf) for k in fx["adds"]] + [("delete", k, None) for k in fx["dels"]]
    diff = apply_ops(stored(before), before.root_cid(), ops, NodeCache())
    assert diff.root.encode() == fx["rootAfterCommit"]
    assert diff.prevs == [None] * len(fx["adds"]) + [leaf] * len(fx["dels"])

    emitted = {**diff.new_blocks, **diff.proof_blocks}
    assert set(diff.proof_blocks) == diff.proof
    assert {parse_cid(c) for c in fx["blocksInProof"]} <= emitted.keys()

    inverse = [(action, key, cid, leaf if action == "delete" else None) for action, key, cid in ops]
    undone = invert_ops(MemoryBlockSource(emitted), diff.root, inverse)
    assert undone.encode() == fx["rootBeforeCommit"]
    without_root = {cid: data for cid, data in emitted.items() if cid != diff.root}
    with pytest.raises(MissingBlock):
        invert_ops(MemoryBlockSource(without_root), diff.root, inverse)


@pytest.mark.parametrize("fx", commit_fixtures(), ids=lambda fx: fx["comment"])
def test_commit_fixture_in_any_insertion_order(fx):
    leaf = parse_cid(fx["leafValue"])
    keys = list(fx["keys"])
    random.Random(7).shuffle(keys)
    assert build((k, leaf) for k in keys).root_cid().encode() == fx["rootBeforeCommit"]
    final = sorted((set(keys) | set(fx["adds"])) - set(fx["dels"]))
    assert build((k, leaf) for k in reversed(final)).root_cid().encode() == fx["rootAfterCommit"]


# -- known roots from the reference implementation's tests ------------------


def test_empty_tree_root():
    tree = MST.empty(MemoryBlockSource())
    assert tree.root_cid().encode() == EMPTY_ROOT
    assert list(tree.walk()) == []
    assert list(tree.node_cids()) == [parse_cid(EMPTY_ROOT)]


def test_trivial_tree_root():
    tree = build([("com.example.record/3jqfcqzm3fo2j", LEAF)])
    assert tree.layer == 0
    assert tree.root_cid().encode() == "bafyreibj4lsc3aqnrvphp5xmrnfoorvru4wynt6lwidqbm2623a6tatzdu"


def test_single_key_on_layer_two_is_the_root():
    tree = build([("com.example.record/3jqfcqzm3fx2j", LEAF)])
    assert tree.layer == 2
    assert tree.root_cid().encode() == "bafyreih7wfei65pxzhauoibu3ls7jgmkju4bspy4t2ha2qdjnzqvoy33ai"


def test_simple_tree_root():
    keys = ["3jqfcqzm3fp2j", "3jqfcqzm3fr2j", "3jqfcqzm3fs2j", "3jqfcqzm3ft2j", "3jqfcqzm4fc2j"]
    tree = build((f"com.example.record/{k}", LEAF) for k in keys)
    assert tree.root_cid().encode() == "bafyreicmahysq4n6wfuxo522m6dpiy7z7qzym3dzs756t5n7nfdgccwq7m"


def test_delete_trims_the_top():
    keys = ["3jqfcqzm3fn2j", "3jqfcqzm3fo2j", "3jqfcqzm3fp2j", "3jqfcqzm3fs2j", "3jqfcqzm3ft2j",
            "3jqfcqzm3fu2j"]
    tree = build((f"com.example.record/{k}", LEAF) for k in keys)
    assert tree.layer == 1
    assert tree.root_cid().encode() == "bafyreifnqrwbk6ffmyaz5qtujqrzf5qmxf7cbxvgzktl4e3gabuxbtatv4"
    tree = tree.delete("com.example.record/3jqfcqzm3fs2j")
    assert tree.layer == 0
    assert tree.root_cid().encode() == "bafyreie4kjuxbwkhzg2i5dljaswcroeih4dgiqq6pazcmunwt2byd725vi"


def test_insert_that_splits_two_layers_down():
    l1root = "bafyreiettyludka6fpgp33stwxfuwhkzlur6chs4d2v4nkmq2j3ogpdjem"
    l2root = "bafyreid2x5eqs4w4qxvc5jiwda4cien3gw2q6cshofxwnvv7iucrmfohpm"
    keys = ["3jqfcqzm3fo2j", "3jqfcqzm3fp2j", "3jqfcqzm3fr2j", "3jqfcqzm3fs2j", "3jqfcqzm3ft2j",
            "3jqfcqzm3fz2j", "3jqfcqzm4fc2j", "3jqfcqzm4fd2j", "3jqfcqzm4ff2j", "3jqfcqzm4fg2j",
            "3jqfcqzm4fh2j"]
    tree = build((f"com.example.record/{k}", LEAF) for k in keys)
    assert (tree.layer, tree.root_cid().encode()) == (1, l1root)
    tree = tree.add("com.example.record/3jqfcqzm3fx2j", LEAF)
    assert (tree.layer, tree.root_cid().encode()) == (2, l2root)
    tree = tree.delete("com.example.record/3jqfcqzm3fx2j")
    assert (tree.layer, tree.root_cid().encode()) == (1, l1root)


def test_new_layer_two_above_the_root():
    l0root = "bafyreidfcktqnfmykz2ps3dbul35pepleq7kvv526g47xahuz3rqtptmky"
    l2root = "bafyreiavxaxdz7o7rbvr3zg2liox2yww46t7g6hkehx4i4h3lwudly7dhy"
    l2root2 = "bafyreig4jv3vuajbsybhyvb7gggvpwh2zszwfyttjrj6qwvcsp24h6popu"
    a, b, c, d = (f"com.example.record/{k}" for k in
                  ["3jqfcqzm3ft2j", "3jqfcqzm3fx2j", "3jqfcqzm3fz2j", "3jqfcqzm4fd2j"])
    tree = build([(a, LEAF), (c, LEAF)])
    assert (tree.layer, tree.root_cid().encode()) == (0, l0root)
    tree = tree.add(b, LEAF)
    assert (tree.layer, tree.root_cid().encode()) == (2, l2root)
    tree = tree.delete(b)
    assert (tree.layer, tree.root_cid().encode()) == (0, l0root)
    tree = tree.add(b, LEAF).add(d, LEAF)
    assert (tree.layer, tree.root_cid().encode()) == (2, l2root2)
    tree = tree.delete(d)
    assert (tree.layer, tree.root_cid().encode()) == (2, l2root)


# -- keys and errors --------------------------------------------------------


@pytest.mark.parametrize("key", [
    "coll/3jui7kd54zh2y", "coll/self", "coll/example.com", "com.example/rkey", "coll/~1.2-3_",
    "coll/dHJ1ZQ", "coll/pre:fix", "coll/_", "A0/123456", "app.bsky.feed.post/3lon5dzeaihj2",
    "c/" + "a" * 1022,
])
def test_valid_keys(key):
    assert validate_key(key) == key.encode()
    assert build([(key, LEAF)]).get(key) == LEAF


@pytest.mark.parametrize("key", [
    "", "asdf", "/rkey", "coll/", "coll/a/b", "/", "coll/key$", "coll/key%", "coll/key(",
    "coll/key)", "coll/key+", "coll/key=", "coll/ key", "coll/ké", "coll/.", "coll/..", "../key",
    "c/" + "a" * 1023,
])
def test_invalid_keys(key):
    with pytest.raises(InvalidMSTKey):
        validate_key(key)
    with pytest.raises(InvalidMSTKey):
        MST.empty(MemoryBlockSource()).add(key, LEAF)


def test_add_existing_update_missing_delete_missing():
    tree = build([("coll/a", LEAF)])
    with pytest.raises(KeyExists):
        tree.add("coll/a", VALUES[0])
    with pytest.raises(KeyNotFound):
        tree.update("coll/b", LEAF)
    with pytest.raises(KeyNotFound):
        tree.delete("coll/b")
    with pytest.raises(KeyNotFound):
        MST.empty(MemoryBlockSource()).delete("coll/a")
    with pytest.raises(ValueError):
        apply_ops(stored(tree), tree.root_cid(), [("upsert", "coll/a", LEAF)])


def test_trees_are_persistent():
    one = build([("coll/a", LEAF)])
    two = one.add("coll/b", VALUES[1])
    three = two.update("coll/a", VALUES[2]).delete("coll/b")
    assert list(one.walk()) == [("coll/a", LEAF)]
    assert list(two.walk()) == [("coll/a", LEAF), ("coll/b", VALUES[1])]
    assert list(three.walk()) == [("coll/a", VALUES[2])]
    assert one.root_cid() != three.root_cid()


# -- storage ----------------------------------------------------------------


def big_tree(n=2000):
    items = [(f"com.example.record/{i:06d}", value(i)) for i in range(n)]
    tree = build(items, cache=NodeCache())
    return tree, items


def test_loaded_tree_reads_only_the_path():
    tree, items = big_tree()
    source = CountingSource(tree.blocks())
    total = len(source)
    loaded = MST.load(source, tree.root_cid(), NodeCache())
    assert source.reads == 0
    assert loaded.get("com.example.record/001234") == value(1234)
    depth = source.reads
    assert 1 < depth <= loaded.layer + 1
    diff = apply_ops(source, tree.root_cid(), [("update", "com.example.record/001235", LEAF)],
                     NodeCache())
    assert source.reads <= 4 * (loaded.layer + 1) < total
    # An update rewrites exactly the path to its key.
    assert len(diff.new_blocks) == len(diff.removed) == depth
    assert diff.prevs == [value(1235)]


def test_writes_read_nothing_with_a_warm_cache():
    tree, _ = big_tree(500)
    source = CountingSource(tree.blocks())
    cache = NodeCache()
    diff = apply_ops(source, tree.root_cid(), [("create", "com.example.other/0000", LEAF)], cache)
    source.update(diff.new_blocks)
    root = diff.root
    # Each write's new nodes went into the cache: the next writes to that
    # part of the tree need nothing from storage.
    source.reads = 0
    for i in range(1, 20):
        diff = apply_ops(source, root, [("create", f"com.example.other/{i:04d}", LEAF)], cache)
        source.update(diff.new_blocks)
        root = diff.root
    assert source.reads == 0
    assert MST.load(source, root, NodeCache()).get("com.example.other/0007") == LEAF


def test_missing_block():
    tree, _ = big_tree(300)
    blocks = stored(tree)
    blocks.pop(next(c for c in tree.node_cids() if c != tree.root_cid()))
    with pytest.raises(MissingBlock):
        list(MST.load(blocks, tree.root_cid(), NodeCache()).walk())
    with pytest.raises(MissingBlock):
        MST.load(MemoryBlockSource(), tree.root_cid(), NodeCache()).get("coll/a")


def test_node_cache_is_bounded_lru():
    cache = NodeCache(max_nodes=2)
    roots = []
    for key in ["coll/a", "coll/b", "coll/c"]:
        tree = build([(key, LEAF)])
        roots.append((stored(tree), tree.root_cid()))
    for source, root in roots[:2]:
        MST.load(source, root, cache).get("coll/x")
    assert cache.get(roots[0][1]) is not None  # now the most recently used
    MST.load(*roots[2], cache).get("coll/c")
    assert len(cache) == 2
    assert cache.get(roots[1][1]) is None
    assert cache.get(roots[0][1]) is not None


def test_node_cache_shared_by_threads_stays_bounded_and_right():
    import threading

    from leafpds.repo.mst import _Node

    cache = NodeCache(max_nodes=64)
    nodes = [_Node(0, None, [], [], [], cid_for_cbor(encode(i)), encode(i)) for i in range(500)]
    wrong: list[object] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(20_000):
                node = rng.choice(nodes)
                if rng.random() < 0.5:
                    cache.put(node)
                else:
                    found = cache.get(node.cid)
                    if found is not None and found is not node:
                        wrong.append(found)
        except Exception as e:
            wrong.append(e)

    # Switch threads as often as the interpreter can, so that they interleave.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []
    assert 0 < len(cache) <= 64


def test_empty_commit_and_first_commit():
    diff = apply_ops(MemoryBlockSource(), None, [])
    assert diff.root.encode() == EMPTY_ROOT
    assert list(diff.new_blocks) == [diff.root] and diff.removed == set()
    first = apply_ops(MemoryBlockSource(diff.new_blocks), diff.root, [("create", "coll/a", LEAF)])
    assert first.removed == {diff.root}
    assert first.root == build([("coll/a", LEAF)]).root_cid()
    assert set(first.new_blocks) == {first.root}
    # Deleting the last key gives back the empty tree's root.
    last = apply_ops(MemoryBlockSource(first.new_blocks), first.root, [("delete", "coll/a", None)])
    assert last.root.encode() == EMPTY_ROOT
    assert last.removed == {first.root} and set(last.new_blocks) == {last.root}
    assert invert_ops(MemoryBlockSource(last.new_blocks), last.root,
                      [("delete", "coll/a", None, LEAF)]) == first.root


def test_commit_that_undoes_itself_changes_no_block():
    tree, _ = big_tree(300)
    key = next(k for k in EXAMPLE_KEYS if key_layer(k) >= 3)
    ops = [("create", key, LEAF), ("update", key, VALUES[1]), ("delete", key, None)]
    diff = apply_ops(stored(tree), tree.root_cid(), ops, NodeCache())
    assert diff.root == tree.root_cid()
    assert diff.new_blocks == {} and diff.removed == set()
    assert diff.prevs == [None, LEAF, VALUES[1]]
    inverse = [("create", key, LEAF, None), ("update", key, VALUES[1], LEAF),
               ("delete", key, None, VALUES[1])]
    assert invert_ops(MemoryBlockSource(diff.proof_blocks), diff.root, inverse) == diff.root


def test_invert_refuses_a_commit_the_tree_does_not_show():
    tree = build([("coll/a", LEAF)])
    with pytest.raises(ProofError):
        invert_ops(stored(tree), tree.root_cid(), [("create", "coll/a", VALUES[0], None)])
    with pytest.raises(ProofError):
        invert_ops(stored(tree), tree.root_cid(), [("delete", "coll/a", None, LEAF)])


def test_proof_for_key():
    tree, items = big_tree(1000)
    source, root = stored(tree), tree.root_cid()
    for key, val in [items[10], items[999], ("com.example.record/0004999", None), ("a/b", None),
                     ("zzz/z", None)]:
        proof = proof_for_key(source, root, key)
        assert proof[0][0] == root
        assert all(cid_for_cbor(data) == cid for cid, data in proof)
        # The path alone answers the lookup, present or absent.
        assert MST.load(MemoryBlockSource(proof), root, NodeCache()).get(key) == val
    empty = MST.empty(MemoryBlockSource())
    assert proof_for_key(MemoryBlockSource(), empty.root_cid(), "a/b")[0][0] == empty.root_cid()


# -- node encoding ----------------------------------------------------------


def random_cid(rng: random.Random) -> CID:
    """Mostly the usual 36-byte CIDs; sometimes CIDs of other lengths."""
    if rng.random() < 0.8:
        return cid_for_cbor(rng.randbytes(8))
    return CID(rng.randbytes(rng.choice([1, 2, 22, 23, 24, 100, 254, 255, 256, 300])))


def random_keys(rng: random.Random, count: int) -> list[bytes]:
    """Sorted distinct keys whose shared prefixes reach every CBOR head size."""
    stem = rng.randbytes(rng.choice([0, 5, 23, 24, 30, 255, 256, 600]))
    keys = set()
    while len(keys) < count:
        cut = rng.randint(0, len(stem))
        keys.add(stem[:cut] + rng.randbytes(rng.choice([0, 1, 3, 20, 23, 24, 300])))
    return sorted(keys)


def test_node_encoding_is_byte_identical_to_cbrrr():
    # The hand-assembled node encoding against the general DAG-CBOR encoder.
    rng = random.Random(1)
    for _ in range(5000):
        keys = random_keys(rng, rng.choice([0, 1, 2, 3, 4, 5, 8, 23, 24, 25, 40]))
        values = [random_cid(rng) for _ in keys]
        rights = [cid_for_cbor(rng.randbytes(4)) if rng.random() < 0.5 else None for _ in keys]
        left = cid_for_cbor(b"l") if rng.random() < 0.5 else None
        heads, entries, prev = [], [], b""
        for key, val, right in zip(keys, values, rights):
            heads.append(_entry_head(prev, key))
            p = common_prefix_length(prev, key)
            entries.append({"k": key[p:], "p": p, "t": right, "v": val})
            prev = key
        assert _encode_node(values, left, rights, heads) == encode({"e": entries, "l": left})


def assert_canonical_blocks(blocks):
    """Each block is its CID's content and cbrrr's encoding of what it holds."""
    for cid, data in blocks:
        assert cid_for_cbor(data) == cid
        assert encode(decode(data)) == data


# -- decoding untrusted nodes -----------------------------------------------


def node_block(entries, left=None):
    return encode_with_cid({"e": entries, "l": left})


def entry(p, k, t=None):
    return {"p": p, "k": k, "v": LEAF, "t": t}


def layer0_keys(n):
    """Layer-0 keys that share a long prefix."""
    return sorted(k.encode() for k in KEY_POOL if key_layer(k) == 0 and k.startswith("com."))[:n]


def test_valid_tree_verifies():
    tree, _ = big_tree(500)
    MST.load(stored(tree), tree.root_cid(), NodeCache()).verify()


@pytest.mark.parametrize("make", [
    # keys out of order
    lambda a, b, _: node_block([entry(0, b), entry(0, a)]),
    # prefix shorter than the keys share
    lambda a, b, _: node_block([entry(0, a), entry(0, b)]),
    # prefix longer than the previous key
    lambda a, b, _: node_block([entry(0, a), entry(len(a) + 1, b"x")]),
    # the same key twice
    lambda a, b, _: node_block([entry(0, a), entry(len(a), b"")]),
    # a layer-0 key with a subtree
    lambda a, b, sub: node_block([entry(0, a, sub)]),
    # an empty root over a subtree (not trimmed)
    lambda a, b, sub: node_block([], sub),
    # extra field
    lambda a, b, _: encode_with_cid({"e": [entry(0, a)], "l": None, "x": 1}),
    # not a map
    lambda a, b, _: encode_with_cid([]),
])
def test_invalid_nodes(make):
    a, b = layer0_keys(2)
    sub_cid, sub = node_block([entry(0, a)])
    cid, data = make(a, b, sub_cid)
    source = MemoryBlockSource({cid: data, sub_cid: sub})
    with pytest.raises(InvalidMSTNode):
        list(MST.load(source, cid, NodeCache()).walk())


def test_key_on_the_wrong_layer():
    first, second = sorted(k.encode() for k in KEY_POOL if key_layer(k) == 1)[:2]
    # A layer-1 root whose layer-0 subtree holds a layer-1 key.
    sub_cid, sub = node_block([entry(0, second)])
    root_cid, root = node_block([entry(0, first, sub_cid)])
    tree = MST.load(MemoryBlockSource({root_cid: root, sub_cid: sub}), root_cid, NodeCache())
    assert tree.layer == 1
    with pytest.raises(InvalidMSTNode):
        list(tree.walk())


def test_keys_out_of_order_across_nodes():
    high = next(k.encode() for k in sorted(KEY_POOL) if key_layer(k) == 1)
    below = [k.encode() for k in sorted(KEY_POOL) if key_layer(k) == 0 and k.encode() < high]
    # Put a key that sorts before ``high`` in the subtree to its right.
    sub_cid, sub = node_block([entry(0, below[0])])
    root_cid, root = node_block([entry(0, high, sub_cid)])
    tree = MST.load(MemoryBlockSource({root_cid: root, sub_cid: sub}), root_cid, NodeCache())
    with pytest.raises(InvalidMSTNode):
        tree.verify()


# -- properties -------------------------------------------------------------

key_sets = st.lists(st.sampled_from(KEY_POOL), unique=True, max_size=60)
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(keys=key_sets, data=st.data())
def test_root_is_independent_of_history(keys, data):
    final = {k: value(i) for i, k in enumerate(keys)}
    expected = build(sorted(final.items())).root_cid()

    # Random order, with detours: extra keys added then deleted, values updated.
    extra = data.draw(st.lists(st.sampled_from(KEY_POOL), unique=True, max_size=15))
    extra = [k for k in extra if k not in final]
    order = data.draw(st.permutations(list(final) + extra))
    tree = MST.empty(MemoryBlockSource())
    for key in order:
        tree = tree.add(key, VALUES[3] if key in extra else VALUES[2])
    for key in data.draw(st.permutations(list(final) + extra)):
        if key in extra:
            tree = tree.delete(key)
        elif final[key] != VALUES[2]:
            tree = tree.update(key, final[key])
    assert tree.root_cid() == expected
    assert list(tree.walk()) == sorted(final.items())


@fast
@given(keys=key_sets, start=st.sampled_from(KEY_POOL + ["", "a", "zzzz"]),
       limit=st.none() | st.integers(0, 70), reverse=st.booleans())
def test_list_order_and_bounds(keys, start, limit, reverse):
    final = {k: value(i) for i, k in enumerate(keys)}
    tree = MST.load(stored(build(final.items())), build(final.items()).root_cid(), NodeCache())
    expected = sorted(final.items(), reverse=reverse)
    assert list(tree.walk()) == sorted(final.items())
    assert list(tree.list(reverse=reverse)) == expected
    if reverse:
        expected = [kv for kv in expected if kv[0] <= start]
    else:
        expected = [kv for kv in expected if kv[0] >= start]
    assert list(tree.list(start, limit, reverse)) == expected[:limit]


@fast
@given(keys=key_sets, data=st.data())
def test_commit_accounting_and_proofs(keys, data):
    old = {k: value(i) for i, k in enumerate(keys)}
    before = build(old.items())
    source, root = stored(before), before.root_cid()
    old_nodes = set(source)

    touched = data.draw(st.lists(st.sampled_from(KEY_POOL), unique=True, min_size=1, max_size=8))
    ops, inverse, new = [], [], dict(old)
    for key in touched:
        if key not in old:
            ops.append(("create", key, VALUES[1]))
            inverse.append(("create", key, VALUES[1], None))
            new[key] = VALUES[1]
        elif data.draw(st.booleans()):
            ops.append(("update", key, VALUES[3]))
            inverse.append(("update", key, VALUES[3], old[key]))
            new[key] = VALUES[3]
        else:
            ops.append(("delete", key, None))
            inverse.append(("delete", key, None, old[key]))
            del new[key]

    diff = apply_ops(source, root, ops, NodeCache())
    after = build(new.items())
    assert diff.root == after.root_cid()
    assert diff.prevs == [prev for _, _, _, prev in inverse]

    new_nodes = set(after.node_cids())
    assert diff.removed <= old_nodes
    assert not diff.new_blocks.keys() & old_nodes
    assert (old_nodes - diff.removed) | diff.new_blocks.keys() == new_nodes
    assert all(cid_for_cbor(data) == cid for cid, data in diff.new_blocks.items())
    assert diff.proof <= new_nodes

    assert_canonical_blocks(diff.new_blocks.items())

    # A relay holding only the commit's blocks can undo it.
    emitted = MemoryBlockSource({**diff.new_blocks, **diff.proof_blocks})
    assert invert_ops(emitted, diff.root, inverse) == root


def random_commit(rng, keys, present):
    """Up to 6 operations, a key possibly several times (added, then deleted...)."""
    ops, state = [], dict(present)
    for _ in range(rng.randint(1, 6)):
        key = rng.choice(keys)
        if key not in state:
            ops.append(("create", key, value(rng.randrange(4))))
            state[key] = ops[-1][2]
        elif rng.random() < 0.5:
            ops.append(("update", key, VALUES[(VALUES.index(state[key]) + 1) % 4]))
            state[key] = ops[-1][2]
        else:
            ops.append(("delete", key, None))
            del state[key]
    return ops, state


@pytest.mark.parametrize("seed", range(6))
def test_chains_of_commits_through_one_cache(seed):
    # How the transactor writes: each commit from the last one's root, nodes
    # coming from a shared cache (with what earlier encodings memoized).
    rng = random.Random(seed)
    keys = rng.sample(KEY_POOL, 80)
    cache = NodeCache()
    source = MemoryBlockSource()
    root, present, stored_nodes = None, {}, set()
    for _ in range(60):
        ops, after = random_commit(rng, keys, present)
        diff = apply_ops(source, root, ops, cache)
        expected = build(sorted(after.items()), cache=NodeCache())
        assert diff.root == expected.root_cid()
        new_nodes = set(expected.node_cids())
        # Exact accounting, also when an operation undoes another.
        assert diff.removed <= stored_nodes and not diff.new_blocks.keys() & stored_nodes
        assert (stored_nodes - diff.removed) | diff.new_blocks.keys() == new_nodes
        assert_canonical_blocks(diff.new_blocks.items())
        source.update(diff.new_blocks)
        root, present, stored_nodes = diff.root, after, new_nodes


def test_commit_that_rebuilds_part_of_the_tree():
    tree, _ = big_tree(300)
    high = next(k for k in EXAMPLE_KEYS if key_layer(k) >= 3)
    # The split that adding ``high`` made is undone by deleting it; only the
    # path to the other key changes.
    ops = [("create", high, LEAF), ("create", "com.example.other/1", LEAF), ("delete", high, None)]
    diff = apply_ops(stored(tree), tree.root_cid(), ops, NodeCache())
    after = tree.add("com.example.other/1", LEAF)
    assert diff.root == after.root_cid()
    old_nodes, new_nodes = set(tree.node_cids()), set(after.node_cids())
    assert diff.new_blocks.keys() == new_nodes - old_nodes
    assert diff.removed == old_nodes - new_nodes
    assert diff.new_blocks
