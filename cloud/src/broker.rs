//! The embedded MQTT broker (rumqttd), for the one-box default. Fleets that outgrow
//! it point `[broker] url` at an external broker instead; nothing else changes.

use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Largest message the embedded broker accepts: twice the protocol's envelope limit, so
/// that an oversize report still reaches ingest and is quarantined as `too_large` (and
/// counted) instead of vanishing at the broker; past this the broker drops the connection.
pub const BROKER_MAX_PAYLOAD: usize = 2 * MAX_ENVELOPE_BYTES;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address could not be bound.
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker's configuration was refused.
    #[error("embedded broker configuration: {0}")]
    Config(String),
    /// The broker did not accept connections in time.
    #[error("embedded broker did not accept connections on {0} within 10 s")]
    NotReady(SocketAddr),
}

/// A running embedded broker. Its threads live as long as the process.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedBroker {
    /// The address it listens on (the real port when port 0 was asked for).
    pub addr: SocketAddr,
}

/// Starts rumqttd on `listen` (port 0 picks a free port) and waits until it accepts.
pub fn start(listen: SocketAddr, max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds its own listener and does not report the port, so resolve port 0
    // here. Another process could take the port in between; start-up then fails clearly.
    let addr = if listen.port() == 0 {
        let l = TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
        l.local_addr().map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?
    } else {
        // Fail early and clearly if the port is taken (rumqttd would only log it).
        drop(
            TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
                addr: listen,
                source,
            })?,
        );
        listen
    };
    let toml_cfg = format!(
        r#"
id = 0
[router]
id = 0
max_connections = {max_connections}
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = {max_payload}
    max_inflight_count = 1000
    dynamic_filters = true
"#,
        max_payload = BROKER_MAX_PAYLOAD,
    );
    let config: rumqttd::Config =
        toml::from_str(&toml_cfg).map_err(|e| BrokerError::Config(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped");
            }
        })
        .map_err(|e| BrokerError::Config(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(addr).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::NotReady(addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "Embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

/// Whether the broker at `addr` answers: an MQTT connect, its acceptance, a clean
/// disconnect (a bare TCP connection would make the broker log an error for the
/// connect packet it never got).
fn probe(addr: SocketAddr) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = bytes::BytesMut::new();
    rumqttc::Connect::new("rollcall-ready-probe")
        .write(&mut buf)
        .map_err(std::io::Error::other)?;
    s.write_all(&buf)?;
    // CONNACK: type 2, remaining length 2, flags, return code 0 (accepted).
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
        return Err(std::io::Error::other(format!(
            "the broker refused the readiness probe: {ack:02x?}"
        )));
    }
    buf.clear();
    rumqttc::Disconnect
        .write(&mut buf)
        .map_err(std::io::Error::other)?;
    s.write_all(&buf)?;
    // Let the broker close the connection (closing first makes it log an error).
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(())
}
