//! The local capture socket: how firmware and apps on the device record events while
//! the daemon runs, without starting a process per event.
//!
//! # Line format
//!
//! A Unix stream socket at `socket.path` (default `{data_dir}/agent.sock`, mode 0660).
//! Newline-delimited JSON: one request per line, one response line per request, in order,
//! on a connection that stays open for as many requests as the client likes.
//!
//! Request (`qty`, `at` and `attrs` optional; unknown fields are rejected):
//!
//! ```text
//! {"kind":"brew","qty":1,"at":"2026-11-24T08:00:00Z","attrs":{"drink":"latte"}}
//! ```
//!
//! Responses:
//!
//! ```text
//! {"ok":true,"seq":42}
//! {"ok":true,"seq":43,"clock_suspect":true}
//! {"ok":false,"error":"event kind \"Brew\" may only contain lowercase ASCII letters, ..."}
//! ```
//!
//! - `seq` is the event's sequence number; the event is durably in the outbox before the
//!   response is written. `clock_suspect` appears (as `true`) only when the event was
//!   flagged because the device clock looked wrong.
//! - The same validation and clock rules as `rollcall-agent record` apply (see
//!   [`crate::capture`]).
//! - A line longer than 8 KiB (without its newline) is answered with an error and the rest
//!   of that line is discarded; the connection stays usable. Blank lines are ignored. A
//!   trailing `\r` is tolerated.
//! - When the outbox is full under `when_full = "reject"`, the error names the limit.
//!
//! # Connection limits
//!
//! - At most `socket.max_connections` (default 64) connections are served at once. A
//!   connection beyond that gets one error line
//!   (`{"ok":false,"error":"too many connections ..."}`) and is closed at once.
//! - A connection that neither completes a request line nor takes a response for
//!   `socket.idle_timeout_s` (default 300 s) is closed without a word (an unasked line
//!   would be read as the answer to the client's next request).

use crate::capture::{Capture, CaptureError, RecordRequest};
use serde::Serialize;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Longest request line accepted, in bytes, without its newline.
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// How long connections may go on after shutdown (finishing the request in hand) before
/// they are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Bounds on the connections [`serve`] keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Most connections served at once; further ones are refused with an error line.
    pub max_connections: usize,
    /// A connection that neither sends a request line nor takes a response for this
    /// long is closed.
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Binding or preparing the socket failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Something that is not a socket sits at the path; it is left alone.
    #[error("{}: exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process is serving this socket.
    #[error("{}: another process is already listening here", path.display())]
    InUse {
        /// The path.
        path: PathBuf,
    },
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// Recorded.
    Ok {
        /// Always `true`.
        ok: bool,
        /// The event's seq.
        seq: u64,
        /// Present (and `true`) only when the event was flagged.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        clock_suspect: bool,
    },
    /// Not recorded.
    Err {
        /// Always `false`.
        ok: bool,
        /// Why.
        error: String,
    },
}

impl Response {
    fn error(msg: impl Into<String>) -> Self {
        Response::Err {
            ok: false,
            error: msg.into(),
        }
    }
}

/// Binds the socket at `path`: removes a stale socket file left by a previous run
/// (refusing if someone still listens there, or if the path is not a socket) and sets
/// mode 0660.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io_err)?;
            debug!(path = %path.display(), "Removed a stale socket file");
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

/// Serves connections within `limits` until `shutdown`, then stops accepting, lets each
/// connection finish the request it is handling (for at most [`SHUTDOWN_GRACE`], then
/// aborts the rest), and returns. A response that cannot be written at once after
/// shutdown (the client does not read) is dropped, so a stuck client cannot hold the
/// daemon up.
pub async fn serve(
    listener: UnixListener,
    capture: Capture,
    limits: SocketLimits,
    shutdown: CancellationToken,
) {
    let capture = Arc::new(capture);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (capture, shutdown) = (capture.clone(), shutdown.clone());
                        conns.spawn(async move {
                            handle_connection(stream, capture, limits.idle_timeout, shutdown).await;
                            drop(slot);
                        });
                    }
                    Err(_) => refuse(&stream, limits.max_connections),
                },
                Err(error) => {
                    warn!(%error, "Accepting a socket connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = conns.len(),
            "Capture socket connections still busy after the shutdown grace period; aborting them"
        );
        conns.shutdown().await;
    }
    info!("Capture socket closed");
}

/// Answers a connection beyond the limit with one error line and closes it. Never waits:
/// the line fits the empty send buffer of a new connection, and if it does not, the
/// client gets only the close.
fn refuse(stream: &UnixStream, max: usize) {
    warn!(
        max_connections = max,
        "Capture socket connection refused: too many connections"
    );
    let mut out = serde_json::to_vec(&Response::error(format!(
        "too many connections (socket.max_connections = {max}); try again later"
    )))
    .expect("responses serialise");
    out.push(b'\n');
    let _ = stream.try_write(&out);
}

async fn handle_connection(
    stream: UnixStream,
    capture: Arc<Capture>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = tokio::time::timeout(idle_timeout, read_line(&mut reader, &mut line)) => match got {
                Ok(got) => got,
                Err(_) => {
                    debug!(idle_s = idle_timeout.as_secs_f64(), "Closing an idle socket connection");
                    return;
                }
            },
        };
        let response = match got {
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => Response::error(format!(
                "line longer than {MAX_LINE_BYTES} bytes; discarded"
            )),
            Ok(Line::Complete) => {
                let text = line.strip_suffix(b"\r").unwrap_or(&line);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                handle_request(text, &capture).await
            }
            Err(error) => {
                debug!(%error, "Socket read failed");
                return;
            }
        };
        let mut out = serde_json::to_vec(&response).expect("responses serialise");
        out.push(b'\n');
        // A response the client reads is written even during shutdown; one that blocks
        // (the client does not read) must not hold the shutdown up.
        let written = tokio::select! {
            biased;
            written = tokio::time::timeout(idle_timeout, write.write_all(&out)) => written,
            _ = shutdown.cancelled() => return,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                debug!(
                    idle_s = idle_timeout.as_secs_f64(),
                    "Closing a socket connection that does not read its responses"
                );
                return;
            }
        }
    }
}

async fn handle_request(text: &[u8], capture: &Arc<Capture>) -> Response {
    let req: RecordRequest = match serde_json::from_slice(text) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("bad request: {e}")),
    };
    let result = if capture.outbox().may_block() {
        let c = capture.clone();
        match tokio::task::spawn_blocking(move || c.record(&req)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    } else {
        capture.record(&req)
    };
    match result {
        Ok(r) => Response::Ok {
            ok: true,
            seq: r.seq.get(),
            clock_suspect: r.clock_suspect,
        },
        Err(CaptureError::Invalid(msg)) => Response::error(msg),
        Err(CaptureError::Outbox(e)) => {
            warn!(error = %e, "Socket event not recorded");
            Response::error(e.to_string())
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line is in the buffer (without its newline).
    Complete,
    /// The line was too long and has been skipped up to its newline.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one line into `buf`, never holding more than [`MAX_LINE_BYTES`] of it.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            // EOF: a last line without a newline still counts.
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Complete,
            });
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{MemoryOutbox, Outbox, OutboxLimits, SqliteOutbox};
    use chrono::{DateTime, Utc};
    use rollcall_shared::{Clock, ManualClock};
    use tokio::io::{AsyncReadExt, BufReader};

    fn clock() -> Arc<dyn Clock> {
        let t = DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Arc::new(ManualClock::new(t))
    }

    struct Served {
        _dir: tempfile::TempDir,
        path: PathBuf,
        outbox: Arc<dyn Outbox>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn serve_with(outbox: Arc<dyn Outbox>, dir: tempfile::TempDir) -> Served {
        serve_limited(outbox, dir, SocketLimits::default()).await
    }

    async fn serve_limited(
        outbox: Arc<dyn Outbox>,
        dir: tempfile::TempDir,
        limits: SocketLimits,
    ) -> Served {
        let path = dir.path().join("agent.sock");
        let listener = bind(&path).await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Capture::new(outbox.clone(), clock()),
            limits,
            shutdown.clone(),
        ));
        Served {
            _dir: dir,
            path,
            outbox,
            shutdown,
            task,
        }
    }

    async fn serve_memory(limits: OutboxLimits) -> Served {
        serve_with(
            Arc::new(MemoryOutbox::new(limits, clock())),
            tempfile::tempdir().unwrap(),
        )
        .await
    }

    async fn ask(conn: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
        conn.get_mut().write_all(line).await.unwrap();
        let mut resp = String::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.read_line(&mut resp),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(n > 0, "connection closed");
        serde_json::from_str(&resp).unwrap()
    }

    #[tokio::test]
    async fn requests_round_trip_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let outbox: Arc<dyn Outbox> = Arc::new(
            SqliteOutbox::open(
                &dir.path().join("o.sqlite"),
                OutboxLimits::default(),
                clock(),
            )
            .unwrap(),
        );
        let s = serve_with(outbox, dir).await;
        let mode = std::fs::metadata(&s.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        let mut c = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        let r = ask(&mut c, b"{\"kind\":\"brew\",\"qty\":1,\"at\":\"2026-11-24T08:00:00Z\",\"attrs\":{\"drink\":\"latte\"}}\n").await;
        assert_eq!(r, serde_json::json!({"ok": true, "seq": 1}));
        let r = ask(&mut c, b"{\"kind\":\"brew\"}\r\n\n").await;
        assert_eq!(r, serde_json::json!({"ok": true, "seq": 2}));
        let r = ask(
            &mut c,
            b"{\"kind\":\"brew\",\"at\":\"2030-01-01T00:00:00Z\"}\n",
        )
        .await;
        assert_eq!(
            r,
            serde_json::json!({"ok": true, "seq": 3, "clock_suspect": true})
        );
        let r = ask(&mut c, b"{\"kind\":\"Brew\"}\n").await;
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("event kind"), "{r}");
        let r = ask(&mut c, b"{\"kind\":\"brew\",\"colour\":\"red\"}\n").await;
        assert!(r["error"].as_str().unwrap().contains("colour"), "{r}");
        let r = ask(&mut c, b"not json\n").await;
        assert_eq!(r["ok"], false);
        assert_eq!(s.outbox.stats().unwrap().depth, 3);
        s.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused_and_the_connection_stays_usable() {
        let s = serve_memory(OutboxLimits::default()).await;
        let mut c = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        let mut long = format!(
            "{{\"kind\":\"brew\",\"attrs\":{{\"k\":\"{}\"}}}}",
            "x".repeat(MAX_LINE_BYTES)
        )
        .into_bytes();
        long.push(b'\n');
        let r = ask(&mut c, &long).await;
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("8192"), "{r}");
        let r = ask(&mut c, b"{\"kind\":\"brew\"}\n").await;
        assert_eq!(r, serde_json::json!({"ok": true, "seq": 1}));
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_full_outbox_answers_with_the_limit() {
        let limits = OutboxLimits {
            max_events: 1,
            ..OutboxLimits::default()
        };
        let s = serve_memory(limits).await;
        let mut c = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        assert_eq!(ask(&mut c, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        let r = ask(&mut c, b"{\"kind\":\"brew\"}\n").await;
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("outbox.max_events = 1"),
            "{r}"
        );
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let live = bind(&path).await.unwrap();
        assert!(matches!(bind(&path).await, Err(SocketError::InUse { .. })));
        drop(live);
        let again = bind(&path).await.unwrap();
        drop(again);
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            bind(&file).await,
            Err(SocketError::NotASocket { .. })
        ));
    }

    #[tokio::test]
    async fn the_line_reader_bounds_memory_and_resynchronises() {
        let mut input = vec![b'a'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nok\nlast");
        let mut r = BufReader::with_capacity(64, &input[..]);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Line::TooLong);
        assert!(buf.len() <= MAX_LINE_BYTES);
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Line::Complete);
        assert_eq!(buf, b"ok");
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Line::Complete);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Line::Eof);
        let exact = vec![b'b'; MAX_LINE_BYTES];
        let mut r = BufReader::with_capacity(100, &exact[..]);
        assert_eq!(read_line(&mut r, &mut buf).await.unwrap(), Line::Complete);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn shutdown_finishes_while_a_client_does_not_read_its_responses() {
        let s = serve_memory(OutboxLimits::default()).await;
        let stream = UnixStream::connect(&s.path).await.unwrap();
        // A client that pipelines requests and never reads the answers (stuck, or
        // SIGSTOPped): the server's writes block once the socket buffer is full.
        let writer = tokio::spawn(async move {
            let mut stream = stream;
            for _ in 0..200_000 {
                if stream.write_all(b"{\"kind\":\"brew\"}\n").await.is_err() {
                    break;
                }
            }
            stream
        });
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let recorded = s.outbox.stats().unwrap().depth;
        s.shutdown.cancel();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), s.task).await;
        writer.abort();
        assert!(
            done.is_ok(),
            "serve() still running 5 s after shutdown ({recorded} events recorded)"
        );
    }

    async fn serve_memory_limited(limits: SocketLimits) -> Served {
        serve_limited(
            Arc::new(MemoryOutbox::new(OutboxLimits::default(), clock())),
            tempfile::tempdir().unwrap(),
            limits,
        )
        .await
    }

    /// Reads until the server closes the connection; what it said before.
    async fn read_until_closed(conn: &mut BufReader<UnixStream>) -> String {
        let mut rest = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.read_to_string(&mut rest),
        )
        .await
        .expect("the server closes the connection")
        .unwrap();
        rest
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_get_an_error_line_and_are_closed() {
        let s = serve_memory_limited(SocketLimits {
            max_connections: 2,
            ..SocketLimits::default()
        })
        .await;
        let mut a = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        let mut b = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        assert_eq!(ask(&mut a, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        assert_eq!(ask(&mut b, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        let mut c = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        let said = read_until_closed(&mut c).await;
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines.len(), 1, "{said:?}");
        let r: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("socket.max_connections = 2"),
            "{r}"
        );
        // The served connections are unaffected, and a closed one frees its place.
        assert_eq!(ask(&mut a, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        drop(b);
        let mut served = false;
        for _ in 0..100 {
            let mut d = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
            d.get_mut()
                .write_all(b"{\"kind\":\"brew\"}\n")
                .await
                .unwrap();
            let mut resp = String::new();
            d.read_line(&mut resp).await.unwrap();
            if resp.contains("\"seq\"") {
                served = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(served, "a place freed by a closed connection is reused");
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_but_a_busy_one_is_not() {
        let idle = std::time::Duration::from_millis(300);
        let s = serve_memory_limited(SocketLimits {
            idle_timeout: idle,
            ..SocketLimits::default()
        })
        .await;
        let mut busy = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        let mut quiet = BufReader::new(UnixStream::connect(&s.path).await.unwrap());
        assert_eq!(ask(&mut quiet, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        // Half a line does not count as activity.
        quiet.get_mut().write_all(b"{\"kind\":").await.unwrap();
        let started = std::time::Instant::now();
        // The busy connection lives well past the idle timeout by asking every 100 ms.
        for _ in 0..8 {
            assert_eq!(ask(&mut busy, b"{\"kind\":\"brew\"}\n").await["ok"], true);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            read_until_closed(&mut quiet).await,
            "",
            "closed without a word"
        );
        assert!(started.elapsed() >= idle);
        assert_eq!(ask(&mut busy, b"{\"kind\":\"brew\"}\n").await["ok"], true);
        s.shutdown.cancel();
    }
}
