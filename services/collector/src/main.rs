//! Corral's collector service (work in progress).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("corral-collector is not implemented yet")
}
