//! Benchmarks for BENCHMARKS.md: front-end cost of a 50-expression definition and the reference
//! evaluator's cost per event on a 1,000-event history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use corral_query::{
    check, evaluate_audience, evaluate_trait, parse, plan, Catalogue, CheckContext, DefinitionKind,
    Event, Profile, Subject, Target,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;

/// 25 event chains, each with a `property` chain in its `where`: exactly 50 expressions.
fn fifty_expression_definition() -> String {
    (0..25)
        .map(|i| {
            format!(
                "event('Event {i}').where(property('amount') > {i}).within({} days).count() >= 1",
                i + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn history(n: usize, now: DateTime<Utc>) -> Profile {
    let names = [
        "Session Started",
        "Feature Used",
        "Order Completed",
        "Product Viewed",
    ];
    let features = ["export", "report", "share", "search", "invite"];
    let events = (0..n)
        .map(|i| {
            Event::new(names[i % names.len()], now - Duration::hours(i as i64 * 3))
                .prop("feature_name", features[i % features.len()])
                .prop("revenue", (i % 97) as f64)
                .prop("product_id", format!("p{}", i % 50))
        })
        .collect();
    Profile {
        events,
        traits: json!({"plan": "trial", "created_at": "2025-01-01T00:00:00Z"})
            .as_object()
            .cloned()
            .unwrap(),
        ..Default::default()
    }
}

fn frontend(c: &mut Criterion) {
    let src = fifty_expression_definition();
    let cat = Catalogue::new();
    let ctx = CheckContext {
        target: Target::Audience,
        kind: DefinitionKind::Users,
        catalogue: &cat,
        key: None,
    };
    assert_eq!(check(&parse(&src).unwrap(), &ctx).unwrap().expressions, 50);
    let mut g = c.benchmark_group("frontend_50_expressions");
    g.bench_function("parse", |b| b.iter(|| parse(black_box(&src)).unwrap()));
    let q = parse(&src).unwrap();
    g.bench_function("check", |b| b.iter(|| check(black_box(&q), &ctx).unwrap()));
    g.bench_function("plan_including_check", |b| {
        b.iter(|| plan(black_box(&q), &ctx).unwrap())
    });
    g.bench_function("parse_check_plan", |b| {
        b.iter(|| {
            let q = parse(black_box(&src)).unwrap();
            plan(&q, &ctx).unwrap()
        })
    });
    g.finish();
}

fn evaluator(c: &mut Criterion) {
    let now: DateTime<Utc> = "2026-04-01T12:00:00Z".parse().unwrap();
    let profile = history(1000, now);
    let cat = Catalogue::new();
    let cases = [
        (
            "audience_mixed",
            Target::Audience,
            "event('Feature Used').where(property('feature_name') = 'export').within(30 days).count() >= 1 \
             AND event('Session Started').between(30 days, 90 days).count() >= 3 \
             AND trait('plan') = 'trial'",
        ),
        (
            "trait_sum_30d",
            Target::ComputedTrait,
            "event('Order Completed').within(30 days).sum(property('revenue'))",
        ),
        (
            "audience_funnel_parent_property",
            Target::Audience,
            "event('Product Viewed').within(30 days).where(NOT event('Order Completed')\
             .where(property('product_id') = property(parent: 'product_id'))\
             .within(parent: 7 days).count() >= 1).count() >= 1",
        ),
    ];
    let mut g = c.benchmark_group("evaluator_1000_events");
    g.throughput(Throughput::Elements(profile.events.len() as u64));
    for (name, target, src) in cases {
        let q = parse(src).unwrap();
        match target {
            Target::Audience => g.bench_function(name, |b| {
                b.iter(|| {
                    evaluate_audience(black_box(&q), Subject::User(&profile), now, &cat).unwrap()
                })
            }),
            Target::ComputedTrait => g.bench_function(name, |b| {
                b.iter(|| {
                    evaluate_trait(black_box(&q), Subject::User(&profile), now, &cat).unwrap()
                })
            }),
        };
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = frontend, evaluator
}
criterion_main!(benches);
