//! docs/runtime.md shows the minimal example service as it is compiled: every line of its code
//! block stands in `examples/minimal.rs`, in the same order.

#[test]
fn the_runtime_guide_shows_the_compiled_example() {
    let doc = include_str!("../../../../docs/runtime.md");
    let example = include_str!("../examples/minimal.rs");
    let block = doc
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_default();
    assert!(
        block.lines().count() > 30,
        "docs/runtime.md lost its example"
    );
    let mut lines = example.lines();
    for wanted in block.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            lines.any(|l| l == wanted),
            "docs/runtime.md shows a line examples/minimal.rs does not have (in this order): {wanted:?}"
        );
    }
}
