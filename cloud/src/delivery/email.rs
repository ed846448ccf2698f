//! E-mail over SMTP with lettre (rustls; no native TLS). `delivery.smtp.security` is
//! `none` (plain, for a local relay), `starttls` or `tls`. The delivery's idempotency key
//! becomes the `Message-ID`, so a re-sent e-mail can be recognised. SMTP 5xx answers are
//! permanent (`dead` at once), 4xx and connection failures are retried.

use super::dispatcher::Attempt;
use super::EmailPayload;
use crate::config::SmtpConfig;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Why the SMTP transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// lettre refused the settings (bad host for TLS).
    #[error("smtp: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The From address does not parse.
    #[error("delivery.smtp.from: {0}")]
    From(#[from] lettre::address::AddressError),
}

/// Sends e-mails through one SMTP server.
#[derive(Clone)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSender")
            .field("from", &self.from)
            .finish()
    }
}

impl EmailSender {
    /// A sender for `cfg`, with `timeout` per command.
    pub fn new(cfg: &SmtpConfig, timeout: Duration) -> Result<Self, EmailError> {
        let b = match cfg.security.as_str() {
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host)?,
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host)?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
        };
        let mut b = b.port(cfg.port).timeout(Some(timeout));
        if !cfg.username.is_empty() {
            b = b.credentials(Credentials::new(
                cfg.username.clone(),
                cfg.password.expose().to_owned(),
            ));
        }
        Ok(Self {
            transport: b.build(),
            from: cfg.from.parse::<lettre::Address>()?.into(),
        })
    }

    /// Sends the payload (an [`EmailPayload`]) to `to`.
    pub async fn send(&self, to: &str, key: &str, payload: &str) -> Attempt {
        let p: EmailPayload = match serde_json::from_str(payload) {
            Ok(p) => p,
            Err(e) => {
                return Attempt::Permanent {
                    error: format!("bad e-mail payload: {e}"),
                }
            }
        };
        let to: lettre::Address = match to.parse() {
            Ok(a) => a,
            Err(e) => {
                return Attempt::Permanent {
                    error: format!("bad address {to:?}: {e}"),
                }
            }
        };
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to.into())
            .subject(p.subject)
            .message_id(Some(format!("<{}@rollcall>", key.replace(':', "."))))
            .header(ContentType::TEXT_PLAIN)
            .body(p.body);
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                return Attempt::Permanent {
                    error: format!("cannot build the e-mail: {e}"),
                }
            }
        };
        match self.transport.send(msg).await {
            Ok(r) => Attempt::Delivered {
                code: Some(u16::from(r.code())),
            },
            Err(e) => {
                let code = e.status().map(u16::from);
                if e.is_permanent() {
                    Attempt::Permanent {
                        error: format!("smtp: {e}"),
                    }
                } else {
                    Attempt::Retry {
                        code,
                        error: format!("smtp: {e}"),
                    }
                }
            }
        }
    }
}
