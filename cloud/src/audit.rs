//! The audit log of member lookups: who (which token), when, which member and why
//! (`search`, `call`, `view`, `greeting`, `export`, `erase`).
//!
//! Invariants:
//! - `audit_log` is append-only; rows are never updated or deleted (an erasure keeps the
//!   rows, whose member id no longer leads to a person).
//! - A lookup is answered only after its audit row is committed: handlers call
//!   [`AuditLog::record`], which resolves once the row is on disk. Rows from concurrent
//!   requests are committed together (group commit), so auditing costs one fsync per
//!   batch, not one per request.

use crate::tokens::Principal;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// Why a member's data was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A search by phone, e-mail, device or name.
    Search,
    /// An incoming call matched the member's phone number.
    Call,
    /// The member's record was opened.
    View,
    /// The member's greeting was built.
    Greeting,
    /// A data access request: everything held about the member.
    Export,
    /// The member's personal data was erased.
    Erase,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Search => "search",
            Action::Call => "call",
            Action::View => "view",
            Action::Greeting => "greeting",
            Action::Export => "export",
            Action::Erase => "erase",
        }
    }
}

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When.
    pub at: DateTime<Utc>,
    /// Token id (`None` for the telephony webhook, which signs instead).
    pub token_id: Option<i64>,
    /// The token's name, or `telephony`.
    pub actor: String,
    /// The role it acted in.
    pub role: String,
    /// Why.
    pub action: Action,
    /// Which member (`None`: a search that matched nobody).
    pub member_id: Option<String>,
    /// What was asked (the search terms, the call sid).
    pub detail: String,
}

impl Entry {
    /// An entry for `principal` acting on `member_id`.
    pub fn by(
        principal: &Principal,
        at: DateTime<Utc>,
        action: Action,
        member_id: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at,
            token_id: Some(principal.token_id),
            actor: principal.name.clone(),
            role: principal.role.as_str().to_owned(),
            action,
            member_id: member_id.map(str::to_owned),
            detail: detail.into(),
        }
    }
}

/// Why an audit row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store refused the write.
    #[error("audit log: {0}")]
    Store(String),
    /// The audit writer has stopped (the server is shutting down).
    #[error("audit log writer is not running")]
    Stopped,
}

type Request = (Vec<Entry>, oneshot::Sender<Result<(), String>>);

/// A handle to the audit writer thread.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Request>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 1024;

impl AuditLog {
    /// Starts the writer thread on its own connection to the store in `data_dir`. It stops
    /// when every handle is dropped.
    pub fn start(data_dir: &Path) -> Result<Self, crate::store::StoreError> {
        let conn = crate::store::open_writer(data_dir)?;
        let (tx, rx) = mpsc::channel::<Request>(4096);
        let dir: PathBuf = data_dir.to_owned();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(conn, rx, dir))
            .map_err(|e| crate::store::StoreError::DataDir {
                path: data_dir.display().to_string(),
                source: e,
            })?;
        Ok(Self { tx })
    }

    /// Writes `entries` and returns once they are committed.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send((entries, done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Store)
    }
}

fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Request>, dir: PathBuf) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let mut n = batch[0].0.len();
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => {
                    n += r.0.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let result =
            write(&mut conn, batch.iter().flat_map(|(e, _)| e.iter())).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, data_dir = %dir.display(), "Failed to write the audit log");
        }
        for (_, done) in batch {
            let _ = done.send(result.clone());
        }
    }
}

fn write<'a>(
    conn: &mut Connection,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit_log (at_ms, token_id, actor, role, action, member_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in entries {
            st.execute(params![
                e.at.timestamp_millis(),
                e.token_id,
                e.actor,
                e.role,
                e.action.as_str(),
                e.member_id,
                e.detail,
            ])?;
        }
    }
    tx.commit()
}

/// A row of the audit log, as the member export and `audit list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    /// When (RFC 3339).
    pub at: String,
    /// Token name, or `telephony`.
    pub actor: String,
    /// Role.
    pub role: String,
    /// Why.
    pub action: String,
    /// Member id.
    pub member_id: Option<String>,
    /// What was asked.
    pub detail: String,
}

/// The audit rows, newest first; optionally one member's.
pub fn list(
    conn: &Connection,
    member_id: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditView>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT at_ms, actor, role, action, member_id, detail FROM audit_log
         WHERE (?1 IS NULL OR member_id = ?1) ORDER BY id DESC LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![member_id, limit], |r| {
        Ok(AuditView {
            at: crate::registry::ms_to_rfc3339(r.get(0)?),
            actor: r.get(1)?,
            role: r.get(2)?,
            action: r.get(3)?,
            member_id: r.get(4)?,
            detail: r.get(5)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Role;

    #[tokio::test]
    async fn concurrent_lookups_are_all_committed_before_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(dir.path()).unwrap();
        let p = Principal {
            token_id: 7,
            name: "desk".into(),
            role: Role::Support,
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = log.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                log.record(vec![Entry::by(
                    &p,
                    Utc::now(),
                    Action::Search,
                    Some(&format!("m{i}")),
                    "phone=+12125550100",
                )])
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let conn = crate::store::open_reader(dir.path()).unwrap();
        let rows = list(&conn, None, 1000).unwrap();
        assert_eq!(rows.len(), 50);
        assert!(rows
            .iter()
            .all(|r| r.actor == "desk" && r.role == "support" && r.action == "search"));
        assert_eq!(list(&conn, Some("m3"), 10).unwrap().len(), 1);
    }
}
