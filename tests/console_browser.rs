//! The web console in a real headless Chromium, driven over WebDriver (chromedriver):
//! sign in with a token, search by a phone number written in a local format, see the
//! member card with the greeting and the chart, open the engagement dashboard and follow
//! a lapsing member's link, and watch the screen-pop change by itself when a call comes
//! in. Screenshots go to `target/screenshots/`.
//!
//! Every page is also checked for accessibility with axe-core (the WCAG 2.1 A and AA
//! rules: labels, contrast, names, structure; reports next to the screenshots), the
//! search is done with the keyboard alone (Tab to the search box, Enter), every focused
//! control shows a focus ring (an outline of at least 2 px), and the card and dashboard
//! fit a tablet's width.
//!
//! Skipped (with a message) when Chromium or chromedriver is missing, unless
//! `ROLLCALL_REQUIRE_INTEROP` is set, as in CI, which installs them. axe-core comes from
//! npm (`npm ci --prefix tests/a11y`, done by `.ci/run`); without it the accessibility
//! rules are skipped with a message, unless `ROLLCALL_REQUIRE_INTEROP` is set.

use anyhow::{Context, Result};
use chrono::{Duration, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use rollcall::testkit::{free_port, wait_for, TestCloud};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_none(),
            "chromium and chromium-driver are required when ROLLCALL_REQUIRE_INTEROP is set"
        );
        eprintln!("SKIPPED: console browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)");
    }
    present
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start_browser() -> Result<(Driver, Client)> {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("chromedriver starts")?;
    let driver = Driver(child);
    wait_for("chromedriver", std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    let profile = tempfile::tempdir()?.keep();
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = match caps {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .context("WebDriver session")?;
    Ok((driver, client))
}

/// A cloud with four members: Maria and Ines (daily, active), Omar (every other day,
/// silent for 16 days: lapsing) and Sven (silent for 20: lapsed); scored day by day over
/// the last week, with a support token.
fn cloud() -> Result<(TestCloud, String)> {
    // Prepare the store before the cloud starts, so its scorer does not run ahead of the
    // week of daily scoring runs below.
    let mut c = TestCloud::stopped(None)?;
    let members = [
        (
            "m-maria",
            "Maria Rossi",
            "+12125550142",
            0i64,
            60i64,
            1usize,
        ),
        ("m-omar", "Omar Haddad", "+13125550177", 16, 80, 2),
        ("m-sven", "Sven Olsen", "+14155550190", 20, 80, 2),
        ("m-ines", "Ines Duarte", "+16465550111", 0, 50, 1),
    ];
    let now = Utc::now();
    let mut csv = String::from("member_id,occurred_at,kind,qty\n");
    for (id, name, phone, silent, days, step) in members {
        let joined = (now - Duration::days(days + silent + 5))
            .format("%Y-%m-%d")
            .to_string();
        c.cli(&[
            "members",
            "add",
            "--id",
            id,
            "--name",
            name,
            "--phone",
            phone,
            "--email",
            &format!("{id}@example.com"),
            "--tz",
            "UTC",
            "--joined",
            &joined,
        ])?;
        for d in (silent..silent + days).step_by(step) {
            let at = (now - Duration::days(d) - Duration::hours(1)).to_rfc3339();
            csv.push_str(&format!("{id},{at},brew,1\n"));
        }
    }
    let file = c.data_dir.join("usage.csv");
    std::fs::write(&file, csv)?;
    c.cli(&["usage", "import", file.to_str().unwrap()])?;
    for d in (0..8).rev() {
        let at = (now - Duration::days(d)).to_rfc3339();
        c.cli(&["score", "--as-of", &at])?;
    }
    let out = c.cli(&["tokens", "create", "--role", "support", "--name", "browser"])?;
    let token = out.lines().last().context("token line")?.trim().to_owned();
    c.spawn()?;
    Ok((c, token))
}

/// axe-core's script, from `tests/a11y/node_modules` (`npm ci --prefix tests/a11y`).
fn axe_source() -> Option<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/a11y/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(
                std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_none(),
                "{} is required when ROLLCALL_REQUIRE_INTEROP is set (npm ci --prefix tests/a11y): {e}",
                path.display()
            );
            eprintln!(
                "SKIPPED: accessibility rules need {} (npm ci --prefix tests/a11y)",
                path.display()
            );
            None
        }
    }
}

/// Runs axe-core's WCAG 2.1 A/AA rules on the page now shown, writes its violations and
/// the number of rules passed to `a11y-{name}.json` beside the screenshots, and fails
/// listing every violation.
async fn check_accessibility(b: &Client, axe: Option<&str>, name: &str) -> Result<()> {
    let Some(axe) = axe else { return Ok(()) };
    b.execute(axe, Vec::new())
        .await
        .context("injecting axe-core")?;
    let result = b
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               axe.run(document, { runOnly: { type: 'tag',
                   values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } })
                 .then(r => done({ violations: r.violations, passes: r.passes.length }))
                 .catch(e => done({ error: String(e) }));"#,
            Vec::new(),
        )
        .await
        .context("running axe-core")?;
    std::fs::write(
        screenshots().join(format!("a11y-{name}.json")),
        serde_json::to_vec_pretty(&result)?,
    )?;
    anyhow::ensure!(
        result["error"].is_null(),
        "axe-core failed on {name}: {}",
        result["error"]
    );
    anyhow::ensure!(
        result["passes"].as_u64().unwrap_or(0) > 10,
        "axe-core checked next to nothing on {name}: {result}"
    );
    let violations = result["violations"].as_array().context("violations")?;
    let listed: Vec<String> = violations
        .iter()
        .map(|v| {
            let nodes: Vec<String> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    format!(
                        "{} ({})",
                        n["target"],
                        n["failureSummary"]
                            .as_str()
                            .unwrap_or("")
                            .replace('\n', " ")
                    )
                })
                .collect();
            format!(
                "{} [{}]: {} on {}",
                v["id"],
                v["impact"],
                v["help"],
                nodes.join("; ")
            )
        })
        .collect();
    anyhow::ensure!(
        listed.is_empty(),
        "accessibility violations on {name}:\n{}",
        listed.join("\n")
    );
    Ok(())
}

/// Presses Tab once (a real key press, through WebDriver's actions).
async fn press_tab(b: &Client) -> Result<()> {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    use fantoccini::key::Key;
    let tab = char::from(Key::Tab);
    b.perform_actions(
        KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: tab })
            .then(KeyAction::Up { value: tab }),
    )
    .await?;
    Ok(())
}

/// The focused element: its id, and whether a focus ring (an outline at least 2 px wide)
/// shows.
async fn focused(b: &Client) -> Result<(String, bool)> {
    let v = b
        .execute(
            "const e = document.activeElement; const s = getComputedStyle(e);
             return [e.id || e.tagName.toLowerCase(),
                     s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2];",
            Vec::new(),
        )
        .await?;
    Ok((
        v[0].as_str().unwrap_or_default().to_owned(),
        v[1].as_bool().unwrap_or(false),
    ))
}

/// The page now shown, on a tablet held upright (820 × 1180 CSS pixels, as an iPad Air),
/// needs no sideways scrolling; its screenshot is `console-{page}-tablet.png`. The window
/// goes back to the laptop size afterwards.
async fn fits_a_tablet(b: &Client, page: &str) -> Result<()> {
    b.set_window_size(820, 1180).await?;
    let wide = b
        .execute(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth + 1;",
            Vec::new(),
        )
        .await?;
    std::fs::write(
        screenshots().join(format!("console-{page}-tablet.png")),
        b.screenshot().await?,
    )?;
    b.set_window_size(1280, 1400).await?;
    anyhow::ensure!(
        wide.as_bool() == Some(false),
        "the {page} page is wider than a tablet ({wide})"
    );
    Ok(())
}

async fn text_of(client: &Client, css: &str) -> Result<String> {
    Ok(client.find(Locator::Css(css)).await?.text().await?)
}

async fn call(c: &TestCloud, token: &str, from: &str, sid: &str) -> Result<String> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/v1/telephony/incoming", c.http_url))
        .bearer_auth(token)
        .form(&[("CallSid", sid), ("From", from), ("To", "+18005550100")])
        .send()
        .await?;
    anyhow::ensure!(res.status().is_success(), "call refused: {}", res.status());
    Ok(res.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_find_a_caller_by_a_local_number_and_follow_a_lapsing_member() -> Result<()> {
    if !browser_available() {
        return Ok(());
    }
    let (cloud, token) = tokio::task::spawn_blocking(cloud).await??;
    let (_driver, b) = start_browser().await?;
    let shots = screenshots();
    let axe = axe_source();
    let axe = axe.as_deref();
    let result = async {
        // Signing in is required: the console sends us to the sign-in page.
        b.goto(&format!("{}/console", cloud.http_url)).await?;
        assert!(b.current_url().await?.path().starts_with("/console/login"));
        check_accessibility(&b, axe, "login").await?;
        b.find(Locator::Css("#token"))
            .await?
            .send_keys(&token)
            .await?;
        b.find(Locator::Css("#sign-in")).await?.click().await?;
        wait_page(&b, "/console/search").await?;
        check_accessibility(&b, axe, "search").await?;

        // With the keyboard alone: from the top of the page, Tab reaches the search box
        // (every stop on the way shows a focus ring), the number is typed as a caller
        // would say it, and Enter searches; one match opens the card.
        b.execute(
            "const body = document.body; body.setAttribute('tabindex', '-1'); body.focus();
             body.removeAttribute('tabindex'); window.scrollTo(0, 0);",
            Vec::new(),
        )
        .await?;
        let mut stops = Vec::new();
        loop {
            press_tab(&b).await?;
            let (id, ring) = focused(&b).await?;
            anyhow::ensure!(ring, "no visible focus on {id} (after {stops:?})");
            stops.push(id.clone());
            if id == "q" {
                break;
            }
            anyhow::ensure!(
                stops.len() < 12,
                "Tab never reached the search box: {stops:?}"
            );
        }
        assert_eq!(
            stops[0], "skip",
            "the first Tab stop is the skip link: {stops:?}"
        );
        b.active_element()
            .await?
            .send_keys(&format!(
                "(212) 555-0142{}",
                char::from(fantoccini::key::Key::Enter)
            ))
            .await?;
        wait_page(&b, "/console/members/m-maria").await?;
        let greeting = text_of(&b, "#greeting").await?;
        assert!(
            greeting.starts_with("Hi Maria — I see your machine made"),
            "{greeting}"
        );
        // "1 coffee" on the first of a month, "23 coffees" later on.
        assert!(
            greeting.contains(" coffee") && greeting.contains("this month"),
            "{greeting}"
        );
        assert!(greeting.contains("60-day streak"), "{greeting}");
        assert!(text_of(&b, "#member-name")
            .await?
            .starts_with("Maria Rossi"));
        assert_eq!(text_of(&b, "#state").await?, "active");
        let chart = b.find(Locator::Css("svg.chart")).await?;
        let label = chart.attr("aria-label").await?.unwrap_or_default();
        assert!(
            label.starts_with("Daily use over the last 90 days: 60 uses"),
            "{label}"
        );
        assert_eq!(b.find_all(Locator::Css("svg.chart rect")).await?.len(), 60);
        std::fs::write(shots.join("console-member.png"), b.screenshot().await?)?;
        check_accessibility(&b, axe, "member").await?;
        fits_a_tablet(&b, "member").await?;

        // The dashboard: counts by state, the chart, and the lapsing list with links.
        b.goto(&format!("{}/console/dashboard", cloud.http_url))
            .await?;
        let counts = text_of(&b, "#counts").await?;
        let words: Vec<&str> = counts.split_whitespace().collect();
        let count = |state: &str| -> u64 {
            let i = words.iter().position(|w| *w == state).expect(state);
            words[i - 1].parse().unwrap()
        };
        assert_eq!((count("lapsing"), count("lapsed")), (1, 1), "{counts}");
        let states = ["new", "active", "champion", "lapsing", "lapsed"];
        assert_eq!(states.map(count).iter().sum::<u64>(), 4, "{counts}");
        assert_eq!(
            b.find_all(Locator::Css("svg.chart polyline")).await?.len(),
            5,
            "a line per state"
        );
        std::fs::write(shots.join("console-dashboard.png"), b.screenshot().await?)?;
        check_accessibility(&b, axe, "dashboard").await?;
        fits_a_tablet(&b, "dashboard").await?;
        let link = b.find(Locator::Css("a.lapsing-member")).await?;
        let name = link.text().await?;
        link.click().await?;
        wait_page(&b, "/console/members/").await?;
        assert_eq!(name, "Omar Haddad");
        assert_eq!(text_of(&b, "#state").await?, "lapsing");
        assert!(text_of(&b, "#member-name").await?.starts_with(&name));
        let greeting = text_of(&b, "#greeting").await?;
        assert!(greeting.contains("quiet spell"), "{greeting}");
        std::fs::write(
            shots.join("console-lapsing-member.png"),
            b.screenshot().await?,
        )?;

        // The screen-pop shows the caller's card, and changes by itself on the next call.
        let twiml = call(&cloud, &token, "212-555-0142", "CA-browser-1").await?;
        assert!(twiml.contains("Hi Maria,"), "{twiml}");
        b.goto(&format!("{}/console/calls", cloud.http_url)).await?;
        assert!(text_of(&b, "#greeting").await?.starts_with("Hi Maria"));
        call(&cloud, &token, "+1 646 555 0111", "CA-browser-2").await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let g = text_of(&b, "#greeting").await.unwrap_or_default();
            if g.starts_with("Hi Ines") {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the screen-pop did not refresh: {g}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        std::fs::write(shots.join("console-screen-pop.png"), b.screenshot().await?)?;
        check_accessibility(&b, axe, "screen-pop").await?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    b.close().await.ok();
    result
}

async fn wait_page(b: &Client, path_prefix: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let url = b.current_url().await?;
        if url.path().starts_with(path_prefix) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "expected {path_prefix}, still on {url}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
