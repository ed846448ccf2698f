//! `rollcall bench lookup`: the support API under load, against the real cloud binary.
//!
//! Method:
//! 1. **Data.** A store with `members` members (ids `b000001`…, realistic names, distinct
//!    valid E.164 phones in the fictional `555` exchange of many US area codes, e-mails,
//!    IANA time zones), one device each, and `events` usage events spread over the last
//!    120 days with a rhythm of each member's own (some members stopped, some joined
//!    recently), bulk-inserted with prepared statements in large transactions
//!    (`synchronous = OFF` during the build only). Everyone is then scored once, as
//!    `rollcall-cloud score` does, so every member has a state. A store already in
//!    `--data-dir` with the same number of members is reused as it is.
//! 2. **Server.** The release `rollcall-cloud serve` runs as a child process on loopback
//!    ports with background scoring, outreach and delivery off, so the figures are the
//!    API's alone. A `support` token is created with `rollcall-cloud tokens create`.
//! 3. **Load.** First a closed loop: `connections` tasks, each with its own HTTP/1.1
//!    keep-alive client (so exactly that many TCP connections), each sending
//!    `GET /api/v1/lookup?phone=…&include=greeting` for a random member's phone as soon as
//!    its previous answer has been read in full: the server's throughput (latency there
//!    is mostly queueing: p50 ≈ connections ÷ throughput). Then an open loop over the same
//!    number of connections at `rate` requests/s in all, each connection on a fixed
//!    schedule, latency counted from each request's scheduled start (so a server that
//!    falls behind shows it). Each load has two seconds of warm-up that are not counted;
//!    then every request started in the next `seconds` is timed to the last byte of the
//!    body. Anything but `200` (or a transport error) is an error. Percentiles are
//!    nearest-rank over all timed requests. Then 200 sequential
//!    `GET /api/v1/engagement/summary?days=90` on an idle server.
//! 4. The server gets SIGTERM and is waited for.

use crate::testkit::{run_ok, Proc};
use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Parameters of `rollcall bench lookup`.
#[derive(Debug, Clone)]
pub struct LookupBench {
    /// Members in the store.
    pub members: usize,
    /// Usage events in the store (all members together).
    pub events: usize,
    /// Concurrent connections of the closed loop.
    pub connections: usize,
    /// Seconds measured (after the warm-up), for each load.
    pub seconds: u64,
    /// Requests per second of the open-loop load (all connections together); 0 skips it.
    pub rate: f64,
    /// Data directory (reused when it holds a store with `members` members); default: a
    /// new temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Keep the temporary data directory.
    pub keep: bool,
    /// The server's `[http] audit_sync`.
    pub audit_sync: AuditSync,
}

/// `[http] audit_sync` of the server under test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// Answer once the audit row is fsynced (the default).
    #[default]
    Full,
    /// Answer once the audit row is in the write-ahead file.
    Normal,
}

impl AuditSync {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSync::Full => "full",
            AuditSync::Normal => "normal",
        }
    }
}

impl Default for LookupBench {
    fn default() -> Self {
        Self {
            members: 100_000,
            events: 10_000_000,
            connections: 200,
            seconds: 20,
            rate: 1_000.0,
            data_dir: None,
            keep: false,
            audit_sync: AuditSync::Full,
        }
    }
}

/// Latencies of a load run (closed or open loop).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadFigures {
    /// Requests started (and finished) in the measured window.
    pub requests: u64,
    /// `requests` per second of the measured window.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
    /// Answers other than `200`, and transport errors.
    pub errors: u64,
    /// Share of the machine's CPU time the hypervisor gave to other guests during the
    /// load, warm-up included, in percent (`/proc/stat`; null where unknown). Runs with
    /// much steal have longer tails whatever the server does.
    pub host_steal_pct: Option<f64>,
}

/// An open-loop run: the rate asked for and what came of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RateFigures {
    /// Requests per second scheduled (all connections together).
    pub rate: f64,
    /// Latencies, from each request's scheduled start to the last byte of its answer.
    #[serde(flatten)]
    pub load: LoadFigures,
}

/// Latencies of sequential requests on an otherwise idle server.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SequentialFigures {
    /// Requests sent.
    pub requests: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
}

/// The JSON object `rollcall bench lookup` prints.
#[derive(Debug, Clone, Serialize)]
pub struct LookupFigures {
    /// Members in the store.
    pub members: u64,
    /// Usage events in the store.
    pub events: u64,
    /// Seconds to build and score the store (0 when an existing store was reused).
    pub build_s: f64,
    /// Concurrent connections.
    pub connections: usize,
    /// The server's `[http] audit_sync`.
    pub audit_sync: AuditSync,
    /// `GET /api/v1/lookup?phone=…&include=greeting` under the closed loop: as fast as
    /// the server answers (its throughput; latency there is mostly queueing).
    pub greeting: LoadFigures,
    /// The same requests at a fixed rate over the same connections (open loop, latency
    /// from each request's scheduled start); absent with `--rate 0`.
    pub greeting_at_rate: Option<RateFigures>,
    /// `GET /api/v1/engagement/summary?days=90`, sequential.
    pub summary: SequentialFigures,
}

/// Runs the whole benchmark.
pub async fn run(b: &LookupBench) -> Result<LookupFigures> {
    if b.members == 0 || b.connections == 0 || b.seconds == 0 {
        bail!("--members, --connections and --seconds must be at least 1");
    }
    let (dir, tmp) = match &b.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("rollcall-bench-lookup-")
                .tempdir()
                .context("Failed to create a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let (members, events, dir_for_build) = (b.members, b.events, dir.clone());
    let store =
        tokio::task::spawn_blocking(move || prepare_store(&dir_for_build, members, events, true))
            .await??;

    let serve_dir = dir.clone();
    let config = server_config(b.audit_sync);
    let (token, mut cloud) = tokio::task::spawn_blocking(move || -> Result<_> {
        let bin = cloud_binary()?;
        let token = create_token(&bin, &serve_dir)?;
        Ok((token, CloudProcess::start(&bin, &serve_dir, &config)?))
    })
    .await??;
    let outcome = measure(b, &cloud.http_url, &token).await;
    if let Err(e) = cloud.stop() {
        eprintln!("warning: stopping the cloud: {e:#}");
    }
    let (greeting, greeting_at_rate, summary) = outcome?;

    if let Some(t) = tmp.filter(|_| b.keep) {
        eprintln!("data kept in {}", t.keep().display());
    }
    Ok(LookupFigures {
        members: store.members,
        events: store.events,
        build_s: store.build_s,
        connections: b.connections,
        audit_sync: b.audit_sync,
        greeting,
        greeting_at_rate,
        summary,
    })
}

async fn measure(
    b: &LookupBench,
    http_url: &str,
    token: &str,
) -> Result<(LoadFigures, Option<RateFigures>, SequentialFigures)> {
    let phones = tokio::task::spawn_blocking({
        let n = b.members;
        move || (0..n).map(phone_for).collect::<Vec<_>>()
    })
    .await?;
    let urls: Vec<reqwest::Url> = phones
        .iter()
        .map(|p| lookup_url(http_url, p))
        .collect::<Result<_>>()?;
    // One request first, so a missing route or a bad token is a clear error, not a
    // run full of errors.
    let probe = reqwest::Client::new()
        .get(urls[0].clone())
        .bearer_auth(token)
        .send()
        .await
        .context("Failed to reach the cloud's lookup route")?;
    if probe.status() != reqwest::StatusCode::OK {
        let status = probe.status();
        let body = probe.text().await.unwrap_or_default();
        bail!("GET /api/v1/lookup answered {status}: {body}");
    }
    eprintln!(
        "load: {} connections, 2 s warm-up, {} s measured",
        b.connections, b.seconds
    );
    let urls = Arc::new(urls);
    let cpu = crate::hostcpu::CpuTimes::now();
    let mut greeting = closed_loop(
        urls.clone(),
        token,
        b.connections,
        Duration::from_secs(2),
        Duration::from_secs(b.seconds),
    )
    .await?;
    greeting.host_steal_pct = crate::hostcpu::steal_pct_until_now(cpu);
    let at_rate = if b.rate > 0.0 {
        eprintln!(
            "load: {} connections at {} requests/s, 2 s warm-up, {} s measured",
            b.connections, b.rate, b.seconds
        );
        let cpu = crate::hostcpu::CpuTimes::now();
        let mut load = open_loop(
            urls,
            token,
            b.connections,
            b.rate,
            Duration::from_secs(2),
            Duration::from_secs(b.seconds),
        )
        .await?;
        load.host_steal_pct = crate::hostcpu::steal_pct_until_now(cpu);
        Some(RateFigures { rate: b.rate, load })
    } else {
        None
    };
    let summary_url =
        reqwest::Url::parse(&format!("{http_url}/api/v1/engagement/summary?days=90"))?;
    let summary = sequential(&summary_url, token, 200).await?;
    Ok((greeting, at_rate, summary))
}

// ---------------------------------------------------------------------------------------
// Data

/// Fictional-exchange area codes: real US area codes, each with `555` and four digits.
const AREA_CODES: &[u16] = &[
    201, 202, 203, 205, 206, 207, 208, 209, 210, 212, 213, 214, 215, 216, 217, 218, 219, 224, 225,
    228, 229, 231, 234, 239, 240, 248, 251, 252, 253, 254, 256, 260, 262, 267, 269, 270, 276, 281,
    301, 302, 303, 304, 305, 307, 308, 309, 310, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321,
    323, 325, 330, 334, 336, 337, 339, 347, 352, 360, 361, 386, 401, 402, 404, 405, 406, 407, 408,
    409, 410, 412, 413, 414, 415, 417, 419, 423, 424, 425, 430, 432, 434, 435, 440, 443, 469, 478,
    479, 480, 484, 501, 502, 503, 504, 505, 507, 508, 509, 510, 512, 513, 515, 516, 517, 518, 520,
    530, 540, 541, 551, 559, 561, 562, 563, 567, 570, 571, 573, 574, 575, 580, 585, 586, 601, 602,
    603, 605, 606, 607, 608, 609, 610, 612, 614, 615, 616, 617, 618, 619, 620, 623, 626, 630, 631,
    636, 641, 646, 650, 651, 660, 661, 662, 678, 682, 701, 702, 703, 704, 706, 707, 708, 712, 713,
    714, 715, 716, 717, 718, 719, 720, 724, 727, 731, 732, 734, 740, 754, 757, 760, 763, 765, 770,
    772, 773, 774, 775, 781, 785, 786, 801, 802, 803, 804, 805, 806, 808, 810, 812, 813, 814, 815,
    816, 817, 818, 828, 830, 831, 832, 843, 845, 847, 848, 850, 856, 857, 858, 859, 860, 862, 863,
    864, 865, 870, 901, 903, 904, 906, 907, 908, 909, 910, 912, 913, 914, 915, 916, 917, 918, 919,
    920, 925, 928, 931, 936, 937, 940, 941, 947, 949, 951, 952, 954, 956, 970, 971, 972, 973, 978,
    979, 980, 985, 989,
];

/// Most members [`phone_for`] can give distinct numbers.
pub const MAX_MEMBERS: usize = 10_000 * AREA_CODES.len();

/// The E.164 phone number of member `i` (0-based): `+1`, an area code, `555` and four
/// digits; distinct for every `i < MAX_MEMBERS`.
pub fn phone_for(i: usize) -> String {
    let area = AREA_CODES[i % AREA_CODES.len()];
    // 7919 is coprime to 10_000, so this permutes the line numbers of an area code.
    let line = (i / AREA_CODES.len()) * 7919 % 10_000;
    format!("+1{area}555{line:04}")
}

/// The id of member `i` (0-based): `b000001`, …
pub fn member_id(i: usize) -> String {
    format!("b{:06}", i + 1)
}

const FIRST_NAMES: &[&str] = &[
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Ava",
    "Elijah",
    "Sophia",
    "James",
    "Isabella",
    "William",
    "Mia",
    "Benjamin",
    "Charlotte",
    "Lucas",
    "Harper",
    "Henry",
    "Evelyn",
    "Theodore",
    "Luna",
    "Jack",
    "Camila",
    "Levi",
    "Gianna",
    "Alexander",
    "Elizabeth",
    "Mateo",
    "Eleanor",
    "Daniel",
    "Ella",
    "Michael",
    "Abigail",
    "Mason",
    "Sofia",
    "Sebastian",
    "Avery",
    "Ethan",
    "Scarlett",
    "Logan",
    "Emily",
    "Owen",
    "Aria",
    "Samuel",
    "Penelope",
    "Jacob",
    "Chloe",
    "Asher",
    "Layla",
    "Aiden",
    "Mila",
    "John",
    "Nora",
    "Joseph",
    "Hazel",
    "Wyatt",
    "Madison",
    "David",
    "Ellie",
    "Leo",
    "Lily",
    "Luke",
    "Nova",
    "Julian",
    "Isla",
    "Hudson",
    "Grace",
    "Grayson",
    "Violet",
    "Matthew",
    "Aurora",
    "Ezra",
    "Riley",
    "Gabriel",
    "Zoey",
    "Carter",
    "Willow",
    "Isaac",
    "Emilia",
    "Jayden",
    "Stella",
    "Luca",
    "Zoe",
    "Anthony",
    "Victoria",
    "Dylan",
    "Hannah",
    "Lincoln",
    "Addison",
    "Thomas",
    "Leah",
    "Maverick",
    "Lucy",
    "Elias",
    "Eliana",
    "Josiah",
    "Ivy",
    "Charles",
    "Everly",
    "Caleb",
    "Lillian",
    "Christopher",
    "Paisley",
    "Ezekiel",
    "Elena",
    "Miles",
    "Naomi",
    "Jaxon",
    "Maya",
    "Isaiah",
    "Natalie",
    "Andrew",
    "Kinsley",
    "Joshua",
    "Delilah",
    "Nathan",
    "Claire",
    "Nolan",
    "Audrey",
    "Adrian",
    "Aaliyah",
    "Cameron",
    "Ruby",
    "Santiago",
    "Brooklyn",
    "Eli",
    "Alice",
    "Aaron",
    "Aubrey",
    "Ryan",
    "Autumn",
    "Angel",
    "Leilani",
    "Cooper",
    "Savannah",
    "Waylon",
    "Valentina",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
    "James",
    "Bennett",
    "Gray",
    "Mendoza",
    "Ruiz",
    "Hughes",
    "Price",
    "Alvarez",
    "Castillo",
    "Sanders",
    "Patel",
    "Myers",
    "Long",
    "Ross",
    "Foster",
    "Jimenez",
    "Powell",
    "Jenkins",
    "Perry",
    "Russell",
    "Sullivan",
    "Bell",
    "Coleman",
    "Butler",
    "Henderson",
    "Barnes",
    "Gonzales",
    "Fisher",
    "Vasquez",
    "Simmons",
    "Romero",
    "Jordan",
    "Patterson",
    "Alexander",
    "Hamilton",
    "Graham",
    "Reynolds",
    "Griffin",
    "Wallace",
    "Moreno",
    "West",
    "Cole",
    "Hayes",
    "Bryant",
    "Herrera",
    "Gibson",
    "Ellis",
    "Tran",
    "Medina",
    "Aguilar",
    "Stevens",
    "Murray",
    "Ford",
    "Castro",
    "Marshall",
    "Owens",
    "Harrison",
    "Fernandez",
];

const TIME_ZONES: &[&str] = &[
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Phoenix",
    "America/Anchorage",
    "Pacific/Honolulu",
    "Europe/London",
];

const PLANS: &[&str] = &["basic", "plus", "pro"];
const DRINKS: &[&str] = &[
    "espresso",
    "lungo",
    "latte",
    "cappuccino",
    "flat_white",
    "americano",
    "hot_water",
];

const DAY_MS: i64 = 86_400_000;
const HISTORY_DAYS: i64 = 120;
/// Events per transaction while building.
const EVENTS_PER_TX: usize = 250_000;

/// One generated member with everything that goes into the store.
#[derive(Debug, Clone, PartialEq)]
pub struct GenMember {
    /// `b000001`, …
    pub id: String,
    /// Given and family name.
    pub name: String,
    /// E.164.
    pub phone: String,
    /// Lower-case address at `example.com`.
    pub email: String,
    /// IANA zone.
    pub tz: &'static str,
    /// Plan name.
    pub plan: &'static str,
    /// Preferred language (greetings): mostly `en`, some `es` and `de`.
    pub lang: &'static str,
    /// When the member joined (Unix ms).
    pub joined_ms: i64,
    /// Usage instants (Unix ms), ascending.
    pub events_ms: Vec<i64>,
}

/// Generates member `i` with `n_events` events before `now_ms`; deterministic in `i`.
pub fn gen_member(i: usize, n_events: usize, now_ms: i64) -> GenMember {
    let mut rng = fastrand::Rng::with_seed(0x5EED_0000 ^ i as u64);
    let first = FIRST_NAMES[rng.usize(..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.usize(..LAST_NAMES.len())];
    // Most joined before the window; some during it; a few in the last weeks ("new").
    let joined_days_ago = match rng.u32(0..100) {
        0..=84 => rng.f64() * 780.0 + 120.0,
        85..=94 => rng.f64() * 100.0 + 20.0,
        _ => rng.f64() * 19.0 + 1.0,
    };
    let joined_ms = now_ms - (joined_days_ago * DAY_MS as f64) as i64;
    let window_start = joined_ms.max(now_ms - HISTORY_DAYS * DAY_MS);
    // Some members stopped using their machine a while ago.
    let window_end = if rng.u32(0..100) < 15 {
        (now_ms - rng.i64(10..70) * DAY_MS).max(window_start + DAY_MS)
    } else {
        now_ms - 3_600_000
    }
    .min(now_ms);
    // A rhythm: some weekdays, a preferred hour.
    let days_per_week = rng.u32(1..=7);
    let mut weekdays = [false; 7];
    let mut set = 0;
    while set < days_per_week {
        let d = rng.usize(..7);
        if !weekdays[d] {
            weekdays[d] = true;
            set += 1;
        }
    }
    let hour_ms = rng.i64(5..20) * 3_600_000;
    let first_day = window_start.div_euclid(DAY_MS);
    let last_day = (window_end - 1).div_euclid(DAY_MS);
    let mut days: Vec<i64> = (first_day..=last_day)
        .filter(|d| weekdays[((d + 3) % 7) as usize]) // day 0 (1970-01-01) was a Thursday
        .collect();
    if days.is_empty() {
        days = (first_day..=last_day).collect();
    }
    let mut events_ms: Vec<i64> = (0..n_events)
        .map(|_| {
            let day = days[rng.usize(..days.len())];
            let t = day * DAY_MS + hour_ms + rng.i64(-5_400_000..5_400_000);
            t.clamp(window_start, window_end - 1)
        })
        .collect();
    events_ms.sort_unstable();
    GenMember {
        id: member_id(i),
        name: format!("{first} {last}"),
        phone: phone_for(i),
        email: format!(
            "{}.{}.{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            i + 1
        ),
        tz: TIME_ZONES[rng.usize(..TIME_ZONES.len())],
        plan: PLANS[rng.usize(..PLANS.len())],
        lang: match rng.u32(0..100) {
            0..=79 => "en",
            80..=91 => "es",
            _ => "de",
        },
        joined_ms,
        events_ms,
    }
}

/// How many events each member gets: `total` split by random weights with mean 1
/// (between 0.2 and 1.8 times the average), summing exactly to `total`.
pub fn events_per_member(members: usize, total: usize) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    let weights: Vec<f64> = (0..members).map(|_| 0.2 + 1.6 * rng.f64()).collect();
    let sum: f64 = weights.iter().sum();
    let mut out = Vec::with_capacity(members);
    let mut cum = 0.0;
    let mut given = 0usize;
    for (i, w) in weights.iter().enumerate() {
        cum += w;
        let upto = if i + 1 == members {
            total
        } else {
            ((total as f64) * cum / sum).floor() as usize
        }
        .min(total)
        .max(given);
        out.push(upto - given);
        given = upto;
    }
    out
}

/// What [`prepare_store`] found or built.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreInfo {
    /// Members in the store.
    pub members: u64,
    /// Events in the store.
    pub events: u64,
    /// Seconds spent building and scoring (0 when reused).
    pub build_s: f64,
}

/// Reuses the store in `dir` if it holds `members` scored members; builds it when the
/// store is empty; refuses a store with other members (it is not ours to change).
pub fn prepare_store(
    dir: &Path,
    members: usize,
    events: usize,
    progress: bool,
) -> Result<StoreInfo> {
    if members > MAX_MEMBERS {
        bail!("--members may be at most {MAX_MEMBERS} (distinct phone numbers)");
    }
    let mut conn = rollcall_cloud::store::open_writer(dir)
        .with_context(|| format!("Failed to open the store in {}", dir.display()))?;
    let count = |conn: &Connection, sql: &str| -> Result<u64> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    let existing = count(&conn, "SELECT COUNT(*) FROM members")?;
    if existing > 0 {
        let scored = count(&conn, "SELECT COUNT(*) FROM member_scores")?;
        if existing != members as u64 || scored != existing {
            bail!(
                "{} already holds a store with {existing} members ({scored} scored); \
                 give --members {existing} to reuse it, or another --data-dir",
                dir.display()
            );
        }
        let events = count(&conn, "SELECT COUNT(*) FROM events")?;
        if progress {
            eprintln!(
                "reusing the store in {} ({existing} members, {events} events)",
                dir.display()
            );
        }
        return Ok(StoreInfo {
            members: existing,
            events,
            build_s: 0.0,
        });
    }
    let start = Instant::now();
    let now_ms = chrono::Utc::now().timestamp_millis();
    build_store(&mut conn, members, events, now_ms, progress)?;
    let now = chrono::Utc::now();
    if progress {
        eprintln!(
            "scoring {members} members ({:.1} s so far)",
            start.elapsed().as_secs_f64()
        );
    }
    let cfg = rollcall_cloud::config::CloudConfig::default().scoring;
    let run = rollcall_cloud::scoring::score_once(&mut conn, &cfg, now, now)
        .context("Failed to score the members")?;
    if progress {
        let counts: Vec<String> = run
            .counts
            .iter()
            .map(|(s, n)| format!("{} {n}", s.name()))
            .collect();
        eprintln!("scored: {}", counts.join(", "));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let build_s = start.elapsed().as_secs_f64();
    if progress {
        eprintln!("store ready in {build_s:.1} s");
    }
    Ok(StoreInfo {
        members: members as u64,
        events: events as u64,
        build_s,
    })
}

/// Inserts the generated members, devices and events into an empty store.
pub fn build_store(
    conn: &mut Connection,
    members: usize,
    events: usize,
    now_ms: i64,
    progress: bool,
) -> Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let per_member = events_per_member(members, events);
    let mut rng = fastrand::Rng::with_seed(0xB0B);
    let mut i = 0;
    let mut events_done = 0usize;
    let mut next_report = 0usize;
    while i < members {
        let tx = conn.transaction()?;
        {
            let mut ins_member = tx.prepare_cached(
                "INSERT INTO members (id, name, phone, email, tz, plan, joined_ms, created_ms, lang)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut ins_device = tx.prepare_cached(
                "INSERT INTO devices (id, member_id, public_key, registered_ms, last_seen_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut ins_event = tx.prepare_cached(
                "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms,
                                     received_ms, attrs, clock_suspect, fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9)",
            )?;
            let mut in_tx = 0usize;
            while i < members && in_tx < EVENTS_PER_TX {
                let m = gen_member(i, per_member[i], now_ms);
                ins_member.execute(params![
                    m.id,
                    m.name,
                    m.phone,
                    m.email,
                    m.tz,
                    m.plan,
                    m.joined_ms,
                    m.joined_ms,
                    m.lang
                ])?;
                let device = format!("dev-{}", m.id);
                let key: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(32).collect();
                let last_seen = m.events_ms.last().map(|t| t + 2_000);
                ins_device.execute(params![device, m.id, key, m.joined_ms, last_seen])?;
                for (seq, &t) in m.events_ms.iter().enumerate() {
                    let descale = rng.u32(0..100) < 2;
                    let (kind, attrs) = if descale {
                        ("descale", None)
                    } else {
                        let drink = DRINKS[rng.usize(..DRINKS.len())];
                        ("brew", Some(format!("{{\"drink\":\"{drink}\"}}")))
                    };
                    let qty = if !descale && rng.u32(0..10) == 0 {
                        2
                    } else {
                        1
                    };
                    ins_event.execute(params![
                        device,
                        seq as i64 + 1,
                        m.id,
                        kind,
                        qty,
                        t,
                        t + rng.i64(500..120_000),
                        attrs,
                        rng.i64(..),
                    ])?;
                }
                in_tx += m.events_ms.len();
                events_done += m.events_ms.len();
                i += 1;
            }
        }
        tx.commit()?;
        if progress && (i * 10 / members >= next_report || i == members) {
            eprintln!("built {i}/{members} members, {events_done}/{events} events");
            next_report = i * 10 / members + 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Server

/// The release `rollcall-cloud` binary: built (if out of date) by the cargo that runs us,
/// else the one next to our own executable. `ROLLCALL_CLOUD_BIN` overrides both.
pub fn cloud_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ROLLCALL_CLOUD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cmd = Command::new(cargo);
    // `cargo run` gives us its package's variables; build scripts (ring's) rerun when they
    // change, which would rebuild half the dependency tree. Build as from a shell.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str().filter(|k| {
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    *k,
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                )
        }) {
            cmd.env_remove(k);
        }
    }
    let built = cmd
        .args([
            "build",
            "--release",
            // With `rollcall` selected too the features of shared dependencies are unified
            // as in `cargo run --release`, so the two builds share their artifacts.
            "-p",
            "rollcall",
            "-p",
            "rollcall-cloud",
            "--bin",
            "rollcall-cloud",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output();
    if let Some(out) = built.ok().filter(|o| o.status.success()) {
        for line in out.stdout.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if v["target"]["name"] == "rollcall-cloud" {
                if let Some(exe) = v["executable"].as_str() {
                    return Ok(PathBuf::from(exe));
                }
            }
        }
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("rollcall-cloud");
    if sibling.exists() {
        eprintln!(
            "warning: could not build rollcall-cloud; using {}",
            sibling.display()
        );
        return Ok(sibling);
    }
    bail!("no release rollcall-cloud binary (cargo build --release -p rollcall-cloud)")
}

/// The bearer token in the output of `rollcall-cloud tokens create`: the last non-empty
/// line, its `token` field if it is JSON, else the line itself.
pub fn token_from_output(out: &str) -> Result<String> {
    let last = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .context("tokens create printed nothing")?;
    match serde_json::from_str::<serde_json::Value>(last) {
        Ok(v) => v["token"]
            .as_str()
            .map(str::to_owned)
            .context("tokens create printed JSON without a token"),
        Err(_) => Ok(last.to_owned()),
    }
}

/// Creates a `support` token named `bench` with the CLI.
fn create_token(bin: &Path, dir: &Path) -> Result<String> {
    let out = run_ok(
        Command::new(bin)
            .args(["tokens", "create", "--role", "support", "--name", "bench"])
            .arg("--data-dir")
            .arg(dir),
    )?;
    token_from_output(&out)
}

/// The cloud configuration for the benchmark: no background scoring, outreach or
/// delivery, so the API has the machine to itself.
pub const CLOUD_CONFIG: &str = "\
[scoring]
enabled = false

[outreach]
enabled = false

[delivery]
enabled = false
";

/// The configuration of the server under test: [`CLOUD_CONFIG`] with `audit_sync`.
pub fn server_config(audit_sync: AuditSync) -> String {
    format!(
        "{CLOUD_CONFIG}\n[http]\naudit_sync = \"{}\"\n",
        audit_sync.as_str()
    )
}

/// A `rollcall-cloud serve` child process.
pub struct CloudProcess {
    proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub http_url: String,
    _config_dir: tempfile::TempDir,
}

impl CloudProcess {
    /// Starts `bin serve` on `dir` with the configuration `config_toml` (the benchmark's
    /// is [`CLOUD_CONFIG`] plus the audit setting) and waits for its ready line.
    pub fn start(bin: &Path, dir: &Path, config_toml: &str) -> Result<Self> {
        let config_dir = tempfile::tempdir()?;
        let config = config_dir.path().join("cloud.toml");
        std::fs::write(&config, config_toml)?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
            ])
            .env("ROLLCALL_LOG", "warn,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("Failed to start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let proc = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut r = std::io::BufReader::new(stdout);
            let _ = tx.send(r.read_line(&mut line).map(|_| line.clone()));
            // Keep reading so the child never blocks on a full pipe.
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                line.clear();
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .context("the cloud printed no ready line within 60 s")??;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("the cloud's ready line {line:?}"))?;
        let http_url = v["http_url"]
            .as_str()
            .context("no http_url in the ready line")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            proc,
            http_url,
            _config_dir: config_dir,
        })
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit.
    pub fn stop(&mut self) -> Result<()> {
        let status = self.proc.terminate(Duration::from_secs(30))?;
        if !status.success() {
            bail!("the cloud exited with {status}");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Load

/// `{base}/api/v1/lookup?phone={phone}&include=greeting`, the phone URL-encoded.
pub fn lookup_url(base: &str, phone: &str) -> Result<reqwest::Url> {
    Ok(reqwest::Url::parse_with_params(
        &format!("{base}/api/v1/lookup"),
        &[("phone", phone), ("include", "greeting")],
    )?)
}

/// The `p`-th percentile (0 < p ≤ 100, nearest rank) of ascending latencies in µs, in ms;
/// 0 for no samples.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Sends one GET; true when it answered `200` and the whole body was read.
async fn get_ok(client: &reqwest::Client, url: &reqwest::Url, auth: &str) -> bool {
    match client
        .get(url.clone())
        .header(reqwest::header::AUTHORIZATION, auth)
        .send()
        .await
    {
        Ok(r) => {
            let ok = r.status() == reqwest::StatusCode::OK;
            r.bytes().await.is_ok() && ok
        }
        Err(_) => false,
    }
}

/// The closed loop: `connections` tasks, each with its own client (one keep-alive
/// connection), each sending GET to a random URL of `urls` as soon as the previous answer
/// is in. Requests started during `warmup` are not counted; those started in the next
/// `measure` are.
pub async fn closed_loop(
    urls: Arc<Vec<reqwest::Url>>,
    token: &str,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<LoadFigures> {
    let (auth, clients) = connect(&urls, token, connections)?;
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let urls = urls.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                let mut latencies_us: Vec<u32> = Vec::with_capacity(4096);
                let mut errors = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let url = &urls[rng.usize(..urls.len())];
                    let ok = get_ok(&client, url, &auth).await;
                    if t0 >= measure_from {
                        let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        latencies_us.push(us);
                        errors += u64::from(!ok);
                    }
                }
                (latencies_us, errors)
            })
        })
        .collect();
    figures(tasks, measure).await
}

/// The `Authorization` header and one keep-alive client per connection.
fn connect(
    urls: &[reqwest::Url],
    token: &str,
    connections: usize,
) -> Result<(Arc<str>, Vec<reqwest::Client>)> {
    if urls.is_empty() {
        bail!("no URLs to request");
    }
    let auth: Arc<str> = format!("Bearer {token}").into();
    let clients = (0..connections).map(|_| client()).collect::<Result<_>>()?;
    Ok((auth, clients))
}

/// Waits for the load tasks (each returns its latencies in µs and its error count) and
/// sums them into figures over `measure`.
async fn figures(
    tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>,
    measure: Duration,
) -> Result<LoadFigures> {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let requests = all.len() as u64;
    Ok(LoadFigures {
        requests,
        rps: requests as f64 / measure.as_secs_f64(),
        p50_ms: percentile_ms(&all, 50.0),
        p90_ms: percentile_ms(&all, 90.0),
        p99_ms: percentile_ms(&all, 99.0),
        max_ms: percentile_ms(&all, 100.0),
        errors,
        host_steal_pct: None,
    })
}

/// An open loop: `rate` requests per second in all over `connections` keep-alive
/// connections, each connection sending on its own fixed schedule (every
/// `connections / rate` seconds, the connections staggered evenly). A request whose turn
/// comes while the connection still waits for its previous answer goes out as soon as
/// that answer is in, and its latency counts from its scheduled start (as `wrk2` does),
/// so a slow server cannot hide its queueing by slowing the load down.
pub async fn open_loop(
    urls: Arc<Vec<reqwest::Url>>,
    token: &str,
    connections: usize,
    rate: f64,
    warmup: Duration,
    measure: Duration,
) -> Result<LoadFigures> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    let (auth, clients) = connect(&urls, token, connections)?;
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let begin = tokio::time::Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + measure;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let urls = urls.clone();
            let auth = auth.clone();
            let first = begin + interval.mul_f64(i as f64 / connections as f64);
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::new();
                let mut latencies_us: Vec<u32> = Vec::with_capacity(4096);
                let mut errors = 0u64;
                let mut due = first;
                while due < end {
                    tokio::time::sleep_until(due).await;
                    let url = &urls[rng.usize(..urls.len())];
                    let ok = get_ok(&client, url, &auth).await;
                    if due >= measure_from {
                        let us = due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        latencies_us.push(us);
                        errors += u64::from(!ok);
                    }
                    due += interval;
                }
                (latencies_us, errors)
            })
        })
        .collect();
    figures(tasks, measure).await
}

/// `n` sequential GETs of `url` on one connection; fails on any answer but `200`.
pub async fn sequential(url: &reqwest::Url, token: &str, n: usize) -> Result<SequentialFigures> {
    let client = client()?;
    let auth = format!("Bearer {token}");
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        if !get_ok(&client, url, &auth).await {
            bail!("GET {url} did not answer 200");
        }
        lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    lat.sort_unstable();
    Ok(SequentialFigures {
        requests: lat.len() as u64,
        p50_ms: percentile_ms(&lat, 50.0),
        p99_ms: percentile_ms(&lat, 99.0),
        max_ms: percentile_ms(&lat, 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_area_code_gives_valid_distinct_us_numbers() {
        for (k, area) in AREA_CODES.iter().enumerate() {
            let p = phone_for(k);
            assert!(p.starts_with(&format!("+1{area}555")), "{p}");
            let parsed = rollcall_cloud::domain::PhoneNumber::parse(&p, "US")
                .unwrap_or_else(|e| panic!("{p}: {e}"));
            assert_eq!(parsed.as_str(), p);
        }
        // A sample across the whole range stays valid and in E.164 form.
        for i in (0..MAX_MEMBERS).step_by(9_973) {
            let p = phone_for(i);
            let parsed = rollcall_cloud::domain::PhoneNumber::parse(&p, "US").unwrap();
            assert_eq!(parsed.as_str(), p);
        }
    }

    #[test]
    fn phones_are_distinct_for_the_default_fleet_and_more() {
        // Distinct up to MAX_MEMBERS by construction; checked for twice the default size.
        let n = 200_000;
        let mut all: Vec<u64> = (0..n).map(|i| phone_for(i)[1..].parse().unwrap()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), 50.0);
        assert_eq!(percentile_ms(&v, 90.0), 90.0);
        assert_eq!(percentile_ms(&v, 99.0), 99.0);
        assert_eq!(percentile_ms(&v, 100.0), 100.0);
        assert_eq!(percentile_ms(&[1500], 50.0), 1.5);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
        assert_eq!(percentile_ms(&[1000, 2000, 3000], 50.0), 2.0);
    }

    #[test]
    fn events_are_split_exactly() {
        for (m, e) in [(1, 0), (1, 7), (3, 10), (1000, 100_000), (7, 3)] {
            let v = events_per_member(m, e);
            assert_eq!(v.len(), m);
            assert_eq!(v.iter().sum::<usize>(), e);
        }
        let v = events_per_member(1000, 100_000);
        assert!(v.iter().all(|&n| (15..=185).contains(&n)), "{v:?}");
    }

    #[test]
    fn generated_members_are_valid_and_inside_their_window() {
        let now = chrono::Utc::now().timestamp_millis();
        for i in 0..200 {
            let m = gen_member(i, 50, now);
            assert_eq!(m, gen_member(i, 50, now), "deterministic");
            rollcall_shared::MemberId::parse(&m.id).unwrap();
            rollcall_shared::DeviceId::parse(&format!("dev-{}", m.id)).unwrap();
            rollcall_cloud::domain::Email::parse(&m.email).unwrap();
            rollcall_cloud::domain::TimeZone::parse(m.tz).unwrap();
            assert_eq!(m.events_ms.len(), 50);
            assert!(m.events_ms.windows(2).all(|w| w[0] <= w[1]));
            let from = m.joined_ms.max(now - HISTORY_DAYS * DAY_MS);
            assert!(m.events_ms.iter().all(|&t| t >= from && t < now), "{m:?}");
        }
    }

    #[test]
    fn the_token_is_read_from_json_or_a_bare_last_line() {
        let json = r#"{"id":1,"name":"bench","role":"support","token":"rc_abc"}"#;
        assert_eq!(token_from_output(json).unwrap(), "rc_abc");
        assert_eq!(
            token_from_output(&format!("Created token 1 (support)\n{json}\n")).unwrap(),
            "rc_abc"
        );
        assert_eq!(
            token_from_output(&format!("{json}\nrc_xyz\n")).unwrap(),
            "rc_xyz"
        );
        assert!(token_from_output("\n\n").is_err());
    }

    #[test]
    fn the_phone_is_url_encoded() {
        let u = lookup_url("http://127.0.0.1:9", "+12015550000").unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/api/v1/lookup?phone=%2B12015550000&include=greeting"
        );
    }

    #[test]
    fn the_bench_config_turns_background_work_off() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloud.toml");
        for (sync, want) in [
            (AuditSync::Full, rollcall_cloud::audit::Durability::Full),
            (AuditSync::Normal, rollcall_cloud::audit::Durability::Normal),
        ] {
            std::fs::write(&p, server_config(sync)).unwrap();
            let cfg = rollcall_cloud::config::CloudConfig::load(Some(&p)).unwrap();
            assert!(!cfg.scoring.enabled);
            assert!(!cfg.outreach.enabled);
            assert!(!cfg.delivery.enabled);
            assert_eq!(cfg.http.audit_sync, want);
        }
    }

    #[test]
    fn a_small_store_is_built_scored_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let built = prepare_store(dir.path(), 60, 3_000, false).unwrap();
        assert_eq!((built.members, built.events), (60, 3_000));
        let conn = rollcall_cloud::store::open_reader(dir.path()).unwrap();
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(n("SELECT COUNT(*) FROM devices"), 60);
        assert_eq!(n("SELECT COUNT(*) FROM events"), 3_000);
        assert_eq!(n("SELECT COUNT(*) FROM member_scores"), 60);
        assert_eq!(
            n("SELECT COUNT(*) FROM members WHERE phone = '+12015550000' AND id = 'b000001'"),
            1
        );
        drop(conn);
        let again = prepare_store(dir.path(), 60, 3_000, false).unwrap();
        assert_eq!(again.build_s, 0.0);
        assert_eq!(again.events, 3_000);
        assert!(prepare_store(dir.path(), 61, 3_000, false).is_err());
    }

    /// The load generator against the real API (in process), and the benchmark's lookup
    /// request answered as the benchmark expects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_closed_loop_measures_the_api_and_lookup_finds_members_by_phone() {
        let dir = tempfile::tempdir().unwrap();
        prepare_store(dir.path(), 20, 400, false).unwrap();
        let token = {
            let conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
            rollcall_cloud::tokens::create(
                &conn,
                "bench",
                rollcall_cloud::tokens::Role::Support,
                chrono::Utc::now(),
            )
            .unwrap()
            .token
        };
        let mut cfg = rollcall_cloud::config::CloudConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        cfg.broker.listen = "127.0.0.1:0".parse().unwrap();
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        cfg.scoring.enabled = false;
        cfg.outreach.enabled = false;
        cfg.delivery.enabled = false;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let cloud = rollcall_cloud::server::start(
            cfg,
            Arc::new(rollcall_shared::SystemClock),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let base = format!("http://{}", cloud.http_addr);
        let url =
            reqwest::Url::parse(&format!("{base}/api/v1/engagement/summary?days=90")).unwrap();
        let urls = Arc::new(vec![url.clone()]);
        let f = closed_loop(
            urls.clone(),
            &token,
            4,
            Duration::from_millis(200),
            Duration::from_millis(800),
        )
        .await
        .unwrap();
        assert!(f.requests > 0 && f.errors == 0, "{f:?}");
        assert!(f.p50_ms <= f.p90_ms && f.p90_ms <= f.p99_ms && f.p99_ms <= f.max_ms);
        let bad = closed_loop(
            urls,
            "rc_wrong",
            2,
            Duration::ZERO,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(bad.requests > 0 && bad.errors == bad.requests, "{bad:?}");
        // The open loop sends at the rate asked for: 4 connections at 40/s for 1 s is 40
        // requests (give or take the edges of the window), not as many as the server allows.
        let paced = open_loop(
            Arc::new(vec![url.clone()]),
            &token,
            4,
            40.0,
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(
            (36..=44).contains(&paced.requests) && paced.errors == 0,
            "{paced:?}"
        );
        assert!(paced.p50_ms <= paced.p99_ms && paced.p99_ms <= paced.max_ms);
        // The benchmark's request finds the member by the stored phone, with a greeting.
        let found: serde_json::Value = reqwest::Client::new()
            .get(lookup_url(&base, &phone_for(7)).unwrap())
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["members"][0]["id"], "b000008", "{found}");
        assert!(found["members"][0]["greeting"].is_object(), "{found}");
        let s = sequential(&url, &token, 20).await.unwrap();
        assert_eq!(s.requests, 20);
        assert!(sequential(&url, "rc_wrong", 1).await.is_err());
        shutdown.cancel();
        cloud.wait().await;
    }
}
