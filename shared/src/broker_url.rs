//! Broker addresses: `mqtt://host[:port]` (TCP, default port 1883) or
//! `mqtts://host[:port]` (TLS, 8883), as the agent and the cloud configure them. IPv6
//! addresses are written and kept in brackets (`mqtt://[::1]:1883`), the form MQTT clients
//! resolve as `host:port`.

use std::fmt;
use std::str::FromStr;

/// Why a broker URL was refused; the message says what is wrong. It never holds a
/// password: credentials in the URL are replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker URL {url:?}: {why}")]
pub struct BrokerUrlError {
    /// What was given, with any userinfo (`user:password@`) replaced by `***@`.
    pub url: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A broker address: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address (IPv6 addresses keep their brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerUrl {
    /// A plain-TCP broker address.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self {
            tls: false,
            host: host.into(),
            port,
        }
    }

    /// The plain-TCP address of a socket (IPv6 in brackets).
    pub fn from_socket_addr(addr: std::net::SocketAddr) -> Self {
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Self::plain(host, addr.port())
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port
        )
    }
}

/// `url` with everything before its last `@` (the userinfo, which may hold a password),
/// except a leading `scheme://`, replaced by `***`. Errors and logs show this form only.
pub fn redact_userinfo(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let scheme = match url[..at].find("://") {
        Some(i)
            if url[..i]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            &url[..i + 3]
        }
        _ => "",
    };
    format!("{scheme}***{}", &url[at..])
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(s: &str) -> Result<Self, BrokerUrlError> {
        let bad = |why: &'static str| BrokerUrlError {
            url: redact_userinfo(s),
            why,
        };
        let (tls, rest) = match s.split_once("://") {
            Some(("mqtt" | "tcp", r)) => (false, r),
            Some(("mqtts" | "ssl", r)) => (true, r),
            _ => return Err(bad("must start with mqtt:// or mqtts://")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(bad(
                "credentials belong in mqtt.username and mqtt.password, not in the url",
            ));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(bad("must be scheme://host[:port] with no path or query"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .ok_or_else(|| bad("junk after IPv6 address"))?
                    .parse()
                    .map_err(|_| bad("bad port"))?,
            };
            (format!("[{addr}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse::<u16>().map_err(|_| bad("bad port"))?),
                None => (rest.to_owned(), default_port),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("missing host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self { tls, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(
            "mqtt://localhost".parse::<BrokerUrl>().unwrap(),
            BrokerUrl::plain("localhost", 1883)
        );
        let u: BrokerUrl = "mqtts://broker.example:8884/".parse().unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.example", 8884)
        );
        assert_eq!("mqtts://b".parse::<BrokerUrl>().unwrap().port, 8883);
        assert!("ssl://b".parse::<BrokerUrl>().unwrap().tls);
        assert!(!"tcp://b:1".parse::<BrokerUrl>().unwrap().tls);
        let v6: BrokerUrl = "mqtt://[::1]:1884".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", 1884));
        assert_eq!(v6.to_string(), "mqtt://[::1]:1884");
        assert_eq!(
            BrokerUrl::from_socket_addr("[::1]:1884".parse().unwrap()),
            v6
        );
    }

    #[test]
    fn bad_broker_urls_say_why() {
        for (url, why) in [
            ("http://x", "mqtt://"),
            ("localhost:1883", "mqtt://"),
            ("mqtt://", "missing host"),
            ("mqtt://x:notaport", "bad port"),
            ("mqtt://x:0", "port 0"),
            ("mqtt://user:pw@x", "mqtt.username"),
            ("mqtt://x/path", "no path"),
            ("mqtt://[::1", "unclosed"),
        ] {
            let e = url.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn errors_never_show_the_password_of_a_url_with_credentials() {
        for url in [
            "mqtt://user:hunter2@broker:1883",
            "http://user:hunter2@broker",
            "user:hunter2@broker:1883",
            "mqtt://user:hunter2@broker/path",
            "mqtt://user:hun/ter2@broker",
            "mqtts://user:hunter2@[::1",
            "mqtt://hunter2@broker:notaport",
        ] {
            let e = url.parse::<BrokerUrl>().unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("ter2"),
                "{url}: {shown}"
            );
            assert!(shown.contains("***@"), "{url}: {shown}");
        }
        let e = "mqtt://user:hunter2@broker:1883"
            .parse::<BrokerUrl>()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "broker URL \"mqtt://***@broker:1883\": credentials belong in mqtt.username and mqtt.password, not in the url"
        );
    }
}
