//! The RFC 6962 / RFC 9162 Merkle tree: hashing, the compact range used to append, proofs
//! and their verification. Pure functions over leaf hashes; no storage here.
//!
//! - leaf hash `SHA-256(0x00 ‖ entry)`, node hash `SHA-256(0x01 ‖ left ‖ right)`;
//! - the tree of `n` leaves splits at the largest power of two smaller than `n`;
//! - the root of the empty tree is `SHA-256("")`.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof could not be built or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The sizes or index do not describe a valid proof request.
    #[error("invalid proof request: {0}")]
    BadRequest(String),
    /// The proof does not lead to the expected root.
    #[error("the proof does not verify")]
    Mismatch,
}

/// `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of `leaves` (already leaf-hashed).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a tree: the roots of its perfect subtrees, largest first. Appending
/// is `O(log n)` and the root is always at hand, so the writer never re-reads old leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    nodes: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_| {});
    }

    /// Appends one leaf hash and hands `completed` every perfect subtree above the leaf
    /// that the leaf completes (height ≥ 1, lowest first): what [`NodeStore`] keeps.
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(Node)) {
        let mut node = (0u32, leaf);
        let size = self.size + 1;
        while let Some(&(h, left)) = self.nodes.last() {
            if h != node.0 {
                break;
            }
            self.nodes.pop();
            node = (h + 1, node_hash(&left, &node.1));
            completed(Node {
                height: node.0,
                index: (size >> node.0) - 1,
                hash: node.1,
            });
        }
        self.nodes.push(node);
        self.size = size;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }

    /// Serialises the range: 8-byte big-endian size, then each node's 32-byte hash
    /// (heights follow from the size's bits).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 * self.nodes.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for (_, h) in &self.nodes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Reads what [`CompactRange::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let size = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let heights: Vec<u32> = (0..64u32).rev().filter(|i| size >> i & 1 == 1).collect();
        let rest = &b[8..];
        if rest.len() != 32 * heights.len() {
            return None;
        }
        let nodes = heights
            .into_iter()
            .zip(rest.chunks_exact(32))
            .map(|(h, c)| (h, c.try_into().expect("32 bytes")))
            .collect();
        Some(Self { size, nodes })
    }
}

/// The inclusion proof of leaf `index` in the tree of `leaves` (RFC 6962 §2.1.1 PATH).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    if index >= leaves.len() {
        return Err(ProofError::BadRequest(format!(
            "leaf {index} is not in a tree of {} leaves",
            leaves.len()
        )));
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// The consistency proof between the first `old_size` leaves and all of `leaves`
/// (RFC 6962 §2.1.2 PROOF).
pub fn consistency_proof(old_size: usize, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    if old_size == 0 || old_size > leaves.len() {
        return Err(ProofError::BadRequest(format!(
            "from must be in 1..={}, not {old_size}",
            leaves.len()
        )));
    }
    let mut out = Vec::new();
    subproof(old_size, leaves, true, &mut out);
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// The root of a perfect subtree: `height` levels above the leaves, the `index`-th one
/// from the left, covering leaves `index·2^height .. (index+1)·2^height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Levels above the leaves (0: a leaf hash).
    pub height: u32,
    /// Position among the subtrees of that height.
    pub index: u64,
    /// Its Merkle tree hash.
    pub hash: Hash,
}

/// Where the perfect subtrees' roots come from: with them stored, a proof in a tree of
/// `n` leaves reads `O(log² n)` hashes instead of every leaf.
pub trait NodeStore {
    /// Why a node could not be read.
    type Error: From<ProofError>;
    /// The root of the perfect subtree (`height`, `index`); height 0 is leaf `index`.
    fn node(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// Leaves in memory are a [`NodeStore`] (computing each subtree: for tests and small trees).
impl NodeStore for &[Hash] {
    type Error = ProofError;
    fn node(&mut self, height: u32, index: u64) -> Result<Hash, ProofError> {
        let lo = usize::try_from(index << height).ok();
        let hi = lo.and_then(|lo| lo.checked_add(1 << height));
        match (lo, hi) {
            (Some(lo), Some(hi)) if hi <= self.len() => Ok(root(&self[lo..hi])),
            _ => Err(ProofError::BadRequest(format!(
                "no subtree ({height}, {index}) in a tree of {} leaves",
                self.len()
            ))),
        }
    }
}

/// The Merkle tree hash of the `n ≥ 1` leaves from `lo`, where `lo` is a multiple of the
/// smallest power of two ≥ `n` (true of every range RFC 6962's recursion visits).
fn range_root<S: NodeStore>(store: &mut S, lo: u64, n: u64) -> Result<Hash, S::Error> {
    if n.is_power_of_two() {
        let height = n.trailing_zeros();
        return store.node(height, lo >> height);
    }
    let k = split(n as usize) as u64;
    let left = range_root(store, lo, k)?;
    let right = range_root(store, lo + k, n - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves of `store` (the empty root for 0).
pub fn root_from<S: NodeStore>(store: &mut S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_root(store, 0, size)
}

/// [`inclusion_proof`] of leaf `index` in the tree of the first `size` leaves of `store`.
pub fn inclusion_proof_from<S: NodeStore>(
    store: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if index >= size {
        return Err(ProofError::BadRequest(format!(
            "leaf {index} is not in a tree of {size} leaves"
        ))
        .into());
    }
    let mut out = Vec::new();
    let (mut m, mut lo, mut n) = (index, 0u64, size);
    // PATH(m, D[lo..lo+n]) top-down; RFC 6962 lists the siblings bottom-up.
    while n > 1 {
        let k = split(n as usize) as u64;
        if m < k {
            out.push(range_root(store, lo + k, n - k)?);
            n = k;
        } else {
            out.push(range_root(store, lo, k)?);
            (m, lo, n) = (m - k, lo + k, n - k);
        }
    }
    out.reverse();
    Ok(out)
}

/// [`consistency_proof`] between the first `old_size` and the first `size` leaves of
/// `store`.
pub fn consistency_proof_from<S: NodeStore>(
    store: &mut S,
    old_size: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if old_size == 0 || old_size > size {
        return Err(
            ProofError::BadRequest(format!("from must be in 1..={size}, not {old_size}")).into(),
        );
    }
    let mut out = Vec::new();
    let (mut m, mut lo, mut n, mut complete) = (old_size, 0u64, size, true);
    // SUBPROOF(m, D[lo..lo+n], complete) top-down; the proof lists it bottom-up.
    while m != n {
        let k = split(n as usize) as u64;
        if m <= k {
            out.push(range_root(store, lo + k, n - k)?);
            n = k;
        } else {
            out.push(range_root(store, lo, k)?);
            (m, lo, n, complete) = (m - k, lo + k, n - k, false);
        }
    }
    if !complete {
        out.push(range_root(store, lo, n)?);
    }
    out.reverse();
    Ok(out)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    expected_root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::BadRequest(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Mismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode == 0 && r == *expected_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Verifies a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::BadRequest(format!(
            "from {old_size} is larger than to {new_size}"
        )));
    }
    if old_size == new_size {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Mismatch);
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::Mismatch);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if fr == *old_root && sr == *new_root && snode == 0 {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    //! Test vectors from RFC 6962's reference implementation, as published with
    //! certificate-transparency-go (`merkle/testonly`) and used by C2SP tlog implementations.
    use super::*;

    const INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn many_leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// The nodes a [`CompactRange`] reports as it grows, as a [`NodeStore`] that counts reads.
    struct Recorded {
        leaves: Vec<Hash>,
        nodes: std::collections::HashMap<(u32, u64), Hash>,
        reads: usize,
    }

    impl NodeStore for Recorded {
        type Error = ProofError;
        fn node(&mut self, height: u32, index: u64) -> Result<Hash, ProofError> {
            self.reads += 1;
            if height == 0 {
                return Ok(self.leaves[index as usize]);
            }
            self.nodes
                .get(&(height, index))
                .copied()
                .ok_or_else(|| ProofError::BadRequest(format!("({height}, {index}) missing")))
        }
    }

    fn recorded(n: usize) -> Recorded {
        let leaves = many_leaves(n);
        let mut nodes = std::collections::HashMap::new();
        let mut range = CompactRange::new();
        for l in &leaves {
            range.push_with(*l, |node| {
                assert!(nodes.insert((node.height, node.index), node.hash).is_none());
            });
        }
        Recorded {
            leaves,
            nodes,
            reads: 0,
        }
    }

    #[test]
    fn the_nodes_a_growing_range_reports_are_the_perfect_subtrees_of_the_leaves() {
        let r = recorded(100);
        // 50 + 25 + 12 + 6 + 3 + 1 perfect subtrees of height ≥ 1 in 100 leaves.
        assert_eq!(r.nodes.len(), 97);
        let mut slice = r.leaves.as_slice();
        for (&(height, index), hash) in &r.nodes {
            assert_eq!(
                slice.node(height, index).unwrap(),
                *hash,
                "({height}, {index})"
            );
        }
    }

    #[test]
    fn proofs_from_stored_nodes_equal_proofs_from_all_leaves_for_every_size_up_to_70() {
        let all = recorded(70);
        for n in 1..=70usize {
            let leaves = &all.leaves[..n];
            let mut store = Recorded {
                leaves: all.leaves.clone(),
                nodes: all.nodes.clone(),
                reads: 0,
            };
            assert_eq!(root_from(&mut store, n as u64).unwrap(), root(leaves));
            for i in 0..n {
                assert_eq!(
                    inclusion_proof_from(&mut store, i as u64, n as u64).unwrap(),
                    inclusion_proof(i, leaves).unwrap(),
                    "leaf {i} of {n}"
                );
            }
            for m in 1..=n {
                assert_eq!(
                    consistency_proof_from(&mut store, m as u64, n as u64).unwrap(),
                    consistency_proof(m, leaves).unwrap(),
                    "{m} to {n}"
                );
            }
        }
        let mut store = recorded(8);
        assert!(inclusion_proof_from(&mut store, 8, 8).is_err());
        assert!(consistency_proof_from(&mut store, 0, 8).is_err());
        assert!(consistency_proof_from(&mut store, 9, 8).is_err());
        assert_eq!(root_from(&mut store, 0).unwrap(), empty_root());
    }

    #[test]
    fn a_proof_from_stored_nodes_reads_a_few_hundred_nodes_not_every_leaf() {
        let n = 100_003u64;
        let mut store = recorded(n as usize);
        let proof = inclusion_proof_from(&mut store, 77_777, n).unwrap();
        assert!(verify_inclusion(
            77_777,
            n,
            &store.leaves[77_777],
            &proof,
            &root(&store.leaves)
        )
        .is_ok());
        // log2(n) ≈ 17: at most 17 siblings, each made of at most 17 perfect subtrees.
        assert!(store.reads <= 17 * 17, "{} reads", store.reads);
        store.reads = 0;
        consistency_proof_from(&mut store, 65_537, n).unwrap();
        assert!(store.reads <= 17 * 17, "{} reads", store.reads);
    }

    fn leaves() -> Vec<Hash> {
        INPUTS
            .iter()
            .map(|i| leaf_hash(&hex::decode(i).unwrap()))
            .collect()
    }

    /// (leaf index, tree size, proof)
    fn inclusion_vectors() -> Vec<(usize, usize, Vec<Hash>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                5,
                8,
                vec![
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                3,
                vec![h(
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                )],
            ),
            (
                1,
                5,
                vec![
                    h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    /// (old size, new size, proof)
    fn consistency_vectors() -> Vec<(usize, usize, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
                ],
            ),
            (
                6,
                8,
                vec![
                    h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                    h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                    h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                ],
            ),
            (
                2,
                5,
                vec![
                    h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                    h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                ],
            ),
        ]
    }

    #[test]
    fn roots_match_the_rfc6962_reference_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves();
        let mut range = CompactRange::new();
        for (i, expected) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root(&l[..=i])), *expected, "size {}", i + 1);
            range.push(l[i]);
            assert_eq!(
                hex::encode(range.root()),
                *expected,
                "compact size {}",
                i + 1
            );
            let back = CompactRange::from_bytes(&range.to_bytes()).unwrap();
            assert_eq!(back, range);
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let l = leaves();
        for (index, size, proof) in inclusion_vectors() {
            let got = inclusion_proof(index, &l[..size]).unwrap();
            assert_eq!(got, proof, "leaf {index} of {size}");
            let r = h(ROOTS[size - 1]);
            verify_inclusion(index as u64, size as u64, &l[index], &proof, &r).unwrap();
            let wrong = l[(index + 1) % 8];
            assert!(verify_inclusion(index as u64, size as u64, &wrong, &proof, &r).is_err());
        }
        assert!(inclusion_proof(8, &l).is_err());
    }

    #[test]
    fn consistency_proofs_match_the_reference_vectors_and_verify() {
        let l = leaves();
        for (old, new, proof) in consistency_vectors() {
            let got = consistency_proof(old, &l[..new]).unwrap();
            assert_eq!(got, proof, "{old} -> {new}");
            let (r1, r2) = (h(ROOTS[old - 1]), h(ROOTS[new - 1]));
            verify_consistency(old as u64, new as u64, &r1, &r2, &proof).unwrap();
            if old != new {
                assert!(verify_consistency(old as u64, new as u64, &r2, &r1, &proof).is_err());
            }
        }
    }

    #[test]
    fn every_proof_of_every_small_tree_verifies() {
        let l: Vec<Hash> = (0..40u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=l.len() {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &l[..n]).unwrap();
                verify_inclusion(i as u64, n as u64, &l[i], &p, &r).unwrap();
            }
            for m in 1..=n {
                let p = consistency_proof(m, &l[..n]).unwrap();
                verify_consistency(m as u64, n as u64, &root(&l[..m]), &r, &p).unwrap();
            }
        }
    }
}
