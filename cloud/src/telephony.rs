//! Incoming calls: a Twilio-style voice webhook. The caller's number is looked up; a
//! recognised caller is greeted by first name only (caller id can be spoofed, so nothing
//! about their usage is said to the caller) and a screen-pop is recorded for staff, who
//! see the member's card in the console.
//!
//! Requests are authenticated by `X-Twilio-Signature` (HMAC-SHA1 with the account's auth
//! token over the full request URL followed by every POST parameter, sorted by name, as
//! name and value concatenated; base64) when `[telephony] auth_token` is set. Without an
//! auth token the route requires a `support` or `admin` bearer token instead, so it is
//! never open to the world.

use crate::domain::PhoneNumber;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rusqlite::{params, Connection};
use serde::Serialize;
use sha1::Sha1;

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// Computes the `X-Twilio-Signature` of a request to `url` with these POST parameters.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Checks a presented `X-Twilio-Signature` in constant time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], presented: &str) -> bool {
    match base64::engine::general_purpose::STANDARD.decode(presented.trim()) {
        Ok(p) => mac(auth_token, url, params).verify_slice(&p).is_ok(),
        Err(_) => false,
    }
}

/// Escapes text for XML element content and attributes.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// The TwiML answer: greets by first name when the caller is known, never more.
pub fn twiml(first_name: Option<&str>, business: &str) -> String {
    let said = match first_name {
        Some(n) => format!(
            "Hi {}, thanks for calling {}. One moment while we connect you.",
            xml_escape(n),
            xml_escape(business)
        ),
        None => format!(
            "Thanks for calling {}. One moment while we connect you.",
            xml_escape(business)
        ),
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say>{said}</Say></Response>")
}

/// A recorded incoming call, as the screen-pop shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallView {
    /// Row id (increases with every new call).
    pub id: i64,
    /// The telephony provider's call id.
    pub call_sid: String,
    /// Caller number as received (E.164 when it parsed).
    pub from: String,
    /// The member it matched, if any.
    pub member_id: Option<String>,
    /// When it came in.
    pub received_at: String,
}

/// Records a call once per `call_sid` (the provider retries webhooks). Returns the row id.
pub fn record_call(
    conn: &Connection,
    call_sid: &str,
    from: &str,
    to: Option<&str>,
    member_id: Option<&str>,
    now_ms: i64,
) -> Result<i64, rusqlite::Error> {
    conn.execute(
        "INSERT INTO calls (call_sid, from_number, to_number, member_id, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(call_sid) DO NOTHING",
        params![call_sid, from, to, member_id, now_ms],
    )?;
    conn.query_row(
        "SELECT id FROM calls WHERE call_sid = ?1",
        [call_sid],
        |r| r.get(0),
    )
}

/// The most recent calls, newest first; with `member`, only that member's.
pub fn recent_calls(
    conn: &Connection,
    member: Option<&str>,
    limit: u32,
) -> Result<Vec<CallView>, rusqlite::Error> {
    let mut st = conn.prepare_cached(
        "SELECT id, call_sid, from_number, member_id, received_ms FROM calls
         WHERE ?1 IS NULL OR member_id = ?1 ORDER BY id DESC LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![member, limit], |r| {
        Ok(CallView {
            id: r.get(0)?,
            call_sid: r.get(1)?,
            from: r.get(2)?,
            member_id: r.get(3)?,
            received_at: crate::registry::ms_to_rfc3339(r.get(4)?),
        })
    })?;
    rows.collect()
}

/// The caller's number in E.164, if it is a real number (withheld numbers are not).
pub fn caller_number(from: &str, default_region: &str) -> Option<PhoneNumber> {
    PhoneNumber::parse(from, default_region).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio_example() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    #[test]
    fn the_signature_matches_twilios_published_example() {
        // Twilio's request-validation example: auth token 12345, this URL and these fields.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let mut params = twilio_example();
        assert_eq!(
            signature("12345", url, &params),
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        );
        params.reverse();
        assert!(verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify(
            "12346",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        assert!(!verify("12345", url, &params, "not base64!"));
        params[0].1.push('0');
        assert!(!verify(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
    }

    #[test]
    fn twiml_says_the_first_name_only_and_escapes_it() {
        let t = twiml(Some("<Ann & Co>"), "Beans");
        assert!(t.contains("<Say>Hi &lt;Ann &amp; Co&gt;, thanks for calling Beans."));
        assert!(twiml(None, "Beans").contains("<Say>Thanks for calling Beans."));
    }

    #[test]
    fn a_call_is_recorded_once_per_call_sid() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::store::open_writer(dir.path()).unwrap();
        let a = record_call(&c, "CA1", "+12125550142", None, None, 1).unwrap();
        let b = record_call(&c, "CA1", "+12125550142", None, None, 2).unwrap();
        assert_eq!(a, b);
        record_call(&c, "CA2", "anonymous", None, None, 3).unwrap();
        let calls = recent_calls(&c, None, 10).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].call_sid, "CA2");
        assert!(caller_number("anonymous", "US").is_none());
        assert_eq!(
            caller_number("(212) 555-0142", "US").unwrap().as_str(),
            "+12125550142"
        );
    }
}
