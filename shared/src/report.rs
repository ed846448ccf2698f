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

#[cfg(test)]
mod tests {
    use super::*;

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
