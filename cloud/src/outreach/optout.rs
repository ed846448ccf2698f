//! Opt-out links that work without logging in.
//!
//! A token is `base64url(member_id "|" channel "|" category) "." base64url(HMAC-SHA256)`,
//! keyed by a key derived from the cloud's signing key (`cloud.key`), so it needs no
//! table and cannot be forged or pointed at another member. `GET
//! /api/v1/optout?token=...` shows a page that asks; `POST` to the same URL (its button,
//! or a mail client's RFC 8058 one-click unsubscribe) records the opt-out in `consent`
//! (idempotent); `channel` `*` means every channel. Only `marketing` can be opted out of: transactional messages
//! (orders) still go.

use super::OutreachError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The key that signs opt-out tokens.
#[derive(Clone)]
pub struct OptOutKey([u8; 32]);

impl std::fmt::Debug for OptOutKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OptOutKey(***)")
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OptOut {
    /// The member.
    pub member_id: String,
    /// The channel (`*`: every channel).
    pub channel: String,
    /// The category (`marketing`).
    pub category: String,
}

impl OptOutKey {
    /// Derives the key from the cloud key in `data_dir` (created on first use).
    pub fn load(data_dir: &Path) -> Result<Self, OutreachError> {
        let key = crate::keys::load_or_create(&data_dir.join("cloud.key"))
            .map_err(|e| OutreachError::Key(std::io::Error::other(e.to_string())))?;
        Ok(Self::from_seed(&key.seed()))
    }

    /// Derives the key from secret bytes.
    pub fn from_seed(seed: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"rollcall opt-out v1\0");
        h.update(seed);
        Self(h.finalize().into())
    }

    fn mac(&self, msg: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(msg);
        m
    }

    /// A token for `member_id`, `channel` and `category`.
    pub fn token(&self, member_id: &str, channel: &str, category: &str) -> String {
        let msg = format!("{member_id}|{channel}|{category}");
        let tag = self.mac(msg.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(msg), B64.encode(tag))
    }

    /// Checks a token; `None` when it is malformed or forged.
    pub fn verify(&self, token: &str) -> Option<OptOut> {
        let (msg, tag) = token.split_once('.')?;
        let msg = B64.decode(msg).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&msg).verify_slice(&tag).ok()?;
        let msg = String::from_utf8(msg).ok()?;
        let mut parts = msg.splitn(3, '|');
        Some(OptOut {
            member_id: parts.next()?.to_owned(),
            channel: parts.next()?.to_owned(),
            category: parts.next()?.to_owned(),
        })
    }
}

/// Records an opt-out (idempotent); `source` says how (`link`, `cli`). Messages of that
/// category already queued for the member on that channel (or any, for `*`) and not yet
/// sent are cancelled with it (reason `opted_out`): a retry of one must not reach a
/// member who has said no.
pub fn record(
    conn: &Connection,
    o: &OptOut,
    source: &str,
    now: DateTime<Utc>,
) -> Result<(), OutreachError> {
    conn.execute_batch("SAVEPOINT optout")?;
    let done = (|| -> Result<(), OutreachError> {
        conn.execute(
            "INSERT INTO consent (member_id, channel, category, opted_out_ms, source)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![
                o.member_id,
                o.channel,
                o.category,
                now.timestamp_millis(),
                source
            ],
        )?;
        let queued: Vec<i64> = conn
            .prepare(
                "SELECT delivery_id FROM outreach WHERE member_id = ?1 AND category = ?2
                   AND (?3 = '*' OR channel = ?3) AND delivery_id IS NOT NULL",
            )?
            .query_map(params![o.member_id, o.category, o.channel], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in queued {
            crate::delivery::cancel(conn, id, super::reasons::OPTED_OUT, now)?;
        }
        Ok(())
    })();
    match done {
        Ok(()) => conn.execute_batch("RELEASE optout")?,
        Err(_) => conn.execute_batch("ROLLBACK TO optout; RELEASE optout")?,
    }
    done
}

/// True when the member opted out of `channel` (or every channel) for `category`.
pub fn opted_out(
    conn: &Connection,
    member_id: &str,
    channel: &str,
    category: &str,
) -> Result<bool, OutreachError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM consent WHERE member_id = ?1 AND channel IN (?2, '*') AND category = ?3)",
        params![member_id, channel, category],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let k = OptOutKey::from_seed(b"seed");
        let t = k.token("m1", "*", "marketing");
        assert_eq!(
            k.verify(&t),
            Some(OptOut {
                member_id: "m1".into(),
                channel: "*".into(),
                category: "marketing".into()
            })
        );
        let forged = format!(
            "{}.{}",
            B64.encode("m2|*|marketing"),
            t.split_once('.').unwrap().1
        );
        assert_eq!(k.verify(&forged), None);
        assert_eq!(OptOutKey::from_seed(b"other").verify(&t), None);
        assert_eq!(k.verify("garbage"), None);
    }
}
