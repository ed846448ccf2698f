//! E-mail over SMTP with lettre (rustls; no native TLS). `delivery.smtp.security` is
//! `none` (plain, for a local relay), `starttls` or `tls`. The delivery's idempotency key
//! becomes the `Message-ID`, so a re-sent e-mail can be recognised. SMTP 5xx answers are
//! permanent (`dead` at once), 4xx and connection failures are retried. A marketing
//! e-mail carries the member's opt-out link as `List-Unsubscribe` with
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 2369, RFC 8058), which mail
//! clients turn into their own unsubscribe button and large mailbox providers require of
//! bulk senders.

use super::dispatcher::Attempt;
use super::EmailPayload;
use crate::config::SmtpConfig;
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
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

/// `List-Unsubscribe: <URL>` (RFC 2369).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let url = s
            .trim()
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .ok_or("List-Unsubscribe is not <URL>")?;
        Ok(Self(url.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): the URL in
/// [`ListUnsubscribe`] takes a POST without further confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        if s.trim() == "List-Unsubscribe=One-Click" {
            Ok(Self)
        } else {
            Err("List-Unsubscribe-Post is not List-Unsubscribe=One-Click".into())
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
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

    /// The e-mail for payload `p` to `to`, with `key` as its `Message-ID`.
    fn message(
        &self,
        to: lettre::Address,
        key: &str,
        p: EmailPayload,
    ) -> Result<Message, lettre::error::Error> {
        let mut msg = Message::builder()
            .from(self.from.clone())
            .to(to.into())
            .subject(p.subject)
            .message_id(Some(format!("<{}@rollcall>", key.replace(':', "."))))
            .header(ContentType::TEXT_PLAIN);
        if let Some(url) = p.unsubscribe {
            // Only an https link may be one-click (RFC 8058 section 3.1); a plain http one
            // (a local `public_url`) is still offered, as RFC 2369 allows.
            let one_click = url.starts_with("https://");
            msg = msg.header(ListUnsubscribe(url));
            if one_click {
                msg = msg.header(ListUnsubscribePost);
            }
        }
        msg.body(p.body)
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
        let msg = match self.message(to, key, p) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(unsubscribe: Option<&str>) -> String {
        let cfg = SmtpConfig {
            host: "127.0.0.1".into(),
            from: "hello@beanthere.example".into(),
            ..SmtpConfig::default()
        };
        let sender = EmailSender::new(&cfg, Duration::from_secs(1)).unwrap();
        let p = EmailPayload {
            subject: "Hello".into(),
            body: "Hi".into(),
            unsubscribe: unsubscribe.map(str::to_owned),
        };
        let m = sender
            .message("maria@example.com".parse().unwrap(), "outreach:1", p)
            .unwrap();
        String::from_utf8(m.formatted()).unwrap()
    }

    #[test]
    fn only_marketing_mail_offers_the_unsubscribe_and_only_an_https_link_is_one_click() {
        let none = headers(None);
        assert!(!none.contains("List-Unsubscribe"), "{none}");
        let https = headers(Some("https://x.example/api/v1/optout?token=a.b"));
        assert!(
            https.contains("List-Unsubscribe: <https://x.example/api/v1/optout?token=a.b>\r\n")
                && https.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{https}"
        );
        let http = headers(Some("http://127.0.0.1:8080/api/v1/optout?token=a.b"));
        assert!(
            http.contains("List-Unsubscribe: <http://127.0.0.1:8080/api/v1/optout?token=a.b>")
                && !http.contains("List-Unsubscribe-Post"),
            "{http}"
        );
        assert_eq!(
            ListUnsubscribe::parse(" <https://x.example/u> ").unwrap(),
            ListUnsubscribe("https://x.example/u".into())
        );
        assert!(ListUnsubscribe::parse("https://x.example/u").is_err());
        assert!(ListUnsubscribePost::parse("List-Unsubscribe=One-Click").is_ok());
        assert!(ListUnsubscribePost::parse("yes").is_err());
    }
}
