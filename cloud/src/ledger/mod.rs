//! The transaction ledger: append-only, tamper-evident in the way Certificate
//! Transparency is (RFC 6962 / RFC 9162), verifiable by anyone with standard tools
//! (`docs/ledger.md`).
//!
//! # Invariants
//!
//! 1. **What is stored.** `ledger_entries (idx, entry, envelope, leaf_hash)`: `entry` is
//!    the canonical JSON of an [`Entry`] and the Merkle leaf input; `envelope` is the
//!    device's DSSE envelope **byte for byte** as it arrived (decision entries only; the
//!    entry commits to it by `envelope_sha256`). `leaf_hash` is a cache for proofs and is
//!    never trusted by [`verify`].
//! 2. **Append-only.** Rows are only ever inserted, at `idx = tree size`, by [`Appender`]
//!    inside the caller's SQLite transaction. A transaction's decision is one entry; what
//!    happens to it later (`confirmed`, `cancelled`, `delivered`) is a further entry. No
//!    code path updates or deletes a row.
//! 3. **Chained and indexed.** Each entry carries its own `index` and `prev`, the hex leaf
//!    hash of the entry before it, so a deleted, inserted or reordered row is named exactly,
//!    and an edited row is named by its successor's `prev`.
//! 4. **Signed checkpoints.** Every append batch ends with a checkpoint (tree size, root,
//!    time) signed by the cloud's key as a DSSE envelope of [`CHECKPOINT_PAYLOAD_TYPE`], in
//!    the same SQLite transaction as the entries, so every entry is covered by a checkpoint.
//! 5. **Dedup key.** The ledger itself has none: the `orders (tx_id)` table decides whether
//!    a transaction is new; an identical re-send appends nothing.
//!
//! # Merkle tree
//!
//! See [`merkle`]: leaf `SHA-256(0x00 ‖ entry)`, node `SHA-256(0x01 ‖ left ‖ right)`.
//! Inclusion and consistency proofs follow RFC 6962 §2.1.

pub mod bench;
pub mod merkle;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::VerifyingKey;
use merkle::{CompactRange, Hash};
use rollcall_shared::dsse::{pae, Envelope, KeyPair, PublicKey, TRANSACTION_PAYLOAD_TYPE};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

/// Payload type of a signed checkpoint.
pub const CHECKPOINT_PAYLOAD_TYPE: &str = "application/vnd.rollcall.checkpoint.v1+json";

/// Rows read per round by [`verify`].
const VERIFY_CHUNK: usize = 2048;

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// SQLite said no.
    #[error("ledger store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The ledger's bookkeeping row does not decode (the store was damaged).
    #[error("ledger state is corrupt: {0}")]
    Corrupt(String),
    /// A proof was asked for sizes or an index the ledger does not have.
    #[error(transparent)]
    Proof(#[from] merkle::ProofError),
    /// Writing the export failed.
    #[error("export to {path}: {source}")]
    Export {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The cloud's decision on a device's transaction; carries the device's envelope.
    Decision,
    /// A later status of an already recorded transaction.
    Status,
}

/// One ledger entry: its canonical JSON (field order as declared) is the Merkle leaf input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the tree, from 0.
    pub index: u64,
    /// Hex leaf hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// Decision or later status.
    pub kind: EntryKind,
    /// The transaction.
    pub tx_id: String,
    /// Its device.
    pub device_id: String,
    /// Its member.
    pub member_id: String,
    /// `accepted`, `held_for_confirmation`, `rejected`, `cancelled`, `delivered`.
    pub status: String,
    /// Machine-readable reason (rejections, holds) or the staff's note (cancellations).
    pub reason: Option<String>,
    /// Cloud time, RFC 3339 with milliseconds.
    pub at: String,
    /// Hex SHA-256 of the device envelope stored beside the entry (decisions only).
    pub envelope_sha256: Option<String>,
}

/// An entry to append; the appender fills in `index` and `prev`.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// Decision or status.
    pub kind: EntryKind,
    /// The transaction.
    pub tx_id: &'a str,
    /// Its device.
    pub device_id: &'a str,
    /// Its member.
    pub member_id: &'a str,
    /// The status recorded.
    pub status: &'a str,
    /// Reason or note.
    pub reason: Option<&'a str>,
    /// When.
    pub at: DateTime<Utc>,
    /// The device's envelope, byte for byte (decisions).
    pub envelope: Option<&'a [u8]>,
}

/// The body of a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Version, 1.
    pub v: u32,
    /// Entries covered.
    pub tree_size: u64,
    /// Hex Merkle root of those entries.
    pub root: String,
    /// Cloud time of signing.
    pub at: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Appends entries inside the caller's SQLite transaction; [`Appender::finish`] writes the
/// signed checkpoint and the bookkeeping. Dropping it without `finish` is only safe if
/// the transaction is rolled back.
pub struct Appender {
    range: CompactRange,
    last: Hash,
    start: u64,
}

impl Appender {
    /// Reads the ledger's current size, right edge and last leaf.
    pub fn begin(tx: &Connection) -> Result<Self, LedgerError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = tx
            .prepare_cached("SELECT range, last_leaf FROM ledger_state WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (range, last) = match row {
            Some((r, l)) => (
                CompactRange::from_bytes(&r)
                    .ok_or_else(|| LedgerError::Corrupt("ledger_state.range".into()))?,
                l.try_into()
                    .map_err(|_| LedgerError::Corrupt("ledger_state.last_leaf".into()))?,
            ),
            None => (CompactRange::new(), [0u8; 32]),
        };
        let start = range.size();
        Ok(Self { range, last, start })
    }

    /// The index the next entry will get.
    pub fn next_index(&self) -> u64 {
        self.range.size()
    }

    /// Appends one entry; returns its index.
    pub fn push(&mut self, tx: &Connection, e: &NewEntry<'_>) -> Result<u64, LedgerError> {
        let index = self.range.size();
        let entry = Entry {
            index,
            prev: hex::encode(self.last),
            kind: e.kind,
            tx_id: e.tx_id.to_owned(),
            device_id: e.device_id.to_owned(),
            member_id: e.member_id.to_owned(),
            status: e.status.to_owned(),
            reason: e.reason.map(str::to_owned),
            at: rfc3339(e.at),
            envelope_sha256: e.envelope.map(sha256_hex),
        };
        let bytes = serde_json::to_vec(&entry).expect("entries serialise");
        let leaf = merkle::leaf_hash(&bytes);
        tx.prepare_cached(
            "INSERT INTO ledger_entries (idx, entry, envelope, leaf_hash) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![index as i64, bytes, e.envelope, leaf.as_slice()])?;
        push_leaf(tx, &mut self.range, leaf)?;
        self.last = leaf;
        Ok(index)
    }

    /// Signs and stores the checkpoint for the new size (if anything was appended).
    pub fn finish(
        self,
        tx: &Connection,
        key: &KeyPair,
        at: DateTime<Utc>,
    ) -> Result<Option<u64>, LedgerError> {
        if self.range.size() == self.start {
            return Ok(None);
        }
        let size = self.range.size();
        let root = self.range.root();
        let cp = Checkpoint {
            v: 1,
            tree_size: size,
            root: hex::encode(root),
            at: rfc3339(at),
        };
        let env = key.sign(
            CHECKPOINT_PAYLOAD_TYPE,
            &serde_json::to_vec(&cp).expect("checkpoints serialise"),
        );
        tx.prepare_cached(
            "INSERT INTO ledger_checkpoints (tree_size, root, at_ms, envelope) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            size as i64,
            root.as_slice(),
            at.timestamp_millis(),
            String::from_utf8(env.to_json()).expect("envelopes are JSON text")
        ])?;
        tx.prepare_cached(
            "INSERT INTO ledger_state (id, range, last_leaf) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET range = excluded.range, last_leaf = excluded.last_leaf",
        )?
        .execute(params![self.range.to_bytes(), self.last.as_slice()])?;
        Ok(Some(size))
    }
}

/// Appends `leaf` to `range` and stores the perfect subtrees it completes.
fn push_leaf(tx: &Connection, range: &mut CompactRange, leaf: Hash) -> Result<(), LedgerError> {
    let mut insert =
        tx.prepare_cached("INSERT INTO ledger_nodes (height, idx, hash) VALUES (?1, ?2, ?3)")?;
    let mut result = Ok(());
    range.push_with(leaf, |n| {
        if result.is_ok() {
            result = insert
                .execute(params![n.height, n.index as i64, n.hash.as_slice()])
                .map(drop);
        }
    });
    Ok(result?)
}

/// Fills `ledger_nodes` from the stored leaves (schema migration 11, for ledgers written
/// before the table existed). A damaged ledger (a missing or malformed entry, or leaves
/// that do not add up to the stored right edge) is not a reason to refuse to start: the
/// nodes up to the damage are stored, a warning is logged, proofs that need the rest
/// fail with "corrupt", and `ledger verify` names the damage.
pub fn backfill_nodes(tx: &Connection) -> Result<(), LedgerError> {
    let mut range = CompactRange::new();
    let mut damage = None;
    {
        let mut st = tx.prepare("SELECT idx, leaf_hash FROM ledger_entries ORDER BY idx")?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let idx: i64 = row.get(0)?;
            let leaf: Option<Hash> = row.get::<_, Vec<u8>>(1)?.try_into().ok();
            match leaf {
                Some(leaf) if idx as u64 == range.size() => push_leaf(tx, &mut range, leaf)?,
                _ => {
                    damage = Some(format!("entry {idx} (expected entry {})", range.size()));
                    break;
                }
            }
        }
    }
    let stored: Option<Vec<u8>> = tx
        .query_row("SELECT range FROM ledger_state WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    if damage.is_none() && stored.is_some_and(|b| b != range.to_bytes()) {
        damage = Some("the leaves do not add up to ledger_state.range".into());
    }
    match damage {
        Some(at) => tracing::warn!(
            %at,
            nodes_up_to = range.size(),
            "The ledger looks damaged; proofs beyond it will fail (run `rollcall-cloud ledger verify`)"
        ),
        None if range.size() == 0 => {}
        None => tracing::info!(entries = range.size(), "Stored the ledger's subtree roots"),
    }
    Ok(())
}

/// The stored perfect subtrees of the ledger as a [`merkle::NodeStore`].
struct StoredNodes<'c> {
    conn: &'c Connection,
}

/// A stored subtree root that is missing (written by a build from before migration 11
/// while a newer one had already migrated the store) is computed from its children, down
/// to the leaves if need be: slower, never wrong. Only a missing leaf is corruption.
impl merkle::NodeStore for StoredNodes<'_> {
    type Error = LedgerError;
    fn node(&mut self, height: u32, index: u64) -> Result<Hash, LedgerError> {
        let row: Option<Vec<u8>> = if height == 0 {
            self.conn
                .prepare_cached("SELECT leaf_hash FROM ledger_entries WHERE idx = ?1")?
                .query_row([index as i64], |r| r.get(0))
                .optional()?
        } else {
            self.conn
                .prepare_cached("SELECT hash FROM ledger_nodes WHERE height = ?1 AND idx = ?2")?
                .query_row(params![height, index as i64], |r| r.get(0))
                .optional()?
        };
        match row {
            Some(bytes) => bytes
                .try_into()
                .map_err(|_| LedgerError::Corrupt(format!("ledger node ({height}, {index})"))),
            None if height > 0 => {
                let left = self.node(height - 1, 2 * index)?;
                let right = self.node(height - 1, 2 * index + 1)?;
                Ok(merkle::node_hash(&left, &right))
            }
            None => Err(LedgerError::Corrupt(format!("no ledger entry {index}"))),
        }
    }
}

/// A checkpoint as the API serves it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointView {
    /// Entries covered.
    pub tree_size: u64,
    /// Hex root.
    pub root: String,
    /// When it was signed.
    pub at: String,
    /// The signed checkpoint (DSSE envelope by the cloud key).
    pub envelope: serde_json::Value,
}

fn checkpoint_view(size: i64, root: Vec<u8>, at_ms: i64, env: String) -> CheckpointView {
    CheckpointView {
        tree_size: size as u64,
        root: hex::encode(root),
        at: rfc3339(DateTime::from_timestamp_millis(at_ms).unwrap_or_default()),
        envelope: serde_json::from_str(&env).unwrap_or(serde_json::Value::Null),
    }
}

/// The newest checkpoint, if the ledger has any entries.
pub fn latest_checkpoint(conn: &Connection) -> Result<Option<CheckpointView>, LedgerError> {
    Ok(conn
        .query_row(
            "SELECT tree_size, root, at_ms, envelope FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
            [],
            |r| Ok(checkpoint_view(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?)
}

/// One entry with its inclusion proof in the tree of the latest checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EntryView {
    /// The entry's index.
    pub index: u64,
    /// The entry (its canonical JSON, parsed).
    pub entry: serde_json::Value,
    /// Standard base64 of the exact entry bytes (the leaf input).
    pub entry_b64: String,
    /// The device's envelope, byte for byte as standard base64 (decisions).
    pub envelope_b64: Option<String>,
    /// Hex leaf hash.
    pub leaf_hash: String,
    /// The checkpoint the proof leads to.
    pub checkpoint: CheckpointView,
    /// Hex hashes of the inclusion proof (RFC 6962 PATH).
    pub inclusion_proof: Vec<String>,
}

/// Entry `index` with its inclusion proof; `None` if there is no such entry.
pub fn entry_with_proof(conn: &Connection, index: u64) -> Result<Option<EntryView>, LedgerError> {
    let Some(cp) = latest_checkpoint(conn)? else {
        return Ok(None);
    };
    if index >= cp.tree_size {
        return Ok(None);
    }
    let row: Option<(Vec<u8>, Option<Vec<u8>>)> = conn
        .query_row(
            "SELECT entry, envelope FROM ledger_entries WHERE idx = ?1",
            [index as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((entry, envelope)) = row else {
        return Ok(None);
    };
    let proof = merkle::inclusion_proof_from(&mut StoredNodes { conn }, index, cp.tree_size)?;
    Ok(Some(EntryView {
        index,
        entry: serde_json::from_slice(&entry).unwrap_or(serde_json::Value::Null),
        entry_b64: B64.encode(&entry),
        envelope_b64: envelope.map(|e| B64.encode(e)),
        leaf_hash: hex::encode(merkle::leaf_hash(&entry)),
        checkpoint: cp,
        inclusion_proof: proof.iter().map(hex::encode).collect(),
    }))
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyView {
    /// Older size.
    pub from: u64,
    /// Newer size.
    pub to: u64,
    /// Hex root at `from`.
    pub from_root: String,
    /// Hex root at `to`.
    pub to_root: String,
    /// Hex hashes of the proof (RFC 6962 PROOF).
    pub proof: Vec<String>,
}

/// The consistency proof from `from` to `to` entries (`1 <= from <= to <= size`).
pub fn consistency(conn: &Connection, from: u64, to: u64) -> Result<ConsistencyView, LedgerError> {
    let size = latest_checkpoint(conn)?.map_or(0, |c| c.tree_size);
    if from == 0 || from > to || to > size {
        return Err(merkle::ProofError::BadRequest(format!(
            "need 1 <= from <= to <= {size}; got from={from}, to={to}"
        ))
        .into());
    }
    let nodes = &mut StoredNodes { conn };
    let proof = merkle::consistency_proof_from(nodes, from, to)?;
    Ok(ConsistencyView {
        from,
        to,
        from_root: hex::encode(merkle::root_from(nodes, from)?),
        to_root: hex::encode(merkle::root_from(nodes, to)?),
        proof: proof.iter().map(hex::encode).collect(),
    })
}

/// What `ledger verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Everything checked out.
    pub ok: bool,
    /// Entries checked (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Hex root of all entries (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Checkpoints whose signature and root were checked (when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<u64>,
    /// The first entry found altered, removed or out of place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_index: Option<u64>,
    /// What is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl VerifyReport {
    fn bad(index: u64, problem: String) -> Self {
        Self {
            ok: false,
            entries: None,
            root: None,
            checkpoints: None,
            first_bad_index: Some(index),
            problem: Some(problem),
        }
    }
}

/// The two fields of a signed transaction an entry must agree with (the rest of it was
/// validated when it was decided; here only the signature and the names matter).
#[derive(Deserialize)]
struct SignedNames<'a> {
    #[serde(borrow)]
    tx_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    device_id: std::borrow::Cow<'a, str>,
}

/// Ledger rows as read for verification: (idx, entry, envelope).
type Row = (i64, Vec<u8>, Option<Vec<u8>>);

/// A device's key, parsed once per verify run.
type DeviceKeys = HashMap<String, (PublicKey, VerifyingKey)>;

/// One device signature, checked later in a batch.
struct SigJob {
    key: VerifyingKey,
    msg: Vec<u8>,
    sig: ed25519_dalek::Signature,
}

/// Signatures checked per batch (ed25519 batch verification: about 2.4x faster than one by
/// one at this size on the reference machine).
const SIG_BATCH: usize = 256;

/// Checks one row on its own: returns (leaf hash, prev hash, the device signature still
/// to check) or the problem.
fn check_row(
    pos: u64,
    entry: &[u8],
    envelope: Option<&[u8]>,
    keys: &DeviceKeys,
) -> Result<(Hash, Hash, Option<SigJob>), String> {
    let e: Entry =
        serde_json::from_slice(entry).map_err(|err| format!("entry does not parse: {err}"))?;
    if e.index != pos {
        return Err(format!(
            "the entry at position {pos} says it is entry {}: entries were deleted, inserted or reordered",
            e.index
        ));
    }
    let prev: Hash = hex::decode(&e.prev)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| "prev is not a hex SHA-256".to_string())?;
    let job = match (e.kind, envelope) {
        (EntryKind::Decision, Some(env_bytes)) => {
            if e.envelope_sha256.as_deref() != Some(sha256_hex(env_bytes).as_str()) {
                return Err(
                    "the stored device envelope does not match the entry's envelope_sha256".into(),
                );
            }
            let (_, key) = keys
                .get(&e.device_id)
                .ok_or_else(|| format!("device {} is not registered", e.device_id))?;
            let env =
                Envelope::from_json(env_bytes).map_err(|err| format!("device envelope: {err}"))?;
            if env.payload_type != TRANSACTION_PAYLOAD_TYPE {
                return Err(format!(
                    "device envelope: payload type {:?}",
                    env.payload_type
                ));
            }
            let body = env
                .payload_unverified()
                .map_err(|err| format!("device envelope: {err}"))?;
            let t: SignedNames<'_> = serde_json::from_slice(&body)
                .map_err(|err| format!("transaction does not parse: {err}"))?;
            if t.tx_id != e.tx_id || t.device_id != e.device_id {
                return Err(
                    "the entry's tx_id or device_id differs from the signed transaction".into(),
                );
            }
            let sig = env
                .signatures
                .iter()
                .find_map(|s| {
                    B64.decode(&s.sig)
                        .ok()
                        .and_then(|raw| ed25519_dalek::Signature::from_slice(&raw).ok())
                })
                .ok_or_else(|| "device signature: none decodes".to_string())?;
            Some(SigJob {
                key: *key,
                msg: pae(TRANSACTION_PAYLOAD_TYPE, &body),
                sig,
            })
        }
        (EntryKind::Decision, None) => {
            return Err("decision entry without its device envelope".into())
        }
        (EntryKind::Status, Some(_)) => return Err("status entry with an envelope".into()),
        (EntryKind::Status, None) => {
            if e.envelope_sha256.is_some() {
                return Err("status entry names an envelope".into());
            }
            None
        }
    };
    Ok((merkle::leaf_hash(entry), prev, job))
}

/// Checks a chunk of rows starting at position `base`: each row on its own, then the
/// device signatures in batches; a batch that fails is re-checked envelope by envelope
/// (with full DSSE semantics: any of its signatures may verify) to name the bad row.
fn check_chunk(base: u64, rows: &[Row], keys: &DeviceKeys) -> Vec<Result<(Hash, Hash), String>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut jobs: Vec<(usize, SigJob)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let pos = base + i as u64;
        if r.0 != pos as i64 {
            out.push(Err(format!(
                "entry {pos} is missing or out of place: the row at this position has index {}",
                r.0
            )));
            continue;
        }
        match check_row(pos, &r.1, r.2.as_deref(), keys) {
            Ok((leaf, prev, job)) => {
                if let Some(j) = job {
                    jobs.push((i, j));
                }
                out.push(Ok((leaf, prev)));
            }
            Err(p) => out.push(Err(p)),
        }
    }
    for batch in jobs.chunks(SIG_BATCH) {
        let msgs: Vec<&[u8]> = batch.iter().map(|(_, j)| j.msg.as_slice()).collect();
        let sigs: Vec<ed25519_dalek::Signature> = batch.iter().map(|(_, j)| j.sig).collect();
        let vks: Vec<VerifyingKey> = batch.iter().map(|(_, j)| j.key).collect();
        if ed25519_dalek::verify_batch(&msgs, &sigs, &vks).is_ok() {
            continue;
        }
        for (i, _) in batch {
            let r = &rows[*i];
            let e: Option<Entry> = serde_json::from_slice(&r.1).ok();
            let key = e.as_ref().and_then(|e| keys.get(&e.device_id));
            let env = r.2.as_deref().map(Envelope::from_json);
            let verified = match (key, env) {
                (Some((pk, _)), Some(Ok(env))) => env.verify(TRANSACTION_PAYLOAD_TYPE, pk).is_ok(),
                _ => false,
            };
            if !verified {
                out[*i] = Err(
                    "device signature: no signature verifies under the device's registered key"
                        .into(),
                );
            }
        }
    }
    out
}

fn parse_checkpoint(env_json: &str, cloud: &PublicKey) -> Result<Checkpoint, String> {
    let env = Envelope::from_json(env_json.as_bytes()).map_err(|e| e.to_string())?;
    let body = env
        .verify(CHECKPOINT_PAYLOAD_TYPE, cloud)
        .map_err(|e| format!("signature: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("body: {e}"))
}

/// Recomputes the tree from the stored entries and checks every device signature, the
/// chain, and every checkpoint's signature (cloud key) and root. `progress(done, total)`
/// is called as rows are checked. Signature checks run on `threads` threads.
pub fn verify(
    conn: &Connection,
    cloud: &PublicKey,
    threads: usize,
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<VerifyReport, LedgerError> {
    let mut keys: DeviceKeys = HashMap::new();
    {
        let mut st = conn.prepare("SELECT id, public_key FROM devices")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for r in rows {
            let (id, k) = r?;
            if let Ok(k) = PublicKey::from_bytes(&k) {
                if let Ok(vk) = VerifyingKey::from_bytes(k.as_bytes()) {
                    keys.insert(id, (k, vk));
                }
            }
        }
    }
    // Checkpoints, oldest first, each signature checked.
    let mut checkpoints: Vec<(u64, Hash)> = Vec::new();
    {
        let mut st =
            conn.prepare("SELECT tree_size, envelope FROM ledger_checkpoints ORDER BY tree_size")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        for r in rows {
            let (size, env) = r?;
            let cp = match parse_checkpoint(&env, cloud) {
                Ok(cp) => cp,
                Err(p) => {
                    return Ok(VerifyReport::bad(
                        (size as u64).saturating_sub(1),
                        format!("checkpoint at size {size}: {p}"),
                    ))
                }
            };
            let root = hex::decode(&cp.root).ok().and_then(|v| v.try_into().ok());
            match root {
                Some(root) if cp.tree_size == size as u64 => checkpoints.push((cp.tree_size, root)),
                _ => {
                    return Ok(VerifyReport::bad(
                        (size as u64).saturating_sub(1),
                        format!("checkpoint row at size {size} does not match its signed body"),
                    ))
                }
            }
        }
    }
    let total: u64 = conn.query_row("SELECT count(*) FROM ledger_entries", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    // A pipeline, so that no core idles: this thread reads chunks of rows (the connection
    // stays on it), `threads` checkers verify them in any order, and one assembler puts
    // their results back in order and runs the chain, the tree and the checkpoints.
    type Rows = Vec<Row>;
    type Checked = Vec<Result<(Hash, Hash), String>>;
    let stop = &std::sync::atomic::AtomicBool::new(false);
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<(u64, Rows)>(threads.max(1) * 2);
    let chunk_rx = std::sync::Mutex::new(chunk_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(u64, Checked)>();
    let mut assembler = Assembler::new(checkpoints);
    let outcome: Result<VerifyReport, LedgerError> = std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let (chunk_rx, done_tx, keys) = (&chunk_rx, done_tx.clone(), &keys);
            s.spawn(move || loop {
                let next = chunk_rx.lock().expect("chunk queue lock").recv();
                let Ok((base, rows)) = next else { return };
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Keep draining so the reader never blocks on a full queue.
                    continue;
                }
                let checked = check_chunk(base, &rows, keys);
                // After the assembler has stopped nobody listens; keep draining anyway.
                let _ = done_tx.send((base, checked));
            });
        }
        drop(done_tx);
        let assembled = s.spawn(move || {
            let mut pending: std::collections::BTreeMap<u64, Checked> = Default::default();
            let mut next = 0u64;
            for (base, checked) in done_rx {
                pending.insert(base, checked);
                while let Some(checked) = pending.remove(&next) {
                    next += checked.len() as u64;
                    if let Err(report) = assembler.feed(checked) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        return report;
                    }
                    progress(assembler.pos, total);
                }
            }
            assembler.finish()
        });
        let read = (|| -> Result<(), LedgerError> {
            let mut st = conn.prepare(
                "SELECT idx, entry, envelope FROM ledger_entries WHERE idx >= ?1 ORDER BY idx LIMIT CAST(?2 AS INTEGER)",
            )?;
            let (mut from_idx, mut base) = (i64::MIN, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Rows = st
                    .query_map(params![from_idx, VERIFY_CHUNK as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let Some(&(last_idx, ..)) = rows.last() else {
                    break;
                };
                from_idx = last_idx + 1;
                let n = rows.len() as u64;
                if chunk_tx.send((base, rows)).is_err() {
                    break;
                }
                base += n;
            }
            Ok(())
        })();
        drop(chunk_tx);
        let report = assembled.join().expect("the assembler does not panic");
        read.map(|()| report)
    });
    outcome
}

/// The in-order part of [`verify`]: chain, tree, checkpoints.
struct Assembler {
    checkpoints: Vec<(u64, Hash)>,
    range: CompactRange,
    last: Hash,
    pos: u64,
    next_cp: usize,
    /// The first entry of the range the next checkpoint covers.
    range_start: u64,
}

impl Assembler {
    fn new(checkpoints: Vec<(u64, Hash)>) -> Self {
        Self {
            checkpoints,
            range: CompactRange::new(),
            last: [0u8; 32],
            pos: 0,
            next_cp: 0,
            range_start: 0,
        }
    }

    fn feed(&mut self, checked: Vec<Result<(Hash, Hash), String>>) -> Result<(), VerifyReport> {
        for res in checked {
            let pos = self.pos;
            let (leaf, prev) = res.map_err(|problem| VerifyReport::bad(pos, problem))?;
            if prev != self.last {
                let bad = pos.saturating_sub(1);
                return Err(VerifyReport::bad(
                    bad,
                    format!("entry {bad} was altered: entry {pos}'s prev hash does not match it"),
                ));
            }
            self.range.push(leaf);
            self.last = leaf;
            self.pos += 1;
            let pos = self.pos;
            while self.next_cp < self.checkpoints.len() && self.checkpoints[self.next_cp].0 == pos {
                if self.range.root() != self.checkpoints[self.next_cp].1 {
                    // The chain up to here holds, so the last entry of the range is the one
                    // that no longer matches the signed root.
                    let bad = pos - 1;
                    return Err(VerifyReport::bad(
                        bad,
                        format!(
                            "entries {}..={bad} do not match the signed checkpoint at size {pos}; entry {bad} was altered",
                            self.range_start
                        ),
                    ));
                }
                self.range_start = pos;
                self.next_cp += 1;
            }
            if self.next_cp < self.checkpoints.len() && self.checkpoints[self.next_cp].0 < pos {
                return Err(VerifyReport::bad(
                    self.checkpoints[self.next_cp].0,
                    "checkpoints are out of order".into(),
                ));
            }
        }
        Ok(())
    }

    fn finish(self) -> VerifyReport {
        let pos = self.pos;
        if let Some(&(size, _)) = self.checkpoints.last() {
            if pos < size {
                return VerifyReport::bad(
                    pos,
                    format!("entry {pos} is missing: the signed checkpoint covers {size} entries, the ledger holds {pos}"),
                );
            }
        }
        let covered = self.checkpoints.last().map_or(0, |c| c.0);
        if pos > covered {
            return VerifyReport::bad(
                covered,
                format!("entries {covered}..{pos} are not covered by any signed checkpoint"),
            );
        }
        VerifyReport {
            ok: true,
            entries: Some(pos),
            root: Some(hex::encode(self.range.root())),
            checkpoints: Some(self.checkpoints.len() as u64),
            first_bad_index: None,
            problem: None,
        }
    }
}

/// What `ledger export` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// The directory.
    pub dir: String,
    /// Entries written.
    pub entries: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

/// Writes the ledger to `dir` as plain files an auditor can check with standard tools:
/// `entries.jsonl` (`{"index", "entry_b64", "envelope_b64"}` per line: the exact bytes),
/// `checkpoints.jsonl` (one signed checkpoint envelope per line) and `keys.json` (the
/// cloud's key and every device key, standard base64). See `docs/ledger.md`.
pub fn export(
    conn: &Connection,
    cloud: &PublicKey,
    dir: &Path,
) -> Result<ExportSummary, LedgerError> {
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| LedgerError::Export {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let p = dir.join("entries.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).map_err(io(&p))?);
    let mut entries = 0u64;
    {
        let mut st =
            conn.prepare("SELECT idx, entry, envelope FROM ledger_entries ORDER BY idx")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let idx: i64 = r.get(0)?;
            let entry: Vec<u8> = r.get(1)?;
            let env: Option<Vec<u8>> = r.get(2)?;
            let line = serde_json::json!({
                "index": idx,
                "entry_b64": B64.encode(&entry),
                "envelope_b64": env.map(|e| B64.encode(e)),
            });
            writeln!(f, "{line}").map_err(io(&p))?;
            entries += 1;
        }
    }
    f.flush().map_err(io(&p))?;
    let p = dir.join("checkpoints.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).map_err(io(&p))?);
    let mut checkpoints = 0u64;
    {
        let mut st = conn.prepare("SELECT envelope FROM ledger_checkpoints ORDER BY tree_size")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let env: String = r.get(0)?;
            writeln!(f, "{env}").map_err(io(&p))?;
            checkpoints += 1;
        }
    }
    f.flush().map_err(io(&p))?;
    let mut devices = serde_json::Map::new();
    {
        let mut st = conn.prepare("SELECT id, public_key FROM devices ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        for r in rows {
            let (id, k) = r?;
            devices.insert(id, serde_json::Value::String(B64.encode(k)));
        }
    }
    let p = dir.join("keys.json");
    let keys = serde_json::json!({"cloud": cloud.to_base64(), "devices": devices});
    std::fs::write(&p, serde_json::to_vec_pretty(&keys).expect("json")).map_err(io(&p))?;
    Ok(ExportSummary {
        dir: dir.display().to_string(),
        entries,
        checkpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::payload::{ReorderReason, Transaction};
    use rollcall_shared::{Currency, DeviceId, Sku, SlotId, TxId};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        conn: Connection,
        cloud: KeyPair,
        device: KeyPair,
    }

    fn fixture(n: u64) -> Fixture {
        let device = KeyPair::generate();
        let (dir, mut conn) = crate::store::test_store_with_device(&device);
        let cloud = KeyPair::generate();
        for i in 0..n {
            let tx = conn.transaction().unwrap();
            let mut a = Appender::begin(&tx).unwrap();
            let t = Transaction {
                v: 1,
                tx_id: TxId::parse(&format!("tx-{i}")).unwrap(),
                device_id: DeviceId::parse("d1").unwrap(),
                counter: i + 1,
                slot: SlotId::parse("pods").unwrap(),
                sku: Sku::parse("POD").unwrap(),
                qty: 1,
                unit_price: 100,
                currency: Currency::parse("EUR").unwrap(),
                amount: 100,
                reason: ReorderReason {
                    level: 1,
                    threshold: 2,
                },
                created_at: t0(),
                refilled: None,
            };
            let env = device.sign(TRANSACTION_PAYLOAD_TYPE, &t.encode()).to_json();
            let id = format!("tx-{i}");
            a.push(
                &tx,
                &NewEntry {
                    kind: EntryKind::Decision,
                    tx_id: &id,
                    device_id: "d1",
                    member_id: "m1",
                    status: "accepted",
                    reason: None,
                    at: t0(),
                    envelope: Some(&env),
                },
            )
            .unwrap();
            if i % 3 == 0 {
                a.push(
                    &tx,
                    &NewEntry {
                        kind: EntryKind::Status,
                        tx_id: &id,
                        device_id: "d1",
                        member_id: "m1",
                        status: "delivered",
                        reason: None,
                        at: t0(),
                        envelope: None,
                    },
                )
                .unwrap();
            }
            a.finish(&tx, &cloud, t0()).unwrap();
            tx.commit().unwrap();
        }
        Fixture {
            _dir: dir,
            conn,
            cloud,
            device,
        }
    }

    fn check(f: &Fixture) -> VerifyReport {
        verify(&f.conn, &f.cloud.public(), 2, |_, _| {}).unwrap()
    }

    #[test]
    fn an_untouched_ledger_verifies_and_proofs_check_out() {
        let f = fixture(6);
        let r = check(&f);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.entries, Some(8));
        let cp = latest_checkpoint(&f.conn).unwrap().unwrap();
        assert_eq!(Some(cp.root.clone()), r.root);
        let root: Hash = hex::decode(&cp.root).unwrap().try_into().unwrap();
        for i in 0..8 {
            let v = entry_with_proof(&f.conn, i).unwrap().unwrap();
            let leaf: Hash = hex::decode(&v.leaf_hash).unwrap().try_into().unwrap();
            let proof: Vec<Hash> = v
                .inclusion_proof
                .iter()
                .map(|h| hex::decode(h).unwrap().try_into().unwrap())
                .collect();
            merkle::verify_inclusion(i, 8, &leaf, &proof, &root).unwrap();
        }
        assert!(entry_with_proof(&f.conn, 8).unwrap().is_none());
        let c = consistency(&f.conn, 3, 8).unwrap();
        let proof: Vec<Hash> = c
            .proof
            .iter()
            .map(|h| hex::decode(h).unwrap().try_into().unwrap())
            .collect();
        let r3: Hash = hex::decode(&c.from_root).unwrap().try_into().unwrap();
        merkle::verify_consistency(3, 8, &r3, &root, &proof).unwrap();
        assert!(consistency(&f.conn, 0, 8).is_err());
        assert!(consistency(&f.conn, 3, 9).is_err());
        let _ = &f.device;
    }

    fn proofs(conn: &Connection, n: u64) -> Vec<(Vec<String>, Vec<String>)> {
        (0..n)
            .map(|i| {
                let inclusion = entry_with_proof(conn, i).unwrap().unwrap().inclusion_proof;
                (inclusion, consistency(conn, i + 1, n).unwrap().proof)
            })
            .collect()
    }

    #[test]
    fn a_ledger_from_before_the_subtree_table_gets_it_filled_by_the_migration() {
        let f = fixture(6);
        let before = proofs(&f.conn, 8);
        let nodes: i64 = f
            .conn
            .query_row("SELECT count(*) FROM ledger_nodes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            nodes, 7,
            "4 + 2 + 1 perfect subtrees of height ≥ 1 in 8 leaves"
        );
        let dir = f._dir.path().to_owned();
        f.conn
            .execute_batch(
                "DROP TABLE ledger_nodes; ALTER TABLE member_scores DROP COLUMN offline_note;
                 ALTER TABLE deliveries DROP COLUMN quiet;
                 PRAGMA user_version = 10;",
            )
            .unwrap();
        let conn = crate::store::open_writer(&dir).unwrap();
        assert_eq!(proofs(&conn, 8), before);
        // And appending carries on from there.
        drop(conn);
        let f2 = Fixture {
            conn: crate::store::open_writer(&dir).unwrap(),
            ..f
        };
        let tx = f2.conn.unchecked_transaction().unwrap();
        let mut a = Appender::begin(&tx).unwrap();
        a.push(
            &tx,
            &NewEntry {
                kind: EntryKind::Status,
                tx_id: "tx-0",
                device_id: "d1",
                member_id: "m1",
                status: "cancelled",
                reason: None,
                at: t0(),
                envelope: None,
            },
        )
        .unwrap();
        a.finish(&tx, &f2.cloud, t0()).unwrap();
        tx.commit().unwrap();
        assert!(check(&f2).ok);
        assert_eq!(proofs(&f2.conn, 9).len(), 9);
    }

    #[test]
    fn subtree_roots_an_older_build_did_not_store_are_computed_from_the_leaves() {
        let f = fixture(6);
        let before = proofs(&f.conn, 8);
        f.conn
            .execute(
                "DELETE FROM ledger_nodes WHERE height >= 1 AND idx % 2 = 1",
                [],
            )
            .unwrap();
        assert_eq!(proofs(&f.conn, 8), before);
        f.conn.execute("DELETE FROM ledger_nodes", []).unwrap();
        assert_eq!(proofs(&f.conn, 8), before);
    }

    #[test]
    fn a_damaged_ledger_still_migrates_and_its_proofs_fail_as_corrupt() {
        let f = fixture(6);
        let dir = f._dir.path().to_owned();
        f.conn
            .execute_batch(
                "DELETE FROM ledger_entries WHERE idx = 5;
                 DROP TABLE ledger_nodes; ALTER TABLE member_scores DROP COLUMN offline_note;
                 ALTER TABLE deliveries DROP COLUMN quiet;
                 PRAGMA user_version = 10;",
            )
            .unwrap();
        let conn = crate::store::open_writer(&dir).unwrap();
        // Every proof in the tree of 8 needs the subtree over leaves 4..8.
        for i in [0, 6] {
            assert!(matches!(
                entry_with_proof(&conn, i),
                Err(LedgerError::Corrupt(_))
            ));
        }
        let r = verify(&conn, &f.cloud.public(), 1, |_, _| {}).unwrap();
        assert_eq!((r.ok, r.first_bad_index), (false, Some(5)), "{r:?}");
    }

    #[test]
    fn an_edited_entry_is_named() {
        let f = fixture(6);
        let (entry,): (Vec<u8>,) = f
            .conn
            .query_row("SELECT entry FROM ledger_entries WHERE idx = 2", [], |r| {
                Ok((r.get(0)?,))
            })
            .unwrap();
        let edited = String::from_utf8(entry)
            .unwrap()
            .replace("accepted", "rejected");
        f.conn
            .execute(
                "UPDATE ledger_entries SET entry = ?1 WHERE idx = 2",
                [edited.as_bytes()],
            )
            .unwrap();
        let r = check(&f);
        assert_eq!((r.ok, r.first_bad_index), (false, Some(2)), "{r:?}");
    }

    #[test]
    fn editing_the_last_entry_is_caught_by_the_checkpoint() {
        let f = fixture(4);
        let last: i64 = f
            .conn
            .query_row("SELECT max(idx) FROM ledger_entries", [], |r| r.get(0))
            .unwrap();
        let entry: Vec<u8> = f
            .conn
            .query_row(
                "SELECT entry FROM ledger_entries WHERE idx = ?1",
                [last],
                |r| r.get(0),
            )
            .unwrap();
        let edited = String::from_utf8(entry)
            .unwrap()
            .replace("2026-11-24", "2026-11-25");
        f.conn
            .execute(
                "UPDATE ledger_entries SET entry = ?1 WHERE idx = ?2",
                params![edited.as_bytes(), last],
            )
            .unwrap();
        let r = check(&f);
        assert_eq!(
            (r.ok, r.first_bad_index),
            (false, Some(last as u64)),
            "{r:?}"
        );
    }

    #[test]
    fn deleted_reordered_and_forged_entries_are_named() {
        let f = fixture(6);
        f.conn
            .execute("DELETE FROM ledger_entries WHERE idx = 3", [])
            .unwrap();
        let r = check(&f);
        assert_eq!((r.ok, r.first_bad_index), (false, Some(3)), "{r:?}");

        let f = fixture(6);
        f.conn
            .execute_batch(
                "UPDATE ledger_entries SET idx = -1 WHERE idx = 4;
                 UPDATE ledger_entries SET idx = 4 WHERE idx = 5;
                 UPDATE ledger_entries SET idx = 5 WHERE idx = -1;",
            )
            .unwrap();
        let r = check(&f);
        assert_eq!((r.ok, r.first_bad_index), (false, Some(4)), "{r:?}");

        let f = fixture(3);
        let forged = KeyPair::generate()
            .sign(TRANSACTION_PAYLOAD_TYPE, b"{}")
            .to_json();
        f.conn
            .execute(
                "UPDATE ledger_entries SET envelope = ?1 WHERE idx = 0",
                [forged],
            )
            .unwrap();
        let r = check(&f);
        assert_eq!((r.ok, r.first_bad_index), (false, Some(0)), "{r:?}");

        let f = fixture(3);
        f.conn
            .execute(
                "DELETE FROM ledger_entries WHERE idx = (SELECT max(idx) FROM ledger_entries)",
                [],
            )
            .unwrap();
        let r = check(&f);
        assert!(!r.ok, "{r:?}");
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_fails() {
        let f = fixture(2);
        let r = verify(&f.conn, &KeyPair::generate().public(), 1, |_, _| {}).unwrap();
        assert!(!r.ok);
        assert!(r.problem.unwrap().contains("signature"));
    }
}
