//! Corral's validator service (work in progress).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("corral-validator is not implemented yet")
}
