//! The definition sets the benchmarks run with (in process and through the broker), so both
//! measure the same thing: the first `n` USERS definitions of `examples/definitions.yaml`, then
//! generated windowed, filtered and trait-dependent audiences with distinct leaves.

use crate::engine::DefinitionSpec;
use corral_query::check::{DefinitionKind, Target};

const EXAMPLES: &str = include_str!("../../../examples/definitions.yaml");

/// The event names the benchmark events are drawn from.
pub const EVENT_NAMES: [&str; 6] = [
    "Order Completed",
    "Product Viewed",
    "Session Started",
    "Feature Used",
    "Checkout Started",
    "Account Created",
];

/// `n` definitions: the USERS examples first, then generated audiences.
pub fn definitions(n: usize) -> Vec<DefinitionSpec> {
    let examples = corral_query::load_definitions_str(EXAMPLES, "examples")
        .map(|d| d.definitions)
        .unwrap_or_default();
    let mut out: Vec<DefinitionSpec> = examples
        .iter()
        .filter(|d| d.kind == DefinitionKind::Users)
        .take(n)
        .map(|d| DefinitionSpec {
            key: d.key.clone(),
            name: Some(d.name.clone()),
            target: d.target,
            kind: d.kind,
            version: 1,
            query: d.text.clone(),
            include_historical_data: false,
        })
        .collect();
    let mut i = 0;
    while out.len() < n {
        let query = match i % 4 {
            0 => format!("event('Order Completed').within({} days).count() >= {}", 1 + i % 60, 1 + i % 3),
            1 => format!("event('Product Viewed').where(property('price') > {}).count() >= 1", i * 3),
            2 => format!("event('Session Started').within({} days).count() > {}", 1 + i % 90, i % 5),
            _ => format!("event('Feature Used').where(property('feature_name') = 'f{}').count() >= 1 AND trait('plan') = 'trial'", i % 10),
        };
        out.push(DefinitionSpec {
            key: format!("gen_{i}"),
            name: None,
            target: Target::Audience,
            kind: DefinitionKind::Users,
            version: 1,
            query,
            include_historical_data: false,
        });
        i += 1;
    }
    out
}

/// The same set as a definitions file (the format `corralctl audiences apply` reads).
pub fn definitions_yaml(specs: &[DefinitionSpec]) -> String {
    let section = |target: Target| {
        specs
            .iter()
            .filter(|d| d.target == target)
            .map(|d| {
                // A JSON string is a valid YAML double-quoted scalar.
                let q = serde_json::to_string(&d.query).unwrap_or_default();
                format!("  - key: {}\n    query: {q}\n", d.key)
            })
            .collect::<String>()
    };
    format!(
        "audiences:\n{}computed_traits:\n{}",
        section(Target::Audience),
        section(Target::ComputedTrait)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_have_the_size_asked_and_round_trip_through_the_file_format() {
        for n in [10, 100] {
            let specs = definitions(n);
            assert_eq!(specs.len(), n);
            let file = corral_query::load_definitions_str(&definitions_yaml(&specs), "bench")
                .unwrap_or_else(|e| panic!("{e:?}"));
            let mut want: Vec<_> = specs.iter().map(|d| (d.key.clone(), d.target)).collect();
            let mut got: Vec<_> = file
                .definitions
                .iter()
                .map(|d| (d.key.clone(), d.target))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
    }
}
