//! One line for an error and its causes, as the binaries print it before they exit.

/// `error` and each cause behind it, joined by `": "`, leaving out a cause whose text the
/// line already holds (many errors print their cause themselves and also report it as their
/// `source`; printing both would say the same thing twice).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A configuration file's parse error as users read it: the dotted key first
/// (`ingest.batch_max_reports: …`; the table for an unknown key), then the parser's
/// message (which gives the line), with Rust's type names put in words. `path` is the
/// key's path as `serde_path_to_error` prints it (`.` or empty at the top level).
pub fn config_parse_message(path: &str, message: &str) -> String {
    let mut message = message.to_owned();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        (
            "invalid socket address syntax",
            "not an address with a port (HOST:PORT, e.g. 127.0.0.1:8080)",
        ),
    ] {
        message = message.replace(rust, words);
    }
    if path.is_empty() || path == "." {
        message
    } else {
        format!("{path}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_message_names_the_key_and_says_the_type_in_words() {
        assert_eq!(
            config_parse_message(
                "uplink.batch_max_events",
                "invalid type: string \"x\", expected u32"
            ),
            "uplink.batch_max_events: invalid type: string \"x\", expected a whole number"
        );
        assert_eq!(
            config_parse_message(".", "unknown field `x`"),
            "unknown field `x`"
        );
        assert_eq!(config_parse_message("", "oops"), "oops");
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("config.toml: cannot read: {0}")]
        Repeats(#[source] std::io::Error),
        #[error("config.toml: cannot read")]
        Hides(#[source] std::io::Error),
    }

    #[test]
    fn a_cause_is_printed_once_whether_or_not_the_message_holds_it() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            error_line(&Outer::Repeats(io())),
            "config.toml: cannot read: no such file"
        );
        assert_eq!(
            error_line(&Outer::Hides(io())),
            "config.toml: cannot read: no such file"
        );
    }
}
