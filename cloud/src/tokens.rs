//! API tokens: bearer tokens with a role, printed once when created and stored only as a
//! SHA-256 hash (tokens are 256 random bits, so a fast hash is enough: nothing to
//! brute-force). Revoked tokens stay in the table for the audit trail.
//!
//! Roles: `support` sees members' contact details and history; `analyst` sees aggregates
//! and pseudonymous member ids; `admin` sees everything and may change the registry.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// Prefix of every token, so that leaked tokens are easy to recognise and scan for.
pub const TOKEN_PREFIX: &str = "rc_";

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a role we know.
    #[error("unknown role {0:?}: use support, analyst or admin")]
    UnknownRole(String),
    /// The name is empty or too long.
    #[error("token name must be 1..=64 characters")]
    BadName,
    /// No random bytes from the OS.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Aggregates and pseudonymous ids only.
    Analyst,
    /// Members' contact details and history.
    Support,
    /// Everything, including registry changes.
    Admin,
}

impl Role {
    /// Parses `support`, `analyst` or `admin`.
    pub fn parse(s: &str) -> Result<Role, TokenError> {
        match s {
            "support" => Ok(Role::Support),
            "analyst" => Ok(Role::Analyst),
            "admin" => Ok(Role::Admin),
            other => Err(TokenError::UnknownRole(other.to_owned())),
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Support => "support",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may see names, phone numbers and e-mail addresses.
    pub fn sees_contact_details(self) -> bool {
        matches!(self, Role::Support | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A newly created token: the only time its secret is available.
#[derive(Serialize)]
pub struct IssuedToken {
    /// Row id (for `tokens revoke`).
    pub id: i64,
    /// Who or what it is for.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The bearer token itself.
    pub token: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"***")
            .finish()
    }
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// Token row id.
    pub token_id: i64,
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// A token as `tokens list` shows it (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
    /// Last successful use.
    pub last_used_at: Option<String>,
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Tokens checked against the store in the last [`TokenCache::TTL`], so that a busy API
/// reads the token table about once a second per token rather than on every request.
/// Only valid tokens are kept, under their hash; a revoked token stops working within
/// the TTL.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, std::time::Instant)>>,
    /// When each token's last use was last written to the store.
    touched: std::sync::Mutex<std::collections::HashMap<i64, std::time::Instant>>,
}

impl TokenCache {
    /// How long a checked token is trusted without asking the store again.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(1);
    /// Most tokens kept (expired ones are dropped when it is full).
    const CAPACITY: usize = 1024;
    /// How often a token's last use is written to the store. Each write to the store
    /// empties the page cache of every connection reading it, so a busy token must not
    /// cause one every second.
    pub const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether the use of token `id` now should be written to the store: the first use,
    /// then at most once per [`Self::TOUCH_EVERY`] (the answer is `true` for one caller).
    pub fn should_touch(&self, id: i64) -> bool {
        self.should_touch_at(id, std::time::Instant::now())
    }

    fn should_touch_at(&self, id: i64, now: std::time::Instant) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        match touched.get(&id) {
            Some(at) if now.saturating_duration_since(*at) < Self::TOUCH_EVERY => false,
            _ => {
                if touched.len() >= Self::CAPACITY {
                    touched.retain(|_, at| now.saturating_duration_since(*at) < Self::TOUCH_EVERY);
                }
                touched.insert(id, now);
                true
            }
        }
    }

    /// The principal of `presented` if it was found valid less than [`Self::TTL`] ago.
    pub fn get(&self, presented: &str) -> Option<Principal> {
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(p, _)| p.clone())
    }

    /// Remembers that `presented` belongs to `principal`, as of now. Returns `true` for
    /// the first caller since the entry expired, `false` when another request checked the
    /// same token meanwhile (when the entry expires, every request in flight misses it at
    /// once; only the first should record the token's use).
    pub fn put(&self, presented: &str, principal: Principal) -> bool {
        self.put_at(presented, principal, std::time::Instant::now())
    }

    fn put_at(&self, presented: &str, principal: Principal, at: std::time::Instant) -> bool {
        let key: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries
            .get(&key)
            .is_some_and(|(_, seen)| at.saturating_duration_since(*seen) < Self::TTL)
        {
            return false;
        }
        if entries.len() >= Self::CAPACITY {
            entries.retain(|_, (_, seen)| at.saturating_duration_since(*seen) < Self::TTL);
        }
        if entries.len() < Self::CAPACITY {
            entries.insert(key, (principal, at));
        }
        true
    }
}

fn rfc3339(ms: i64) -> String {
    crate::registry::ms_to_rfc3339(ms)
}

/// Creates a token for `name` with `role`.
pub fn create(
    conn: &Connection,
    name: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<IssuedToken, TokenError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(TokenError::BadName);
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    use base64::Engine as _;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    conn.execute(
        "INSERT INTO api_tokens (name, role, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![name, role.as_str(), hash(&token), now.timestamp_millis()],
    )?;
    Ok(IssuedToken {
        id: conn.last_insert_rowid(),
        name: name.to_owned(),
        role,
        token,
    })
}

/// Records that token `id` was used at `now` (kept as the latest use; `tokens list`
/// shows it as `last_used_at`).
pub fn touch(conn: &Connection, id: i64, now: DateTime<Utc>) -> Result<(), TokenError> {
    conn.execute(
        "UPDATE api_tokens SET last_used_ms = ?2
         WHERE id = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?2)",
        params![id, now.timestamp_millis()],
    )?;
    Ok(())
}

/// Revokes the token with row id `id`. Returns false if there is no such live token.
pub fn revoke(conn: &Connection, id: i64, now: DateTime<Utc>) -> Result<bool, TokenError> {
    let n = conn.execute(
        "UPDATE api_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
        params![id, now.timestamp_millis()],
    )?;
    Ok(n == 1)
}

/// The principal behind a presented token, if it is known and not revoked.
pub fn authenticate(conn: &Connection, presented: &str) -> Result<Option<Principal>, TokenError> {
    if !presented.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let row = conn
        .query_row(
            "SELECT id, name, role FROM api_tokens WHERE token_hash = ?1 AND revoked_ms IS NULL",
            [hash(presented)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(match row {
        Some((token_id, name, role)) => Some(Principal {
            token_id,
            name,
            role: Role::parse(&role)?,
        }),
        None => None,
    })
}

/// Every token, newest first.
pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>, TokenError> {
    let mut stmt = conn.prepare(
        "SELECT id, name, role, created_ms, revoked_ms, last_used_ms FROM api_tokens ORDER BY id DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            role: r.get(2)?,
            created_at: rfc3339(r.get(3)?),
            revoked_at: r.get::<_, Option<i64>>(4)?.map(rfc3339),
            last_used_at: r.get::<_, Option<i64>>(5)?.map(rfc3339),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_writer(dir.path()).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_created_token_authenticates_with_its_role_until_revoked() {
        let (_d, conn) = store();
        let now = Utc::now();
        let t = create(&conn, "front desk", Role::Support, now).unwrap();
        assert!(t.token.starts_with("rc_") && t.token.len() > 40);
        let p = authenticate(&conn, &t.token).unwrap().unwrap();
        assert_eq!((p.name.as_str(), p.role), ("front desk", Role::Support));
        assert!(authenticate(&conn, "rc_not-a-token").unwrap().is_none());
        assert!(authenticate(&conn, "").unwrap().is_none());
        assert!(revoke(&conn, t.id, now).unwrap());
        assert!(
            !revoke(&conn, t.id, now).unwrap(),
            "revoking twice changes nothing"
        );
        assert!(authenticate(&conn, &t.token).unwrap().is_none());
    }

    #[test]
    fn the_cache_trusts_a_checked_token_for_one_ttl_only() {
        let cache = TokenCache::default();
        let p = Principal {
            token_id: 1,
            name: "desk".into(),
            role: Role::Support,
        };
        assert_eq!(cache.get("rc_a"), None);
        assert!(cache.put("rc_a", p.clone()));
        assert_eq!(cache.get("rc_a"), Some(p.clone()));
        assert!(
            !cache.put("rc_a", p.clone()),
            "a second request that checked the token meanwhile is not the first"
        );
        assert_eq!(cache.get("rc_b"), None, "another token is not let in");
        let long_ago = std::time::Instant::now() - TokenCache::TTL * 2;
        cache.put_at("rc_c", p.clone(), long_ago);
        assert_eq!(
            cache.get("rc_c"),
            None,
            "an entry older than the TTL is asked again"
        );
        assert!(cache.put("rc_c", p), "and its re-check is the first again");
    }

    #[test]
    fn a_tokens_use_is_written_at_most_once_a_minute() {
        let cache = TokenCache::default();
        let t0 = std::time::Instant::now();
        assert!(cache.should_touch_at(1, t0), "the first use is written");
        assert!(!cache.should_touch_at(1, t0));
        assert!(!cache.should_touch_at(1, t0 + TokenCache::TOUCH_EVERY / 2));
        assert!(
            cache.should_touch_at(2, t0),
            "each token has its own minute"
        );
        assert!(cache.should_touch_at(1, t0 + TokenCache::TOUCH_EVERY));
    }

    #[test]
    fn only_the_hash_is_stored_and_debug_hides_the_secret() {
        let (_d, conn) = store();
        let t = create(&conn, "ops", Role::Admin, Utc::now()).unwrap();
        let stored: Vec<u8> = conn
            .query_row(
                "SELECT token_hash FROM api_tokens WHERE id = ?1",
                [t.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, hash(&t.token));
        assert!(!format!("{t:?}").contains(&t.token));
        let listed = list(&conn).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!serde_json::to_string(&listed).unwrap().contains(&t.token));
    }

    #[test]
    fn bad_roles_and_names_are_refused() {
        let (_d, conn) = store();
        assert!(matches!(
            Role::parse("root"),
            Err(TokenError::UnknownRole(_))
        ));
        assert!(matches!(
            create(&conn, "  ", Role::Admin, Utc::now()),
            Err(TokenError::BadName)
        ));
    }
}
