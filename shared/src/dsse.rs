//! DSSE envelopes signed with Ed25519.
//!
//! Every device uplink and every cloud downlink travels as a
//! [DSSE](https://github.com/secure-systems-lab/dsse) envelope:
//! `{"payload": b64, "payloadType": "...", "signatures": [{"keyid": "...", "sig": b64}]}`,
//! where each signature is Ed25519 over
//! `PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body`.
//! Anyone can check one with standard tools (see `docs/protocol.md`). The `keyid`
//! is a hint only; verification always uses the key the verifier already trusts.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Payload type of a usage report.
pub const USAGE_PAYLOAD_TYPE: &str = "application/vnd.rollcall.usage.v1+json";
/// Payload type of a device status message.
pub const STATUS_PAYLOAD_TYPE: &str = "application/vnd.rollcall.status.v1+json";
/// Payload type of a cloud-to-device message (acks and the like).
pub const DOWNLINK_PAYLOAD_TYPE: &str = "application/vnd.rollcall.down.v1+json";
/// Payload type of a device-initiated replenishment transaction.
pub const TRANSACTION_PAYLOAD_TYPE: &str = "application/vnd.rollcall.transaction.v1+json";
/// Payload type of an agent's receipt for display messages.
pub const RECEIPT_PAYLOAD_TYPE: &str = "application/vnd.rollcall.receipt.v1+json";
/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: usize = 4;

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The bytes are not a DSSE envelope (bad JSON, bad base64, unknown fields).
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    /// The envelope carries a payload type other than the one expected here.
    #[error("payload type {found:?} where {expected:?} was expected")]
    WrongPayloadType {
        /// What the envelope said.
        found: String,
        /// What the receiver wanted.
        expected: &'static str,
    },
    /// No signature verifies under the trusted key.
    #[error("no signature verifies under the trusted key")]
    BadSignature,
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not standard base64.
    #[error("public key is not standard base64: {0}")]
    Base64(String),
    /// Wrong length.
    #[error("an Ed25519 key is 32 bytes, this one is {0}")]
    Length(usize),
    /// Not a valid curve point.
    #[error("not a valid Ed25519 public key")]
    Invalid,
}

/// The DSSE pre-authentication encoding of `payload_type` and `body`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload_type.len() + body.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// An Ed25519 signing key (a device's or the cloud's). Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
    keyid: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("the OS random source is available");
        Self::from_seed(seed)
    }
    /// The key for a 32-byte seed (the secret as stored on disk).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let keyid = key_id(&signing.verifying_key());
        Self { signing, keyid }
    }
    /// The 32-byte secret seed, for writing to a 0600 key file.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }
    /// The key id used as the DSSE `keyid` hint.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }
    /// Signs `body` as a DSSE envelope of `payload_type`.
    pub fn sign(&self, payload_type: &str, body: &[u8]) -> Envelope {
        let sig = self.signing.sign(&pae(payload_type, body));
        Envelope {
            payload: B64.encode(body),
            payload_type: payload_type.to_owned(),
            signatures: vec![Signature {
                keyid: self.keyid.clone(),
                sig: B64.encode(sig.to_bytes()),
            }],
        }
    }
}

/// The hex SHA-256 of the raw public key: the `keyid` hint in our envelopes.
fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// An Ed25519 public key, written as standard base64 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    /// Parses standard base64 of 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
    /// Reads the raw 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|_| KeyError::Invalid)
    }
    /// Standard base64 of the 32 bytes.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
    /// The key id (hex SHA-256 of the raw key).
    pub fn keyid(&self) -> String {
        key_id(&self.0)
    }
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Hint naming the key; never trusted.
    #[serde(default)]
    pub keyid: String,
    /// Standard base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Standard base64 of the payload bytes.
    pub payload: String,
    /// What the payload is (one of the `*_PAYLOAD_TYPE` constants).
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures over the PAE of type and payload.
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Parses the JSON form of an envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.signatures.is_empty() || env.signatures.len() > MAX_SIGNATURES {
            return Err(EnvelopeError::Malformed(format!(
                "an envelope carries 1 to {MAX_SIGNATURES} signatures, this one {}",
                env.signatures.len()
            )));
        }
        Ok(env)
    }
    /// The JSON form of the envelope.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }
    /// Decodes the payload without checking any signature (for quarantine and diagnostics).
    pub fn payload_unverified(&self) -> Result<Vec<u8>, EnvelopeError> {
        B64.decode(&self.payload)
            .map_err(|e| EnvelopeError::Malformed(format!("payload: {e}")))
    }
    /// Checks that the envelope is of `expected_type` and signed by `key`; returns the payload.
    pub fn verify(
        &self,
        expected_type: &'static str,
        key: &PublicKey,
    ) -> Result<Vec<u8>, EnvelopeError> {
        if self.payload_type != expected_type {
            return Err(EnvelopeError::WrongPayloadType {
                found: self.payload_type.clone(),
                expected: expected_type,
            });
        }
        let body = self.payload_unverified()?;
        let msg = pae(&self.payload_type, &body);
        for s in &self.signatures {
            let Ok(raw) = B64.decode(&s.sig) else {
                continue;
            };
            let Ok(sig) = ed25519_dalek::Signature::from_slice(&raw) else {
                continue;
            };
            if key.0.verify(&msg, &sig).is_ok() {
                return Ok(body);
            }
        }
        Err(EnvelopeError::BadSignature)
    }
}

/// Most signatures checked in one Ed25519 batch. Larger batches save little more per
/// signature, and a batch that fails is checked again one by one.
#[cfg(feature = "batch")]
pub const BATCH_SIZE: usize = 64;

/// Verifies many envelopes at once, each of its expected type under its own key, and
/// gives, in order, what [`Envelope::verify`] gives for each (but see below).
///
/// Envelopes with one signature are checked in Ed25519 batches of up to [`BATCH_SIZE`],
/// which costs about half as much per signature; a batch that does not verify is split
/// in halves and tried again, down to single signatures, so bad envelopes cost their
/// neighbours only time. Every other envelope goes through [`Envelope::verify`].
///
/// The batch equation is cofactorless like single verification, but its weights (derived
/// from a hash of the batch, not random) do not always cancel a small-order component
/// that a signer added to its own signature on purpose: such a signature, which single
/// verification rejects, can pass in some batches. Building one takes the key's secret,
/// so a device can at most get its own odd signature accepted, never speak for another.
/// Callers that keep envelopes to be re-verified later one by one (the ledger keeps
/// transactions) must verify those with [`Envelope::verify`] instead.
#[cfg(feature = "batch")]
pub fn verify_many(
    items: &[(&Envelope, &'static str, &PublicKey)],
) -> Vec<Result<Vec<u8>, EnvelopeError>> {
    let mut results: Vec<Option<Result<Vec<u8>, EnvelopeError>>> = vec![None; items.len()];
    let mut candidates = Vec::with_capacity(items.len());
    for (index, (env, expected, key)) in items.iter().enumerate() {
        let batchable = if env.payload_type == *expected && env.signatures.len() == 1 {
            let sig = B64
                .decode(&env.signatures[0].sig)
                .ok()
                .and_then(|raw| ed25519_dalek::Signature::from_slice(&raw).ok());
            match (sig, env.payload_unverified()) {
                (Some(sig), Ok(body)) => Some((sig, body)),
                _ => None,
            }
        } else {
            None
        };
        match batchable {
            Some((sig, body)) => candidates.push(Candidate {
                index,
                msg: pae(&env.payload_type, &body),
                body,
                sig,
                key: key.0,
            }),
            None => results[index] = Some(env.verify(expected, key)),
        }
    }
    for chunk in candidates.chunks_mut(BATCH_SIZE) {
        for (c, good) in verify_chunk(chunk) {
            results[c.index] = Some(if good {
                Ok(std::mem::take(&mut c.body))
            } else {
                Err(EnvelopeError::BadSignature)
            });
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every envelope has a result"))
        .collect()
}

/// One envelope of [`verify_many`] that can be checked in a batch.
#[cfg(feature = "batch")]
struct Candidate {
    index: usize,
    body: Vec<u8>,
    msg: Vec<u8>,
    sig: ed25519_dalek::Signature,
    key: VerifyingKey,
}

/// Verifies `chunk` as one batch; a batch that fails is split in halves and each half
/// tried again, down to single signatures, so a few bad envelopes among many good ones
/// cost a few extra batches rather than a one-by-one check of the whole chunk.
#[cfg(feature = "batch")]
fn verify_chunk(chunk: &mut [Candidate]) -> Vec<(&mut Candidate, bool)> {
    if chunk.len() == 1 {
        let c = &mut chunk[0];
        let good = c.key.verify(&c.msg, &c.sig).is_ok();
        return vec![(c, good)];
    }
    let msgs: Vec<&[u8]> = chunk.iter().map(|c| c.msg.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = chunk.iter().map(|c| c.sig).collect();
    let keys: Vec<VerifyingKey> = chunk.iter().map(|c| c.key).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return chunk.iter_mut().map(|c| (c, true)).collect();
    }
    let (left, right) = chunk.split_at_mut(chunk.len() / 2);
    let mut out = verify_chunk(left);
    out.extend(verify_chunk(right));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_test_vector_byte_for_byte() {
        let got = pae("http://example.com/HelloWorld", b"hello world");
        assert_eq!(
            got,
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_of_empty_values() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn a_signed_envelope_verifies_and_returns_the_payload() {
        let k = KeyPair::generate();
        let env = k.sign(USAGE_PAYLOAD_TYPE, b"{\"v\":1}");
        let parsed = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(
            parsed.verify(USAGE_PAYLOAD_TYPE, &k.public()).unwrap(),
            b"{\"v\":1}"
        );
        assert_eq!(parsed.signatures[0].keyid, k.public().keyid());
    }

    #[test]
    fn tampered_payload_wrong_key_and_wrong_type_are_rejected() {
        let k = KeyPair::generate();
        let other = KeyPair::generate();
        let mut env = k.sign(USAGE_PAYLOAD_TYPE, b"hello");
        assert_eq!(
            env.verify(USAGE_PAYLOAD_TYPE, &other.public()),
            Err(EnvelopeError::BadSignature)
        );
        assert!(matches!(
            env.verify(STATUS_PAYLOAD_TYPE, &k.public()),
            Err(EnvelopeError::WrongPayloadType { .. })
        ));
        env.payload = B64.encode(b"hellO");
        assert_eq!(
            env.verify(USAGE_PAYLOAD_TYPE, &k.public()),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn changing_the_payload_type_breaks_the_signature() {
        let k = KeyPair::generate();
        let mut env = k.sign(USAGE_PAYLOAD_TYPE, b"x");
        env.payload_type = STATUS_PAYLOAD_TYPE.into();
        assert_eq!(
            env.verify(STATUS_PAYLOAD_TYPE, &k.public()),
            Err(EnvelopeError::BadSignature)
        );
    }

    #[test]
    fn envelopes_with_unknown_fields_or_no_signatures_are_malformed() {
        assert!(matches!(
            Envelope::from_json(br#"{"payload":"","payloadType":"t","signatures":[],"x":1}"#),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_json(br#"{"payload":"","payloadType":"t","signatures":[]}"#),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::from_json(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn public_keys_round_trip_through_base64_and_reject_bad_input() {
        let k = KeyPair::generate();
        let b = k.public().to_base64();
        assert_eq!(PublicKey::from_base64(&b).unwrap(), k.public());
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(KeyError::Length(3))
        ));
        assert!(matches!(
            PublicKey::from_base64("!!"),
            Err(KeyError::Base64(_))
        ));
    }

    #[test]
    fn seed_round_trip_gives_the_same_key() {
        let k = KeyPair::generate();
        assert_eq!(KeyPair::from_seed(k.seed()).public(), k.public());
        assert!(!format!("{k:?}").contains(&B64.encode(k.seed())));
    }

    /// Verifies one of our envelopes with an independent implementation: Python's
    /// `cryptography` package. Skipped (with a message) when python3 or the package is
    /// missing, unless `ROLLCALL_REQUIRE_INTEROP` is set, as CI does.
    #[test]
    fn python_cryptography_verifies_our_envelope() {
        let required = std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_some();
        let have = std::process::Command::new("python3")
            .args(["-c", "import cryptography"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !have {
            assert!(
                !required,
                "python3 with `cryptography` is required when ROLLCALL_REQUIRE_INTEROP is set"
            );
            eprintln!("SKIPPED: python3 with the `cryptography` package is not available");
            return;
        }
        let k = KeyPair::generate();
        let env = k.sign(USAGE_PAYLOAD_TYPE, br#"{"v":1,"hello":"world"}"#);
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join("env.json");
        std::fs::write(&env_path, env.to_json()).unwrap();
        let script = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
env = json.load(open(sys.argv[1]))
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[2]))
body = base64.b64decode(env["payload"])
t = env["payloadType"].encode()
pae = b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)
key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae)
tampered = pae.replace(b"world", b"World")
try:
    key.verify(base64.b64decode(env["signatures"][0]["sig"]), tampered)
    print("TAMPERED-ACCEPTED")
    sys.exit(2)
except Exception:
    pass
print("OK", body.decode())
"#;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&env_path)
            .arg(k.public().to_base64())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python said: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), r#"OK {"v":1,"hello":"world"}"#);
    }

    /// `verify_many` answers exactly as `verify` does, envelope by envelope, across
    /// several batches, with bad envelopes in the middle of good ones.
    #[cfg(feature = "batch")]
    #[test]
    fn verifying_many_at_once_gives_what_verifying_each_gives() {
        let keys: Vec<KeyPair> = (0..5).map(|_| KeyPair::generate()).collect();
        let mut envs: Vec<(Envelope, &'static str, PublicKey)> = Vec::new();
        for i in 0..150usize {
            let k = &keys[i % keys.len()];
            let body = format!("{{\"n\":{i}}}");
            let mut env = k.sign(USAGE_PAYLOAD_TYPE, body.as_bytes());
            let mut key = k.public();
            let mut expected = USAGE_PAYLOAD_TYPE;
            match i {
                // Signed by another key than the one trusted for it.
                7 | 100 => key = keys[(i + 1) % keys.len()].public(),
                // Payload changed after signing.
                20 => env.payload = B64.encode(b"{\"n\":-1}"),
                // Not the expected type.
                30 => expected = STATUS_PAYLOAD_TYPE,
                // A signature that is not base64, and one of the wrong length.
                40 => env.signatures[0].sig = "%%%".into(),
                41 => env.signatures[0].sig = B64.encode([0u8; 10]),
                // Two signatures, the good one second.
                50 => env.signatures.insert(
                    0,
                    Signature {
                        keyid: String::new(),
                        sig: B64.encode([1u8; 64]),
                    },
                ),
                // A payload that is not base64.
                60 => env.payload = "not base64!".into(),
                _ => {}
            }
            envs.push((env, expected, key));
        }
        let items: Vec<(&Envelope, &'static str, &PublicKey)> =
            envs.iter().map(|(e, t, k)| (e, *t, k)).collect();
        let many = verify_many(&items);
        assert_eq!(many.len(), envs.len());
        let mut good = 0;
        for (i, ((env, t, k), got)) in envs.iter().zip(&many).enumerate() {
            assert_eq!(got, &env.verify(t, k), "envelope {i}");
            good += usize::from(got.is_ok());
        }
        // Everything but the seven spoilt ones (50 still verifies by its second signature).
        assert_eq!(good, 150 - 7);
        assert!(many[50].is_ok());
        assert_eq!(many[0].as_deref().unwrap(), b"{\"n\":0}");
    }
}
