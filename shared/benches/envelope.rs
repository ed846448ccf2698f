//! Micro-benchmarks of the signed envelope: signing and verifying a typical usage report
//! (15 events, about 2.6 KB) as a DSSE envelope with Ed25519, and parsing its JSON.
//! Run with `cargo bench -p rollcall-shared`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rollcall_shared::dsse::{Envelope, KeyPair, USAGE_PAYLOAD_TYPE};

fn report_body() -> Vec<u8> {
    let events: Vec<String> = (1..=15)
        .map(|i| {
            format!(
                r#"{{"seq":{i},"kind":"brew","qty":1,"occurred_at":"2026-11-24T07:{:02}:00Z","attrs":{{"drink":"latte","size":"large"}}}}"#,
                i
            )
        })
        .collect();
    format!(
        r#"{{"v":1,"device_id":"coffee-0001","report_seq":42,"sent_at":"2026-11-24T08:00:00Z","boot_id":"0123456789abcdef0123456789abcdef","events":[{}]}}"#,
        events.join(",")
    )
    .into_bytes()
}

fn envelopes(c: &mut Criterion) {
    let key = KeyPair::from_seed([7; 32]);
    let public = key.public();
    let body = report_body();
    let json = key.sign(USAGE_PAYLOAD_TYPE, &body).to_json();
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| {
        b.iter(|| key.sign(USAGE_PAYLOAD_TYPE, black_box(&body)))
    });
    g.bench_function("parse_and_verify", |b| {
        b.iter(|| {
            Envelope::from_json(black_box(&json))
                .expect("parses")
                .verify(USAGE_PAYLOAD_TYPE, &public)
                .expect("verifies")
        })
    });
    g.finish();
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
