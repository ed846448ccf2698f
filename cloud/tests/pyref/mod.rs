//! Running an independent Python reference implementation from a test: whether python3
//! is there (mandatory when `ROLLCALL_REQUIRE_INTEROP` is set, as CI does), running a
//! script with input on stdin, and the tolerance the comparisons use.

/// True when python3 runs; otherwise prints that the test is skipped and returns false,
/// or fails the test when `ROLLCALL_REQUIRE_INTEROP` is set.
pub fn python3_available() -> bool {
    let required = std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_some();
    let have = std::process::Command::new("python3")
        .args(["-c", "import math"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            !required,
            "python3 is required when ROLLCALL_REQUIRE_INTEROP is set"
        );
        eprintln!("SKIPPED: python3 is not available");
    }
    have
}

/// Runs `script` with `input` on stdin and parses its stdout as JSON.
pub fn run<T: serde::de::DeserializeOwned>(script: &str, input: &str) -> T {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("the script reads its input");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(out.status.success(), "the reference script failed");
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Equal to 1e-9, relative to the larger of |b| and 1.
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}
